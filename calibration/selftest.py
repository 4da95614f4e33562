"""`edge-digr selftest`: the engine against ONNX Runtime on the same frames — the first check after a build.

Both models run on identical frames (recorded ones, or random ones of the manifest's shapes); their logits
(or action means) and saliency are compared with the calibration fidelity metrics, and each metric is
held to a tolerance that depends on the engine's precision. Torch-free.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from edge_digr.calibration.fidelity import Fidelity, collect_outputs, compare_outputs
from edge_digr.core.frames import Frames
from edge_digr.core.errors import UserError


@dataclass(frozen=True)
class Tolerance:
    action_agreement: float  # at least
    saliency_pearson: float  # mean Pearson r, at least
    top10_iou: float  # at least
    logit_error: float  # max |delta logit| relative to the reference's largest |logit|, at most


# fp32 engines are built with TF32 off, so they differ from ONNX Runtime by summation order only. fp16 keeps
# ~3 significant digits through the backward pass. INT8 is held to the calibration acceptance (>= 99 %
# agreement, r >= 0.95 on held-out frames) with some slack for TensorRT's own fusions and rounding.
TOLERANCES: Dict[str, Tolerance] = {
    "fp32": Tolerance(action_agreement=0.99, saliency_pearson=0.999, top10_iou=0.95, logit_error=1e-3),
    "fp16": Tolerance(action_agreement=0.98, saliency_pearson=0.98, top10_iou=0.85, logit_error=2e-2),
    "int8": Tolerance(action_agreement=0.97, saliency_pearson=0.90, top10_iou=0.60, logit_error=0.15),
}


@dataclass(frozen=True)
class Check:
    metric: str
    value: float
    limit: float
    at_least: bool

    @property
    def passed(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit


@dataclass
class SelftestResult:
    precision: str
    fidelity: Fidelity
    checks: List[Check]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> Dict[str, Any]:
        return {"precision": self.precision, "passed": self.passed, "fidelity": self.fidelity.to_dict(),
                "checks": [{**asdict(c), "passed": c.passed} for c in self.checks]}

    def lines(self) -> List[str]:
        out = []
        for c in self.checks:
            op = ">=" if c.at_least else "<="
            out.append(f"{'ok  ' if c.passed else 'FAIL'} {c.metric:<17} {c.value:.4g} (needs {op} {c.limit:g})")
        return out


def tolerance_for(precision: str) -> Tolerance:
    if precision not in TOLERANCES:
        raise UserError(f"no selftest tolerances for precision {precision!r}; known: {', '.join(TOLERANCES)}")
    return TOLERANCES[precision]


def judge(fidelity: Fidelity, logit_scale: float, precision: str) -> SelftestResult:
    """Hold the measured fidelity to the precision's tolerances."""
    tol = tolerance_for(precision)
    rel = fidelity.max_logit_error / max(logit_scale, 1e-6)
    checks = [Check("action agreement", fidelity.action_agreement, tol.action_agreement, True),
              Check("saliency pearson", fidelity.saliency_pearson, tol.saliency_pearson, True),
              Check("top-10% IoU", fidelity.top10_iou, tol.top10_iou, True),
              Check("logit error (rel)", rel, tol.logit_error, False)]
    return SelftestResult(precision, fidelity, checks)


def selftest(engine: Any, reference: Any, frames: Frames, precision: Optional[str] = None,
             batch_size: int = 1) -> SelftestResult:
    """Run `engine` and `reference` (runners, see `edge_digr.runtime.runners`) on `frames` and judge parity."""
    if engine.manifest.input_names != reference.manifest.input_names:
        raise UserError(f"the engine takes {engine.manifest.input_names} but the ONNX takes "
                        f"{reference.manifest.input_names}: they are not the same model")
    precision = precision or engine.manifest.precision
    ref = collect_outputs(reference, frames, batch_size)
    out = collect_outputs(engine, frames, batch_size)
    continuous = reference.manifest.continuous
    fidelity = compare_outputs(ref, out, continuous)
    head = "action" if continuous else "logits"
    return judge(fidelity, float(np.abs(ref[head]).max()), precision)


def engine_batch(manifest: Any) -> int:
    """The largest batch the engine's optimisation profile takes (1 for an ONNX or an unknown profile)."""
    batch = manifest.extra.get("batch")
    return int(batch[2]) if isinstance(batch, (list, tuple)) and len(batch) == 3 else 1


@dataclass
class SelftestRun:
    onnx: Path  # the reference graph
    frames: int
    result: SelftestResult


def selftest_files(engine_path: Path, onnx_path: Optional[Path] = None, data: Optional[Path] = None,
                   n_frames: int = 64, seed: int = 0) -> SelftestRun:
    """`edge-digr selftest`: the engine file against its reference ONNX on ONNX Runtime's CPU provider.

    The reference defaults to the ONNX the engine's manifest names, next to it; the frames are the first
    `n_frames` of `data`, or random frames of the model's shapes (fine for fp32/fp16; INT8 scales fit real
    frames only)."""
    from edge_digr.core.frames import load_frames
    from edge_digr.runtime.profiler import random_feed
    from edge_digr.runtime.runners import OnnxRuntimeRunner, open_runner

    engine = open_runner(engine_path)
    if onnx_path is None:
        if not engine.manifest.source.endswith(".onnx"):
            raise UserError(f"{engine_path}'s manifest does not name the ONNX it was built from; "
                            "pass --onnx MODEL.onnx")
        onnx_path = engine_path.parent / engine.manifest.source
    reference = OnnxRuntimeRunner(onnx_path, providers=["CPUExecutionProvider"])
    if data is not None:
        frames = load_frames(data, reference.manifest.inputs).take(slice(0, n_frames))
    else:
        frames = Frames(random_feed(reference.manifest, n_frames, seed))
    with engine, reference:
        result = selftest(engine, reference, frames, batch_size=engine_batch(engine.manifest))
    return SelftestRun(Path(onnx_path), len(frames), result)
