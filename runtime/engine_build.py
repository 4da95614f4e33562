"""Build a TensorRT engine (`.plan`) from the fused ONNX, on the device that will run it.

Engines are not portable across GPUs or TensorRT versions: the ONNX is what ships, the plan is built on the
Jetson. Written against the TensorRT Python API of 8.5 (JetPack 5) and 10.x (JetPack 6):

- network: explicit batch (`1 << NetworkDefinitionCreationFlag.EXPLICIT_BATCH` on 8.x; TensorRT 10 has
  only explicit batch and ignores the deprecated flag, so none is passed);
- one optimisation profile from `--batch MIN,OPT,MAX` over every input's leading dimension;
- `set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...)`, a timing cache read before and written after;
- precision: fp32 (TF32 off, so "fp32" means fp32), fp16, or int8 — explicit (the QDQ ONNX from
  `edge-digr calibrate`; TensorRT 10's way) or implicit with the entropy calibrator and its cache
  (TensorRT 8.5's way); FP16/INT8 only where the platform reports fast support;
- `build_serialized_network`, then the plan and `<plan>.json` (the ONNX manifest plus TensorRT version,
  device, compute capability, precision and the plan's sha256) written atomically.

The decisions (argument checking, version branching, profile shapes, flags, sidecar) are plain functions
tested without TensorRT; `build_engine` strings them together around the TensorRT calls.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from edge_digr.errors import UserError, missing_dependency
from edge_digr.fileio import sha256_file, write_bytes
from edge_digr.manifest import Manifest, read_onnx_manifest, write_sidecar

PRECISIONS = ("fp32", "fp16", "int8")
Shape = Tuple[int, ...]


@dataclass(frozen=True)
class BatchProfile:
    min: int
    opt: int
    max: int


def parse_batch(text: str) -> BatchProfile:
    """`--batch` as MIN,OPT,MAX (or one number N for N,N,N); 1 <= MIN <= OPT <= MAX."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or not all(re.fullmatch(r"\d+", p) for p in parts):
        raise UserError(f"--batch must be MIN,OPT,MAX (three positive integers) or one integer, got {text!r}")
    lo, opt, hi = (int(p) for p in parts)
    if not 1 <= lo <= opt <= hi:
        raise UserError(f"--batch needs 1 <= MIN <= OPT <= MAX, got {lo},{opt},{hi}")
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


def trt_major(version: str) -> int:
    match = re.match(r"(\d+)\.", version)
    if not match:
        raise UserError(f"cannot read the TensorRT version {version!r}")
    return int(match.group(1))


