"""The manifest that travels with every exported graph: ONNX `metadata_props["edge_digr"]`, `<engine>.json`.

Torch-free (the runtime reads it on the Jetson). It says which task the graph serves, its inputs and
outputs, the action space, what the saliency differentiates, the precision, and where it came from.
"""
from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from edge_digr.core.errors import UserError
from edge_digr.core.fileio import PathLike, write_json

FORMAT = "edge-digr/manifest@1"
METADATA_KEY = "edge_digr"


@dataclass
class Manifest:
    task: str
    inputs: List[Dict[str, Any]]  # [{"name", "shape" (batch first, -1 if dynamic), "dtype"}]
    outputs: List[Dict[str, Any]]  # [{"name", "shape"}]
    action: Dict[str, Any]  # {"kind", "n", "names", "low", "high"}
    saliency_target: str  # "log_softmax_greedy" (discrete) | "action_mean" (continuous)
    precision: str = "fp32"
    source: str = ""  # file the graph was made from
    source_sha256: str = ""
    versions: Dict[str, str] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)  # e.g. tensorrt version, device, plan sha256
    format: str = FORMAT

    @property
    def input_names(self) -> List[str]:
        return [i["name"] for i in self.inputs]

    @property
    def output_names(self) -> List[str]:
        return [o["name"] for o in self.outputs]

    @property
    def continuous(self) -> bool:
        return self.action.get("kind") == "continuous"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Dict[str, Any], origin: str = "manifest") -> "Manifest":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError(f"{origin} is not an edge-digr manifest (format {FORMAT!r} expected); "
                            "re-export the model with `edge-digr export`")
        known = set(cls.__dataclass_fields__)
        missing = [k for k in ("task", "inputs", "outputs", "action", "saliency_target") if k not in data]
        if missing:
            raise UserError(f"{origin} lacks {', '.join(missing)}; re-export the model with `edge-digr export`")
        problem = schema_problem(data)
        if problem:
            raise UserError(f"{origin} is malformed: {problem}; re-export the model with `edge-digr export`")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text: str, origin: str = "manifest") -> "Manifest":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{origin} is not valid JSON ({exc.msg} at line {exc.lineno}); "
                            "re-export the model with `edge-digr export`") from None
        return cls.from_dict(data, origin)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tensor_problem(kind: str, specs: Any) -> Optional[str]:
    if not isinstance(specs, list) or not specs:
        return f"{kind} must be a non-empty list"
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            return f"{kind}[{i}] needs a non-empty string 'name'"
        shape = spec.get("shape")
        if not isinstance(shape, list) or len(shape) < 2 \
                or not all(_is_int(d) and (d > 0 or d == -1) for d in shape):
            return f"{kind}[{i}] ({spec['name']}) needs a 'shape': a list of sizes, batch first (-1 if dynamic)"
        if "dtype" in spec and not isinstance(spec["dtype"], str):
            return f"{kind}[{i}] ({spec['name']}) has a 'dtype' that is not a string"
    return None


def schema_problem(data: Dict[str, Any]) -> Optional[str]:
    """What is wrong with a manifest's fields (types, sizes, the action count against the head), or None.

    Checked once, on load, so that no later reader meets a string where a list belongs."""
    for key in ("task", "saliency_target", "precision", "source", "source_sha256", "format"):
        if key in data and not isinstance(data[key], str):
            return f"'{key}' must be a string"
    for key in ("versions", "extra"):
        if key in data and not isinstance(data[key], dict):
            return f"'{key}' must be an object"
    problem = _tensor_problem("inputs", data["inputs"]) or _tensor_problem("outputs", data["outputs"])
    if problem:
        return problem
    action = data["action"]
    if not isinstance(action, dict) or action.get("kind") not in ("discrete", "continuous"):
        return "'action' must be an object whose 'kind' is 'discrete' or 'continuous'"
    n = action.get("n")
    if not _is_int(n) or n < 1:
        return "'action' needs 'n', the number of actions (an integer >= 1)"
    names = action.get("names")
    if not isinstance(names, list) or len(names) != n or not all(isinstance(x, str) for x in names):
        return f"'action' needs 'names': {n} strings"
    if action["kind"] == "continuous":
        for key in ("low", "high"):
            bound = action.get(key)
            if not isinstance(bound, list) or len(bound) != n \
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in bound):
                return f"a continuous 'action' needs '{key}': {n} numbers"
    head = "action" if action["kind"] == "continuous" else "logits"
    heads = [o for o in data["outputs"] if o["name"] == head]
    if not heads:
        return f"a {action['kind']} model needs an output named {head!r}"
    width = heads[0]["shape"][-1]
    if width != -1 and width != n:
        return f"output {head!r} has {width} columns but 'action' counts {n} actions"
    return None


def for_task(task_name: str, batch: int = -1, **fields: Any) -> Manifest:
    """The manifest of a fused graph for a registered task (inputs and outputs follow the contract)."""
    from edge_digr.core.tasks import get_task

    task = get_task(task_name)
    h, w = task.obs_shape[1:]
    act = task.action
    head = "action" if act.continuous else "logits"
    sal_shape = [batch, act.n, h, w] if act.continuous else [batch, h, w]
    return Manifest(
        task=task.name,
        inputs=[{"name": i.name, "shape": [batch, *i.shape], "dtype": i.dtype} for i in task.inputs],
        outputs=[{"name": head, "shape": [batch, act.n]}, {"name": "saliency", "shape": sal_shape}],
        action={"kind": act.kind, "n": act.n, "names": list(act.names),
                "low": list(act.low) if act.low else None, "high": list(act.high) if act.high else None},
        saliency_target="action_mean" if act.continuous else "log_softmax_greedy",
        versions={"edge_digr": __import__("edge_digr").__version__, "python": platform.python_version()},
        **fields,
    )


def read_onnx_manifest(path: PathLike) -> Optional[Manifest]:
    """The manifest stored in an ONNX file's metadata_props, or None if it has none (uses onnxruntime only)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        meta = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).get_modelmeta()
    except Exception as exc:  # onnxruntime raises several exception types for unreadable models
        raise UserError(f"{path} is not a readable ONNX model ({str(exc).splitlines()[0][:200]}); "
                        "re-export it with `edge-digr export`") from None
    text = meta.custom_metadata_map.get(METADATA_KEY)
    return Manifest.from_json(text, f"the manifest in {path}") if text else None


def sidecar_path(engine: PathLike) -> Path:
    return Path(str(engine) + ".json")


def read_sidecar(engine: PathLike) -> Manifest:
    side = sidecar_path(engine)
    if not side.exists():
        raise UserError(f"{side} is missing: a TensorRT plan needs the manifest written next to it by "
                        "`edge-digr build`; rebuild the engine from the ONNX")
    return Manifest.from_json(side.read_text(), str(side))


def write_sidecar(engine: PathLike, manifest: Manifest) -> Path:
    side = sidecar_path(engine)
    write_json(side, asdict(manifest))
    return side
