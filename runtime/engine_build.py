"""The decisions of `edge-digr build`, as plain functions tested without TensorRT: the batch range, option
checks against the model, profile shapes, precision flags and the engine's sidecar manifest.

Engines are not portable across GPUs or TensorRT versions: the ONNX is what ships, the plan is built on the
Jetson by `edge_digr.runtime.trt_backend.build_engine`, which strings these together around the TensorRT
calls (TensorRT 8.5 on JetPack 5, 10.x on JetPack 6).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from edge_digr.core.errors import UserError
from edge_digr.core.manifest import Manifest

PRECISIONS = ("fp32", "fp16", "int8")
Shape = Tuple[int, ...]


@dataclass(frozen=True)
class BatchProfile:
    min: int
    opt: int
    max: int


def parse_batch(text: str) -> BatchProfile:
    """`--batch-range` as MIN,OPT,MAX (or one number N for N,N,N); 1 <= MIN <= OPT <= MAX."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or not all(re.fullmatch(r"\d+", p) for p in parts):
        raise UserError(f"--batch-range must be MIN,OPT,MAX (three positive integers) or one integer, got {text!r}")
    lo, opt, hi = (int(p) for p in parts)
    if not 1 <= lo <= opt <= hi:
        raise UserError(f"--batch-range needs 1 <= MIN <= OPT <= MAX, got {lo},{opt},{hi}")
    return BatchProfile(lo, opt, hi)


@dataclass(frozen=True)
class BuildOptions:
    onnx: Path
    out: Path
    precision: str = "fp32"
    batch: BatchProfile = BatchProfile(1, 1, 1)
    workspace_mb: int = 1024
    timing_cache: Optional[Path] = None
    calib_cache: Optional[Path] = None  # implicit INT8: TensorRT calibration cache (read, or written)
    calib_data: Optional[Path] = None  # implicit INT8: frames to calibrate on when there is no cache yet
    calib_batch: int = 8


def fixed_batch(spec: Mapping[str, Any]) -> Optional[int]:
    """The input's batch size if the model fixes it, None if it is dynamic (-1 or None in the manifest)."""
    lead = spec["shape"][0]
    return None if lead in (-1, None) else int(lead)


def check_options(opts: BuildOptions, manifest: Manifest) -> str:
    """Validate the options against the model; returns the INT8 mode: '' (no INT8), 'qdq' or 'calibrate'."""
    if opts.precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {opts.precision!r}")
    if opts.workspace_mb < 1:
        raise UserError(f"--workspace must be a positive number of MiB, got {opts.workspace_mb}")
    if opts.out.suffix.lower() not in (".plan", ".engine", ".trt"):
        raise UserError(f"--out {opts.out} should end in .plan (the runtime picks the runner by suffix)")
    qdq = manifest.precision == "int8"
    if qdq and opts.precision != "int8":
        raise UserError(f"{opts.onnx} is an INT8 QDQ model; build it with --precision int8 "
                        "(or build the fp32 ONNX for fp32/fp16)")
    if opts.precision != "int8":
        if opts.calib_cache or opts.calib_data:
            raise UserError("--calib-cache/--calib-data only apply to --precision int8")
        return ""
    if qdq:
        if opts.calib_cache or opts.calib_data:
            raise UserError(f"{opts.onnx} already carries its INT8 scales (QDQ); drop --calib-cache/--calib-data")
        return "qdq"
    if opts.calib_cache is None:
        raise UserError("--precision int8 of an fp32 ONNX needs --calib-cache FILE (read if it exists, else "
                        "written after calibrating on --calib-data FRAMES.npz); or build the QDQ model from "
                        "`edge-digr calibrate` instead")
    has_cache = opts.calib_cache.exists() and opts.calib_cache.stat().st_size > 0
    if not has_cache and opts.calib_data is None:
        raise UserError(f"{opts.calib_cache} does not exist yet: pass --calib-data FRAMES.npz to calibrate")
    if opts.calib_batch < 1:
        raise UserError(f"--calib-batch must be at least 1, got {opts.calib_batch}")
    for spec in manifest.inputs:  # calibration runs at a fixed batch of calib_batch
        lead = fixed_batch(spec)
        if lead is not None and lead != opts.calib_batch:
            raise UserError(f"input {spec['name']!r} has a fixed batch of {lead}; pass --calib-batch {lead} "
                            "or re-export with a dynamic batch")
    return "calibrate"


def profile_shapes(inputs: Sequence[Mapping[str, Any]], batch: BatchProfile) -> Dict[str, Tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shape of every input: the batch profile on the leading dimension, the rest static."""
    shapes = {}
    for spec in inputs:
        name, dims = spec["name"], list(spec["shape"])
        if any(d in (-1, None) for d in dims[1:]):
            raise UserError(f"input {name!r} has a dynamic non-batch dimension {dims}; only the batch may vary")
        lead = fixed_batch(spec)
        if lead is not None and not batch.min == batch.max == lead:
            raise UserError(f"input {name!r} has a fixed batch of {lead}; pass --batch-range {lead} "
                            "or re-export with a dynamic batch")
        rest = tuple(int(d) for d in dims[1:])
        shapes[name] = ((batch.min, *rest), (batch.opt, *rest), (batch.max, *rest))
    return shapes


def precision_flags(precision: str, fast_fp16: bool, fast_int8: bool) -> List[str]:
    """The BuilderFlag names to set, refusing a precision the platform has no fast support for."""
    if precision == "fp16" and not fast_fp16:
        raise UserError("this GPU reports no fast FP16 support; build with --precision fp32")
    if precision == "int8" and not fast_int8:
        raise UserError("this GPU reports no fast INT8 support; build with --precision fp16 or fp32")
    return {"fp32": [], "fp16": ["FP16"], "int8": ["INT8"]}[precision]


def sidecar_manifest(manifest: Manifest, opts: BuildOptions, int8_mode: str, trt_version: str,
                     device_name: str, compute_capability: Tuple[int, int], plan_sha256: str,
                     onnx_sha256: str) -> Manifest:
    """The ONNX manifest, re-targeted at the engine: what `<plan>.json` holds."""
    from dataclasses import replace

    extra = {**manifest.extra,
             "tensorrt": trt_version,
             "device": device_name,
             "compute_capability": f"{compute_capability[0]}.{compute_capability[1]}",
             "plan_sha256": plan_sha256,
             "batch": [opts.batch.min, opts.batch.opt, opts.batch.max],
             "workspace_mb": opts.workspace_mb}
    if int8_mode:
        extra["int8"] = int8_mode
    return replace(manifest, precision=opts.precision, source=opts.onnx.name, source_sha256=onnx_sha256,
                   extra=extra)