def network_flags(trt: Any) -> int:
    """Network creation flags: explicit batch on TensorRT 8.x; on 10.x networks are always explicit batch."""
    major = trt_major(trt.__version__)
    if major < 8:
        raise UserError(f"TensorRT {trt.__version__} is too old: edge-digr needs TensorRT 8.5 or 10.x")
    if major >= 10:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def profile_shapes(inputs: Sequence[Mapping[str, Any]], batch: BatchProfile) -> Dict[str, Tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shape of every input: the batch profile on the leading dimension, the rest static."""
    shapes = {}
    for spec in inputs:
        name, dims = spec["name"], list(spec["shape"])
        if any(d in (-1, None) for d in dims[1:]):
            raise UserError(f"input {name!r} has a dynamic non-batch dimension {dims}; only the batch may vary")
        lead = fixed_batch(spec)
        if lead is not None and not batch.min == batch.max == lead:
            raise UserError(f"input {name!r} has a fixed batch of {lead}; pass --batch {lead} "
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


def platform_support(builder: Any) -> Tuple[bool, bool]:
    """(fast fp16, fast int8). TensorRT 10.5 deprecates these queries; where they are gone, every GPU that
    TensorRT 10 supports (compute capability >= 7.5) has both."""
    return (bool(getattr(builder, "platform_has_fast_fp16", True)),
            bool(getattr(builder, "platform_has_fast_int8", True)))


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


# ----------------------------------------------------------------------------------- TensorRT calls
def _import_pycuda():
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise missing_dependency("pycuda", "trt", "building a TensorRT engine") from exc
    return cuda


@contextlib.contextmanager
def cuda_device() -> Iterator[Tuple[str, Tuple[int, int]]]:
    """The primary CUDA context of GPU 0 made current (the one TensorRT's runtime uses); yields
    (device name, compute capability)."""
    cuda = _import_pycuda()
    cuda.init()
    device = cuda.Device(0)
    ctx = device.retain_primary_context()
    ctx.push()
    try:
        yield device.name(), tuple(device.compute_capability())
    finally:
        ctx.pop()


def _parser_errors(parser: Any) -> str:
    return "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no details"


def build_engine(opts: BuildOptions, log=print) -> Manifest:
    """Build and write the plan and its sidecar; returns the sidecar manifest."""
    from edge_digr.calibration.trt_calibrator import import_tensorrt

    manifest = read_onnx_manifest(opts.onnx)
    if manifest is None:
        raise UserError(f"{opts.onnx} has no edge-digr manifest; export it with `edge-digr export`")
    int8_mode = check_options(opts, manifest)
    shapes = profile_shapes(manifest.inputs, opts.batch)
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    with cuda_device() as (device_name, capability):
        builder = trt.Builder(logger)
        flags = precision_flags(opts.precision, *platform_support(builder))
        network = builder.create_network(network_flags(trt))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(opts.onnx.read_bytes()):
            raise UserError(f"TensorRT {trt.__version__} cannot parse {opts.onnx}: {_parser_errors(parser)}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mb << 20)
        if opts.precision == "fp32":
            config.clear_flag(trt.BuilderFlag.TF32)  # TF32 is on by default; fp32 should mean fp32
        for flag in flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        calibrator = _attach_calibrator(trt, builder, config, opts, manifest, log) if int8_mode == "calibrate" \
            else None
        _load_timing_cache(config, opts.timing_cache, log)
        log(f"building {opts.precision} engine for {device_name} (compute {capability[0]}.{capability[1]}, "
            f"TensorRT {trt.__version__}, batch {opts.batch.min},{opts.batch.opt},{opts.batch.max}) ...")
        plan = builder.build_serialized_network(network, config)
        if calibrator is not None:
            # Free its device buffers while the context is current (the config keeps the object alive),
            # and surface what its callbacks raised: TensorRT only logs an exception there and goes on.
            calibrator.free()
            if calibrator.error is not None:
                raise UserError(f"INT8 calibration failed: {calibrator.error}") from calibrator.error
        if plan is None:
            raise UserError(f"TensorRT failed to build an engine from {opts.onnx} (see its log above); "
                            "try a larger --workspace or another --precision")
        write_bytes(opts.out, bytes(plan))
        if opts.timing_cache is not None:
            write_bytes(opts.timing_cache, bytes(config.get_timing_cache().serialize()))
    side = sidecar_manifest(manifest, opts, int8_mode, trt.__version__, device_name, capability,
                            sha256_file(opts.out), sha256_file(opts.onnx))
    write_sidecar(opts.out, side)
    return side


def _attach_calibrator(trt: Any, builder: Any, config: Any, opts: BuildOptions, manifest: Manifest, log) -> Any:
    from edge_digr.calibration.frames import load_frames
    from edge_digr.calibration.trt_calibrator import CalibrationBatches, entropy_calibrator, read_cache

    if read_cache(opts.calib_cache, trt.__version__) is not None:
        log(f"INT8 scales from the calibration cache {opts.calib_cache}")
        batches = None  # TensorRT reads the cache and asks for no batch
    else:
        frames = load_frames(opts.calib_data, manifest.inputs)
        log(f"calibrating INT8 on {len(frames)} frames from {opts.calib_data}; cache -> {opts.calib_cache}")
        batches = CalibrationBatches(frames, manifest.input_names, opts.calib_batch)
    calibrator = entropy_calibrator(opts.calib_cache, opts.calib_batch, batches)
    config.int8_calibrator = calibrator
    # Explicit-batch calibration runs at the calibration profile's shape: a fixed batch of calib_batch.
    calib = builder.create_optimization_profile()
    for spec in manifest.inputs:
        shape = (opts.calib_batch, *(int(d) for d in spec["shape"][1:]))
        calib.set_shape(spec["name"], shape, shape, shape)
    config.set_calibration_profile(calib)
    return calibrator


def _load_timing_cache(config: Any, path: Optional[Path], log) -> None:
    blob = path.read_bytes() if path is not None and path.exists() else b""
    cache = config.create_timing_cache(blob)
    if cache is None or not config.set_timing_cache(cache, False):
        # a cache from another GPU/TensorRT is refused rather than mixed in
        log(f"timing cache {path} does not match this GPU/TensorRT; starting a fresh one")
        config.set_timing_cache(config.create_timing_cache(b""), False)
