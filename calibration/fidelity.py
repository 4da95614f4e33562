"""How far a reduced-precision graph (INT8 QDQ, a TensorRT engine) strays from the fp32 graph.

Measured on the same frames: action agreement (greedy action equal; for continuous tasks, every action
component within `action_atol`), saliency Pearson correlation and top-10 % IoU per map, and the largest
absolute error of the logits (or action means). Pure numpy: it also serves `edge-digr selftest`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional

import numpy as np

from edge_digr.core.frames import Frames
from edge_digr.core.errors import UserError
from edge_digr.core.metrics import pearson, top_iou

TOP_FRACTION = 0.10


@dataclass(frozen=True)
class Fidelity:
    frames: int
    action_agreement: float  # fraction of frames whose action matches the reference
    saliency_pearson: float  # mean over maps (frames x action components for continuous tasks)
    saliency_pearson_min: float
    top10_iou: float  # mean IoU of the top-10 % pixel sets
    max_logit_error: float  # max |candidate - reference| over the logits (or action means)
    max_saliency_error: float  # max |candidate - reference| over saliency, relative to the reference's max

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)


def compare_outputs(ref: Mapping[str, np.ndarray], cand: Mapping[str, np.ndarray], continuous: bool,
                    action_atol: float = 0.05) -> Fidelity:
    """Compare the outputs of two graphs on the same frames (dicts with `logits`|`action` and `saliency`)."""
    head = "action" if continuous else "logits"
    for name in (head, "saliency"):
        for side, out in (("reference", ref), ("candidate", cand)):
            if name not in out:
                raise UserError(f"the {side} model has no output {name!r} (outputs: {', '.join(out)})")
        if ref[name].shape != cand[name].shape:
            raise UserError(f"output {name!r} has shape {ref[name].shape} in the reference but "
                            f"{cand[name].shape} in the candidate")
    r_head, c_head = ref[head].astype(np.float64), cand[head].astype(np.float64)
    n = len(r_head)
    if n == 0:
        raise UserError("no frames to compare")
    if continuous:
        agree = np.abs(r_head - c_head).max(axis=1) <= action_atol
    else:
        agree = r_head.argmax(axis=1) == c_head.argmax(axis=1)
    # (N, H, W) -> (N, H*W); continuous (N, K, H, W) -> (N*K, H*W): one map per action component.
    r_sal = ref["saliency"].astype(np.float64).reshape(-1, int(np.prod(ref["saliency"].shape[-2:])))
    c_sal = cand["saliency"].astype(np.float64).reshape(r_sal.shape)
    r = pearson(r_sal, c_sal)
    scale = max(float(np.abs(r_sal).max()), 1e-30)
    return Fidelity(
        frames=int(n),
        action_agreement=float(agree.mean()),
        saliency_pearson=float(r.mean()),
        saliency_pearson_min=float(r.min()),
        top10_iou=float(top_iou(r_sal, c_sal, TOP_FRACTION).mean()),
        max_logit_error=float(np.abs(r_head - c_head).max()),
        max_saliency_error=float(np.abs(r_sal - c_sal).max() / scale),
    )


def collect_outputs(runner: Any, frames: Frames, batch_size: int = 64) -> Dict[str, np.ndarray]:
    """Run a runner (`edge_digr.runtime` interface) over all frames; outputs concatenated along the batch."""
    from tqdm import tqdm

    parts: Dict[str, list] = {}
    steps = math.ceil(len(frames) / batch_size)
    for batch in tqdm(frames.batches(batch_size), total=steps, desc=f"infer {runner.path.name}",
                      leave=False, disable=steps < 4):
        for name, value in runner.infer(batch).items():
            parts.setdefault(name, []).append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}


def batch1_latency_ms(runners: Mapping[str, Any], frames: Frames, iterations: int = 200,
                      warmup: int = 20) -> Dict[str, Dict[str, float]]:
    """Single-frame (live-feed) latency of each runner, timed by the profiler in one interleaved run so
    that machine drift falls on all models alike; name -> latency statistics (ms)."""
    from edge_digr.runtime.profiler import Variant, measure

    if iterations < 1:
        raise UserError(f"the number of latency runs must be at least 1, got {iterations}")
    feed = frames.take(slice(0, 1)).arrays
    variants = [Variant(name, str(runner.path), (lambda r=runner: r.infer(feed)), frames=1,
                        iterations=iterations, warmup=warmup) for name, runner in runners.items()]
    results = measure(variants, rounds=min(10, iterations))
    return {name: result.stats.to_dict() for name, result in results.items()}


def fidelity_table(rows: Mapping[str, Fidelity], thresholds: Optional[Mapping[str, float]] = None) -> str:
    """A short fixed-width table, one row per compared model; thresholds (if given) shown in the header."""
    cols = [("action_agreement", "agree", "{:.2%}"), ("saliency_pearson", "sal r", "{:.4f}"),
            ("saliency_pearson_min", "min r", "{:.4f}"), ("top10_iou", "top10 IoU", "{:.4f}"),
            ("max_logit_error", "max |dlogit|", "{:.3g}"), ("max_saliency_error", "max |dsal|/max", "{:.3g}")]
    thresholds = thresholds or {}
    heads = [h + (f" (>={thresholds[k]:g})" if k in thresholds else "") for k, h, _ in cols]
    width = max([len("model")] + [len(name) for name in rows])
    lines = ["  ".join([f"{'model':<{width}}", f"{'frames':>6}"] + [f"{h:>{max(len(h), 8)}}" for h in heads])]
    for name, fid in rows.items():
        values = [fmt.format(getattr(fid, key)) for key, _, fmt in cols]
        lines.append("  ".join([f"{name:<{width}}", f"{fid.frames:>6}"]
                               + [f"{v:>{max(len(h), 8)}}" for v, h in zip(values, heads)]))
    return "\n".join(lines)
