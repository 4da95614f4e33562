"""`edge-digr check`: is this ONNX graph valid, parseable by TensorRT, and really the input gradient?

Three parts: onnx.checker + strict shape inference; every node against the TensorRT ONNX-parser table
of the target (`trt_support`); and, when the source checkpoint is at hand, a parity run of the graph in
ONNX Runtime against torch autograd on the checkpoint's policy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx

from edge_digr.core.errors import UserError
from edge_digr.export.trt_support import TARGETS, check_model
from edge_digr.core.fileio import PathLike, sha256_file
from edge_digr.core.manifest import METADATA_KEY, Manifest

PARITY_BATCH = 3  # not 1, so that a graph that only works at its export batch size is caught
PARITY_TOLERANCE = 1e-4  # max |onnx - torch| / max |torch|, per output, for fp32 graphs


@dataclass
class Parity:
    output: str
    max_abs: float
    max_rel: float  # max abs error over the reference's max magnitude (robust to zeros in the map)


@dataclass
class CheckReport:
    path: str
    target: str
    nodes: int = 0
    backward_nodes: int = 0
    violations: List[str] = field(default_factory=list)
    parity: List[Parity] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def lines(self) -> List[str]:
        out = [f"{self.path}: {self.nodes} nodes ({self.backward_nodes} on the gradient path), "
               f"target {TARGETS[self.target].title}"]
        out += [f"  parity {p.output}: max abs err {p.max_abs:.3g}, max rel err {p.max_rel:.3g}"
                for p in self.parity]
        out += [f"  note: {n}" for n in self.notes]
        out += [f"  violation: {v}" for v in self.violations]
        out.append("OK: no violations" if self.ok else f"FAILED: {len(self.violations)} violation(s)")
        return out


def _manifest(model: onnx.ModelProto, path: str) -> Optional[Manifest]:
    props = {p.key: p.value for p in model.metadata_props}
    return Manifest.from_json(props[METADATA_KEY], f"the manifest in {path}") if METADATA_KEY in props else None


def _validate(model: onnx.ModelProto, report: CheckReport) -> None:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        report.violations.append(f"onnx.checker: {str(exc).splitlines()[0][:300]}")
        return
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:  # InferenceError and friends
        report.violations.append(f"shape inference: {str(exc).splitlines()[0][:300]}")


def _contract(model: onnx.ModelProto, manifest: Manifest, report: CheckReport) -> None:
    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    outputs = [o.name for o in model.graph.output]
    if inputs != manifest.input_names:
        report.violations.append(f"graph inputs {inputs} differ from the manifest's {manifest.input_names}")
    if outputs != manifest.output_names:
        report.violations.append(f"graph outputs {outputs} differ from the manifest's {manifest.output_names}")
    if "saliency" not in outputs:
        report.notes.append("no `saliency` output: a forward-only graph")


def _find_source(path: Path, manifest: Optional[Manifest]) -> Tuple[Optional[Path], str, str]:
    """(checkpoint found next to the graph or None, its sha256 per the manifests, why none was found).

    A derived graph (e.g. the INT8 copy) names the ONNX it came from, whose manifest names the checkpoint.
    """
    for _ in range(4):
        if not (manifest and manifest.source):
            return None, "", "the manifest names no source checkpoint"
        source, sha = path.parent / manifest.source, manifest.source_sha256
        if source.suffix != ".onnx":
            if source.exists() and (not sha or sha256_file(source) == sha):
                return source, sha, ""
            return None, sha, f"source {manifest.source!r} not found next to the graph (or changed)"
        if not source.exists():
            return None, "", f"source graph {manifest.source!r} not found next to the graph"
        try:
            manifest, path = _manifest(onnx.load(str(source)), str(source)), source
        except Exception:  # protobuf DecodeError, bad manifest JSON, ...
            return None, "", f"source graph {manifest.source!r} is unreadable"
    return None, "", "the chain of source graphs is too long"


def _resolve_checkpoint(path: Path, manifest: Optional[Manifest], checkpoint: Optional[PathLike],
                        report: CheckReport) -> Optional[Path]:
    found, sha, why = _find_source(path, manifest)
    if checkpoint is None:
        if found is None:
            report.notes.append(f"{why}: no parity run; pass --policy")
        return found
    ckpt = Path(checkpoint)
    if not ckpt.exists():
        raise UserError(f"{ckpt} does not exist; pass the checkpoint the graph was exported from")
    if sha and sha256_file(ckpt) != sha:
        report.violations.append(f"{ckpt.name} is not the graph's source (its sha256 differs from the "
                                 "manifest's): parity would compare different weights")
        return None
    return ckpt


def _errors(name: str, got: np.ndarray, ref: np.ndarray) -> Parity:
    abs_err = float(np.abs(got - ref).max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return Parity(name, abs_err, abs_err / scale if scale > 0 else abs_err)


def parity(path: PathLike, ckpt: PathLike, batch: int = PARITY_BATCH, seed: int = 0,
           task: Optional[str] = None, data: Optional[PathLike] = None) -> List[Parity]:
    """Run the graph in ONNX Runtime and the checkpoint's policy under torch autograd on the same inputs.

    `ckpt` is an edge-digr `.pt` or an SB3 `.zip` (then `task` says which task it serves). The inputs are
    the first frames of `data` (a frames .npz or labels.npz), else random pixels. Random pixels drive some
    policies to a softmax of exactly 1 (the Breakout students), where the saliency of log π(a*) is float
    rounding and its relative error means nothing: real frames test the graph where it is used.
    """
    import onnxruntime as ort
    import torch

    from edge_digr.checkpoint import load_checkpoint, load_sb3_zip
    from edge_digr.export.fused import example_inputs_for
    from edge_digr.saliency import input_gradient, reduce_channels

    if str(ckpt).endswith(".zip"):
        if task is None:
            raise UserError(f"{ckpt} is an SB3 archive and the graph has no manifest naming its task")
        policy = load_sb3_zip(ckpt, task)
    else:
        policy, config = load_checkpoint(ckpt)
        task = config["task"]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # quantized graphs make ORT warn about unused initializers
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    fixed = session.get_inputs()[0].shape[0]
    n = fixed if isinstance(fixed, int) else batch
    names = [i.name for i in session.get_inputs()]
    if data is None:
        inputs = example_inputs_for(task, batch=n, seed=seed)
    else:
        from edge_digr.core.frames import load_frames, model_inputs

        frames = load_frames(data, model_inputs(path))
        if len(frames) < n:
            raise UserError(f"{data} holds fewer than the {n} frames the parity run takes")
        inputs = tuple(torch.from_numpy(frames.arrays[name][:n]) for name in names)
    if len(names) != len(inputs):
        raise UserError(f"{path} has inputs {names}, but task {task!r} has {len(inputs)}")
    got = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})))
    with torch.no_grad():
        head = policy(*inputs).numpy()
    grad = input_gradient(policy, inputs)
    reference: Dict[str, np.ndarray] = {"logits": head, "action": head,
                                        "saliency": reduce_channels(grad).numpy(), "input_grad": grad.numpy()}
    return [_errors(name, value, reference[name]) for name, value in got.items() if name in reference]


def check_onnx(path: PathLike, target: str = "trt8.5", checkpoint: Optional[PathLike] = None,
               tolerance: float = PARITY_TOLERANCE, data: Optional[PathLike] = None) -> CheckReport:
    from edge_digr.core.fused_graph import backward_nodes

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; export one with `edge-digr export`")
    if target not in TARGETS:
        raise UserError(f"unknown TensorRT target {target!r}; choose one of: {', '.join(TARGETS)}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise UserError(f"{path} is not a readable ONNX model ({type(exc).__name__}); "
                        "re-export it with `edge-digr export`") from None
    report = CheckReport(str(path), target, nodes=len(model.graph.node), backward_nodes=len(backward_nodes(model)))
    _validate(model, report)
    report.violations += [f"TensorRT: {v}" for v in check_model(model, target)]
    manifest = _manifest(model, str(path))
    if manifest is None:
        report.violations.append(f"no edge-digr manifest in metadata_props[{METADATA_KEY!r}]; "
                                 "re-export with `edge-digr export`")
    else:
        _contract(model, manifest, report)
    ckpt = _resolve_checkpoint(path, manifest, checkpoint, report)
    if ckpt is not None:
        report.parity = parity(path, ckpt, task=manifest.task if manifest else None, data=data)
        precision = manifest.precision if manifest else "fp32"
        if precision != "fp32":
            report.notes.append(f"precision {precision}: parity shown for information, tolerance applies to fp32")
        else:
            report.violations += [f"parity {p.output}: max rel err {p.max_rel:.3g} > {tolerance:g}"
                                  for p in report.parity if not p.max_rel <= tolerance]
    return report
