"""INT8 QDQ calibration of a fused graph with its fidelity report: quantize, compare with fp32 on held-out
frames, keep the backward (saliency) path in fp32 if asked or needed, and search the forward layers whose
quantization costs the saliency most. `edge-digr calibrate` parses its options into `CalibrateOptions`.

Torch-free (onnx, onnxruntime and numpy only).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from edge_digr.core.errors import UserError
from edge_digr.core.fileio import check_writable

KEEP_BACKWARD = ("auto", "always", "never")


@dataclass(frozen=True)
class CalibrateOptions:
    onnx: Path
    data: Path
    out: Path
    report: Path
    holdout: float = 0.2
    method: str = "minmax"
    per_channel: bool = True
    keep_backward: str = "auto"  # auto: quantize everything, keep the backward in fp32 if saliency r < threshold
    saliency_threshold: float = 0.95
    max_frames: Optional[int] = None
    batch_size: int = 16
    latency_runs: int = 200
    # "auto": if saliency r is still below threshold with the backward in fp32, leave the forward layers
    # whose quantization costs it most in fp32 too (greedy, at most max_fp32_layers); "none"; or names.
    fp32_layers: str = "auto"
    max_fp32_layers: int = 2


def calibrate_onnx(opts: CalibrateOptions, log: Callable[[str], Any] = print) -> Dict[str, Any]:
    """Quantize, measure fidelity on the held-out frames, keep the backward in fp32 if asked or needed,
    write the model and the JSON report; returns the report."""
    from edge_digr.calibration.fidelity import batch1_latency_ms, collect_outputs, compare_outputs, fidelity_table
    from edge_digr.core.frames import load_frames, model_inputs
    from edge_digr.calibration.quantize import (QuantizeConfig, check_fp32_layers, forward_weighted_nodes,
                                                load_model, quantize_qdq)
    from edge_digr.core.fileio import write_json
    from edge_digr.runtime.runners import OnnxRuntimeRunner

    if opts.keep_backward not in KEEP_BACKWARD:
        raise UserError(f"--keep-backward must be one of {', '.join(KEEP_BACKWARD)}, got {opts.keep_backward!r}")
    check_writable(opts.out, inputs=[opts.onnx, opts.data])
    check_writable(opts.report, inputs=[opts.onnx, opts.data], option="--json")
    auto_layers = opts.fp32_layers == "auto"
    named = () if auto_layers or opts.fp32_layers == "none" else \
        tuple(n.strip() for n in opts.fp32_layers.split(",") if n.strip())
    model = load_model(opts.onnx)
    check_fp32_layers(model, named, opts.onnx)
    frames = load_frames(opts.data, model_inputs(opts.onnx))
    if opts.max_frames is not None:
        if opts.max_frames < 2:
            raise UserError(f"--max-frames must be at least 2, got {opts.max_frames}")
        frames = frames.take(slice(0, opts.max_frames))
    calib, held = frames.split(opts.holdout)
    log(f"{len(calib)} calibration frames, {len(held)} held-out frames from {opts.data}")

    cpu = ["CPUExecutionProvider"]  # the report is about the model, not about whichever EP is installed
    fp32 = OnnxRuntimeRunner(opts.onnx, providers=cpu)
    continuous = fp32.manifest.continuous
    reference = collect_outputs(fp32, held, opts.batch_size)

    cfg = QuantizeConfig(per_channel=opts.per_channel, method=opts.method,
                         keep_backward=opts.keep_backward == "always", batch_size=opts.batch_size,
                         fp32_layers=named)
    attempts: List[Dict[str, Any]] = []
    rows = {}

    def attempt(cfg: QuantizeConfig):
        result = quantize_qdq(opts.onnx, calib, opts.out, cfg)
        for note in result.notes:
            log(f"note: {note}")
        fidelity = compare_outputs(reference, collect_outputs(OnnxRuntimeRunner(opts.out, providers=cpu), held,
                                                              opts.batch_size), continuous)
        attempts.append({"quantization": result.to_dict(), "fidelity": fidelity.to_dict()})
        return fidelity

    def label_of(cfg: QuantizeConfig) -> str:
        kept = (["backward"] if cfg.keep_backward else []) + list(cfg.fp32_layers)
        return f"int8 ({', '.join(kept)} fp32)" if kept else "int8"

    fidelity = rows[label_of(cfg)] = attempt(cfg)
    low = fidelity.saliency_pearson < opts.saliency_threshold
    if low and opts.keep_backward == "auto" and not cfg.keep_backward:
        log(f"saliency Pearson {fidelity.saliency_pearson:.4f} < {opts.saliency_threshold}: "
            "re-quantizing with the backward (gradient) path kept in fp32")
        cfg = replace(cfg, keep_backward=True)
        fidelity = rows[label_of(cfg)] = attempt(cfg)
    if auto_layers and cfg.keep_backward and fidelity.saliency_pearson < opts.saliency_threshold:
        cfg, fidelity = _keep_sensitive_layers(opts, forward_weighted_nodes(model), cfg, fidelity, attempt, log)
        rows[label_of(cfg)] = fidelity
        quantize_qdq(opts.onnx, calib, opts.out, cfg)  # the last trial written may not be the one chosen
    label = label_of(cfg)

    thresholds = {"saliency_pearson": opts.saliency_threshold}
    log(fidelity_table(rows, thresholds))
    latency = {}
    if opts.latency_runs > 0:
        latency = batch1_latency_ms({"fp32": fp32, "int8": OnnxRuntimeRunner(opts.out, providers=cpu)}, held,
                                    opts.latency_runs)
        ratio = latency["int8"]["p50_ms"] / latency["fp32"]["p50_ms"]
        latency["int8_over_fp32_p50"] = ratio
        log(f"CPU latency, batch 1, ONNX Runtime: fp32 p50 {latency['fp32']['p50_ms']:.3f} ms, "
            f"int8 QDQ p50 {latency['int8']['p50_ms']:.3f} ms ({ratio:.2f}x: int8 is "
            f"{'slower' if ratio > 1 else 'faster'} here)")
    final = rows[label]
    report = {
        "reference": str(opts.onnx), "model": str(opts.out), "data": str(opts.data),
        "calibration_frames": len(calib), "held_out_frames": len(held),
        "keep_backward": opts.keep_backward, "saliency_threshold": opts.saliency_threshold,
        "attempts": attempts, "final": {"label": label, **final.to_dict()}, "latency_ms": latency,
        "table": fidelity_table(rows, thresholds),
    }
    write_json(opts.report, report)
    if final.saliency_pearson < opts.saliency_threshold:
        hint = ("even with the backward in fp32: the INT8 forward moves it too far for this model; try "
                "--max-fp32-layers with a larger number" if cfg.keep_backward
                else "with the backward in INT8; try --keep-backward auto (or always)")
        log(f"warning: saliency Pearson {final.saliency_pearson:.4f} is below {opts.saliency_threshold} {hint}")
    log(f"wrote {opts.out} ({label}) and {opts.report}")
    return report


def _keep_sensitive_layers(opts: CalibrateOptions, candidates: List[str], cfg, fidelity, attempt, log):
    """Greedy sensitivity search: each round leaves in fp32 the forward layer whose quantization costs the
    saliency most (the best r when it alone is added), until r reaches the threshold or the budget is spent."""
    while fidelity.saliency_pearson < opts.saliency_threshold and len(cfg.fp32_layers) < opts.max_fp32_layers:
        trials = [replace(cfg, fp32_layers=cfg.fp32_layers + (name,)) for name in candidates
                  if name not in cfg.fp32_layers]
        if not trials:
            break
        log(f"saliency Pearson {fidelity.saliency_pearson:.4f} < {opts.saliency_threshold}: trying each of "
            f"{len(trials)} forward layers in fp32")
        scored = [(attempt(trial), trial) for trial in trials]
        best, best_cfg = max(scored, key=lambda pair: pair[0].saliency_pearson)
        if best.saliency_pearson <= fidelity.saliency_pearson:
            break  # no single layer helps: keep the model INT8 rather than give up precision for nothing
        log(f"keeping {best_cfg.fp32_layers[-1]} in fp32: saliency Pearson {best.saliency_pearson:.4f}")
        cfg, fidelity = best_cfg, best
    return cfg, fidelity
