"""The one TensorRT backend: version detection, the CUDA context, engine build and load, the INT8 entropy
calibrator and its cache, the runner, and the profiler's per-layer and copy timings.

`edge-digr build`, `selftest`, `profile` and `run` (and the implicit INT8 calibration that `build` runs for
TensorRT 8.5) reach TensorRT and pycuda only through this module: one place imports them (`_require`), one
version parser (`major_minor`), one CUDA context (`primary_context`).

Two API paths, picked by the installed TensorRT's major version:

- TensorRT 10.x (JetPack 6): named tensors — `engine.num_io_tensors`, `context.set_input_shape(name, shape)`,
  `context.set_tensor_address(name, ptr)`, `context.execute_async_v3(stream_handle)`; networks are always
  explicit batch.
- TensorRT 8.5 (JetPack 5.1): binding indices — `engine.num_bindings`, `context.set_binding_shape(i, shape)`,
  `context.execute_async_v2(bindings, stream_handle)`; networks need the EXPLICIT_BATCH flag. **Never
  executed**: written against the 8.5 Python API documentation and tested only with fakes; it stays labelled
  so until it has run on a JetPack 5.1 device.

Why this is not Polygraphy: docs/jetson.md, "One TensorRT backend".

Runner buffers: one pinned (page-locked) host array and one device allocation per graph tensor, reallocated
only when the batch size changes; copies and execution are queued on one stream and synchronised once per
call. With `cuda_graph=True` the enqueue is captured once into a CUDA graph and replayed (needs pycuda's
stream capture, pycuda >= 2024.1); buffer addresses stay fixed between replays, which is what makes it valid.

Build (`build_engine`): explicit batch, one optimisation profile over every input's leading dimension, the
workspace pool limit, a timing cache read before and written after, fp32 with TF32 off, fp16, or int8 —
explicit (the QDQ ONNX from `edge-digr calibrate`) or implicit with the entropy calibrator and its cache;
then the plan and `<plan>.json` written atomically. The decisions around it (option checks, profile shapes,
flags, sidecar) are plain functions in `engine_build`, tested without TensorRT.

The calibration cache is TensorRT's text format: a header line `TRT-<version>-<algorithm>` (e.g.
`TRT-8502-EntropyCalibration2`), then one `tensor: hex scale` line per tensor.

tensorrt and pycuda are imported when first needed, with an install hint if missing.
"""
from __future__ import annotations

import contextlib
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edge_digr.core.errors import UserError, missing_dependency
from edge_digr.core.fileio import PathLike, sha256_file, write_bytes
from edge_digr.core.frames import Frames
from edge_digr.core.manifest import Manifest, read_onnx_manifest, sidecar_path, write_sidecar
from edge_digr.runtime.engine_build import (BuildOptions, check_options, precision_flags, profile_shapes,
                                            sidecar_manifest)
from edge_digr.runtime.runners import Runner, _check_graph_matches, _first_line

REBUILD_HINT = "rebuild it on this device from the ONNX with `edge-digr build MODEL.onnx --out {plan}`"
ALGORITHM = "EntropyCalibration2"
_CACHE_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")


# ------------------------------------------------------------------------------ imports and versions
def _require(module: str, what: str) -> Any:
    """The module, or the one-line install hint (the `trt` extra, or JetPack's system packages)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing_dependency(module.split(".")[0], "trt", what) from exc


def tensorrt(what: str = "running a TensorRT engine") -> Any:
    return _require("tensorrt", what)


def cuda_driver(what: str = "running a TensorRT engine") -> Any:
    return _require("pycuda.driver", what)


def major_minor(version: str) -> Tuple[int, int]:
    """(major, minor) of a TensorRT version string such as '8.5.2.2' or '10.3.0'."""
    match = re.match(r"\s*(\d+)\.(\d+)", str(version))
    if not match:
        raise UserError(f"cannot read the TensorRT version {version!r}")
    return int(match.group(1)), int(match.group(2))


def named_tensors(version: str) -> bool:
    """Whether this TensorRT has the 10.x named-tensor API (else 8.x binding indices); before 8 is refused."""
    major = major_minor(version)[0]
    if major < 8:
        raise UserError(f"TensorRT {version} is too old: edge-digr needs TensorRT 8.5 or 10.x")
    return major >= 10


def network_flags(trt: Any) -> int:
    """Network creation flags: explicit batch on TensorRT 8.x; on 10.x networks are always explicit batch
    (the flag is deprecated there, so none is passed)."""
    if named_tensors(trt.__version__):
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def platform_support(builder: Any) -> Tuple[bool, bool]:
    """(fast fp16, fast int8). TensorRT 10.5 deprecates these queries; where they are gone, every GPU that
    TensorRT 10 supports (compute capability >= 7.5) has both."""
    return (bool(getattr(builder, "platform_has_fast_fp16", True)),
            bool(getattr(builder, "platform_has_fast_int8", True)))


@dataclass(frozen=True)
class CudaDevice:
    cuda: Any  # pycuda.driver
    name: str
    compute_capability: Tuple[int, int]


@contextlib.contextmanager
def primary_context(what: str = "running a TensorRT engine") -> Iterator[CudaDevice]:
    """GPU 0's primary CUDA context made current for the block: the context the CUDA runtime inside
    TensorRT uses too, so builder, calibrator and runner buffers all live in one context."""
    cuda = cuda_driver(what)
    cuda.init()
    device = cuda.Device(0)
    ctx = device.retain_primary_context()
    ctx.push()
    try:
        yield CudaDevice(cuda, device.name(), tuple(device.compute_capability()))
    finally:
        ctx.pop()


def _capturing_logger(trt: Any) -> Any:
    """A TensorRT logger that keeps error messages, so a failed deserialize can say why in one line."""

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: List[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(_first_line(RuntimeError(msg)))

    return CapturingLogger()


# ------------------------------------------------------------------------------- INT8 calibration cache
@dataclass(frozen=True)
class CacheHeader:
    version: int  # TensorRT's NV_TENSORRT_VERSION: 8502 for 8.5.2 (8.x), 100300 for 10.3.0 (10.x)
    algorithm: str

    @property
    def major_minor(self) -> Tuple[int, int]:
        # TensorRT 10 widened the encoding from major*1000 + minor*100 + patch to major*10000 + ...
        if self.version >= 100000:
            return self.version // 10000, self.version // 100 % 100
        return self.version // 1000, self.version // 100 % 10


def parse_cache_header(data: bytes) -> CacheHeader:
    """The header of a TensorRT calibration cache; UserError if the bytes are not one."""
    first = data.split(b"\n", 1)[0].decode("ascii", errors="replace").strip()
    match = _CACHE_HEADER.match(first)
    if not match:
        raise UserError(f"not a TensorRT calibration cache (first line {first[:60]!r}, expected "
                        f"'TRT-<version>-{ALGORITHM}'); delete it and calibrate again")
    return CacheHeader(int(match.group(1)), match.group(2))


def read_cache(path: PathLike, trt_version: Optional[str] = None) -> Optional[bytes]:
    """A calibration cache's bytes, or None if there is none yet (TensorRT then calibrates).

    A cache from another algorithm or another TensorRT major.minor is refused: TensorRT would ignore it
    silently and recalibrate, or worse, apply scales computed for a different build."""
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        return None
    data = p.read_bytes()
    header = parse_cache_header(data)
    if header.algorithm != ALGORITHM:
        raise UserError(f"{path} was made by {header.algorithm}, not {ALGORITHM}; delete it and calibrate again")
    if trt_version is not None and header.major_minor != major_minor(trt_version):
        raise UserError(f"{path} was written by TensorRT {header.version} and this is TensorRT {trt_version}; "
                        "delete it and calibrate again on this device")
    return data


def write_cache(path: PathLike, data: bytes) -> None:
    parse_cache_header(data)  # never store something the next build cannot read back
    write_bytes(path, data)


class CalibrationBatches:
    """Full batches of `batch_size` frames in graph-input order, as contiguous float32 arrays.

    TensorRT calibrates on the calibration profile's fixed shape, so an incomplete last batch is dropped."""

    def __init__(self, frames: Frames, input_names: Sequence[str], batch_size: int):
        if batch_size < 1:
            raise UserError(f"the calibration batch size must be at least 1, got {batch_size}")
        missing = [n for n in input_names if n not in frames.arrays]
        if missing:
            raise UserError(f"the calibration frames lack the input(s) {', '.join(missing)}")
        if len(frames) < batch_size:
            raise UserError(f"{len(frames)} calibration frame(s) cannot fill one batch of {batch_size}; "
                            "record more frames or lower the calibration batch size")
        self.frames = frames
        self.input_names = list(input_names)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.frames) // self.batch_size

    def nbytes(self, name: str) -> int:
        return int(self.frames.arrays[name][:self.batch_size].astype(np.float32).nbytes)

    def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            yield {n: np.ascontiguousarray(self.frames.arrays[n][sl], dtype=np.float32) for n in self.input_names}


def entropy_calibrator(cache_path: PathLike, batch_size: int, batches: Optional[CalibrationBatches]) -> Any:
    """A `tensorrt.IInt8EntropyCalibrator2` that feeds `batches` from device memory and caches its scales
    in `cache_path`; with `batches=None` it only replays an existing cache.

    TensorRT 10 deprecates calibrators in favour of explicit quantization (the QDQ ONNX from
    `edge-digr calibrate`) but still runs them. Needs a current CUDA context (`primary_context`)."""
    trt = tensorrt("TensorRT INT8 calibration")
    cuda = cuda_driver("TensorRT INT8 calibration") if batches is not None else None

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        """TensorRT calls these from C++ and only logs what they raise, so each one keeps the first
        exception in `error` for the builder to raise after `build_serialized_network`."""

        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # pybind11 trampolines need the explicit call
            self.error: Optional[BaseException] = None
            self._iter = iter(batches) if batches is not None else iter(())
            self._device = {n: cuda.mem_alloc(batches.nbytes(n)) for n in batches.input_names} if batches else {}

        def _guard(self, call, *args):
            try:
                return call(*args)
            except Exception as exc:  # noqa: BLE001 -- re-raised by the builder
                self.error = self.error or exc
                return None

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: List[str]) -> Optional[List[int]]:
            return self._guard(self._next_batch, names)

        def _next_batch(self, names: List[str]) -> Optional[List[int]]:
            batch = next(self._iter, None)
            if batch is None:
                return None  # tells TensorRT the calibration set is exhausted
            for name in names:
                cuda.memcpy_htod(self._device[name], batch[name])
            return [int(self._device[name]) for name in names]

        def read_calibration_cache(self) -> Optional[bytes]:
            return self._guard(read_cache, cache_path, trt.__version__)

        def write_calibration_cache(self, cache: Any) -> None:
            self._guard(lambda: write_cache(cache_path, bytes(cache)))

        def free(self) -> None:
            for buf in self._device.values():
                buf.free()
            self._device = {}

    return EntropyCalibrator()


# ------------------------------------------------------------------------------------------------ build
def _parser_errors(parser: Any) -> str:
    return "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no details"


def build_engine(opts: BuildOptions, log: Callable[[str], Any] = print) -> Manifest:
    """Build and write the plan and its sidecar on this device; returns the sidecar manifest."""
    manifest = read_onnx_manifest(opts.onnx)
    if manifest is None:
        raise UserError(f"{opts.onnx} has no edge-digr manifest; export it with `edge-digr export`")
    int8_mode = check_options(opts, manifest)
    shapes = profile_shapes(manifest.inputs, opts.batch)
    trt = tensorrt("building a TensorRT engine")
    logger = trt.Logger(trt.Logger.WARNING)
    with primary_context("building a TensorRT engine") as device:
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
        capability = device.compute_capability
        log(f"building {opts.precision} engine for {device.name} (compute {capability[0]}.{capability[1]}, "
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
    side = sidecar_manifest(manifest, opts, int8_mode, trt.__version__, device.name, capability,
                            sha256_file(opts.out), sha256_file(opts.onnx))
    write_sidecar(opts.out, side)
    return side


def _attach_calibrator(trt: Any, builder: Any, config: Any, opts: BuildOptions, manifest: Manifest, log) -> Any:
    from edge_digr.core.frames import load_frames

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


# ------------------------------------------------------------------------------------------------ runner
def check_plan_file(path: PathLike, manifest: Manifest) -> None:
    """Refuse a plan whose bytes are not the ones its sidecar describes (truncated, replaced, re-built)."""
    want = manifest.extra.get("plan_sha256")
    if want and sha256_file(path) != want:
        raise UserError(f"{path} does not match the sha256 in its manifest {sidecar_path(path)} (truncated or "
                        "replaced?); " + REBUILD_HINT.format(plan=path))


def check_build_target(manifest: Manifest, trt_version: str, device_name: str, plan: str) -> None:
    """Refuse, before deserializing, an engine the sidecar says was built elsewhere.

    TensorRT plans are tied to the TensorRT version (major.minor) and the GPU they were built on;
    `edge-digr build` records both in the sidecar's `extra` as `tensorrt` and `device`.
    """
    built_trt = str(manifest.extra.get("tensorrt") or "")
    if built_trt and major_minor(built_trt) != major_minor(trt_version):
        raise UserError(f"{plan} was built with TensorRT {built_trt} but this is TensorRT {trt_version}; "
                        + REBUILD_HINT.format(plan=plan))
    built_dev = str(manifest.extra.get("device") or "")
    if built_dev and device_name and built_dev != device_name:
        raise UserError(f"{plan} was built for the GPU {built_dev!r} but this is {device_name!r}; "
                        + REBUILD_HINT.format(plan=plan))


@dataclass
class _Tensor:
    name: str
    index: int  # binding index (TensorRT 8) or I/O tensor index (TensorRT 10)
    is_input: bool
    dtype: Any  # numpy dtype
    host: Optional[np.ndarray] = None  # pinned
    device: Any = None  # pycuda DeviceAllocation


class TensorRTRunner(Runner):
    """A serialized TensorRT engine (`.plan`) with its `<plan>.json` manifest."""

    def __init__(self, path: PathLike, manifest: Manifest, cuda_graph: bool = False):
        check_plan_file(path, manifest)
        super().__init__(path, manifest)
        self.cuda_graph = cuda_graph
        self.trt_version = ""
        self._cuda: Any = None
        self._device_context = contextlib.ExitStack()  # the CUDA context, current from activation to close
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None  # TensorRT's IExecutionContext
        self._stream: Any = None
        self._tensors: Dict[str, _Tensor] = {}
        self._batch: Optional[int] = None
        self._graph_exec: Any = None
        self._v10 = False

    # -- activation -----------------------------------------------------------------------------------
    def _activate(self) -> None:
        trt = tensorrt()
        self.trt_version = trt.__version__
        self._v10 = named_tensors(self.trt_version)
        try:
            device = self._device_context.enter_context(primary_context())
            self._cuda = device.cuda
            check_build_target(self.manifest, self.trt_version, device.name, str(self.path))
            self._load_engine(trt)
        except BaseException:
            self._close()
            raise

    def _load_engine(self, trt: Any) -> None:
        logger = _capturing_logger(trt)
        self._runtime = trt.Runtime(logger)
        try:
            self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        except Exception as exc:  # some bindings raise instead of returning None
            logger.errors.append(_first_line(exc))
            self._engine = None
        if self._engine is None:  # TensorRT logs why and returns None (version/GPU mismatch, corrupt file)
            why = logger.errors[-1] if logger.errors else "no reason given"
            raise UserError(f"TensorRT {self.trt_version} cannot deserialize {self.path} ({why[:200]}): it is "
                            "corrupt or was built by another TensorRT version or for another GPU; "
                            + REBUILD_HINT.format(plan=self.path))
        self._tensors = self._io_tensors_v10(trt) if self._v10 else self._io_tensors_v8(trt)
        _check_graph_matches(self.path, self.manifest,
                             {t.name: self._engine_shape(t) for t in self._tensors.values() if t.is_input},
                             {t.name: self._engine_shape(t) for t in self._tensors.values() if not t.is_input})
        self._context = self._engine.create_execution_context()
        self._stream = self._cuda.Stream()

    def _io_tensors_v8(self, trt: Any) -> Dict[str, _Tensor]:
        eng = self._engine
        return {eng.get_binding_name(i): _Tensor(eng.get_binding_name(i), i, eng.binding_is_input(i),
                                                 np.dtype(trt.nptype(eng.get_binding_dtype(i))))
                for i in range(eng.num_bindings)}

    def _io_tensors_v10(self, trt: Any) -> Dict[str, _Tensor]:
        eng = self._engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        return {n: _Tensor(n, i, eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT,
                           np.dtype(trt.nptype(eng.get_tensor_dtype(n))))
                for i, n in enumerate(names)}

    def _engine_shape(self, t: _Tensor) -> Tuple[int, ...]:
        dims = self._engine.get_tensor_shape(t.name) if self._v10 else self._engine.get_binding_shape(t.index)
        return tuple(dims)

    # -- buffers --------------------------------------------------------------------------------------
    def _prepare(self, arrays: Dict[str, np.ndarray]) -> None:
        """Set input shapes for this batch size and (re)allocate pinned host and device buffers."""
        cuda = self._cuda
        for name, arr in arrays.items():
            t = self._tensors[name]
            fixed = self._engine_shape(t)
            if any(f > 0 and f != s for f, s in zip(fixed, arr.shape)):
                raise UserError(f"input {name!r} has shape {arr.shape}; this engine was built for {fixed}: "
                                "rebuild it with `edge-digr build` for this batch size")
            ok = (self._context.set_input_shape(name, arr.shape) if self._v10
                  else self._context.set_binding_shape(t.index, arr.shape))
            if ok is False:
                raise UserError(f"input {name!r} of shape {arr.shape} is outside the engine's optimization "
                                "profile; rebuild it with `edge-digr build` for this batch size")
        for t in self._tensors.values():
            shape = tuple(self._context.get_tensor_shape(t.name) if self._v10
                          else self._context.get_binding_shape(t.index))
            t.host = cuda.pagelocked_empty(shape, t.dtype)
            t.device = cuda.mem_alloc(max(t.host.nbytes, 1))
            if self._v10:
                self._context.set_tensor_address(t.name, int(t.device))
        self._batch = next(iter(arrays.values())).shape[0]
        self._graph_exec = None
        if self.cuda_graph:
            self._capture_graph()

    def _bindings(self) -> List[int]:
        return [int(t.device) for t in sorted(self._tensors.values(), key=lambda t: t.index)]

    def _enqueue(self) -> None:
        handle = self._stream.handle
        ok = (self._context.execute_async_v3(stream_handle=handle) if self._v10
              else self._context.execute_async_v2(bindings=self._bindings(), stream_handle=handle))
        if not ok:
            raise RuntimeError(f"TensorRT failed to enqueue {self.path}")

    def _capture_graph(self) -> None:
        if not hasattr(self._stream, "begin_capture"):
            raise UserError("CUDA-graph replay needs pycuda with stream capture (pycuda >= 2024.1); "
                            "upgrade pycuda or run without --cuda-graph")
        # One plain enqueue first: TensorRT finishes shape-dependent setup outside the capture.
        self._enqueue()
        self._stream.synchronize()
        self._stream.begin_capture()
        try:
            self._enqueue()
        except Exception:
            self._stream.end_capture()  # leave capture mode, or every later call on the stream fails
            raise
        self._graph_exec = self._stream.end_capture().instantiate()  # pycuda: Graph.instantiate() -> GraphExec

    # -- inference ------------------------------------------------------------------------------------
    def _infer(self, arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        cuda = self._cuda
        if self._batch != next(iter(arrays.values())).shape[0]:
            self._prepare(arrays)
        for name, arr in arrays.items():
            t = self._tensors[name]
            np.copyto(t.host, arr.astype(t.dtype, copy=False))
            cuda.memcpy_htod_async(t.device, t.host, self._stream)
        if self._graph_exec is not None:
            self._graph_exec.launch(self._stream)
        else:
            self._enqueue()
        outputs = [self._tensors[n] for n in self.output_names]
        for t in outputs:
            cuda.memcpy_dtoh_async(t.host, t.device, self._stream)
        self._stream.synchronize()
        return {t.name: np.array(t.host, dtype=np.float32) for t in outputs}

    def _close(self) -> None:
        for t in self._tensors.values():
            if t.device is not None:
                t.device.free()
            t.host = t.device = None
        self._graph_exec = self._context = self._engine = self._runtime = self._stream = None
        self._batch = None
        self._device_context.close()  # pops the CUDA context, after its buffers are freed


# ------------------------------------------------------------------------------------- profiler hooks
def layer_times(runner: TensorRTRunner, feed: Mapping[str, np.ndarray], iterations: int) -> Dict[str, List[float]]:
    """Per-layer times (ms) over `iterations` calls, from TensorRT's IProfiler on the runner's context."""
    trt = tensorrt()

    class LayerTimes(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)
            self.ms: Dict[str, List[float]] = {}

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            self.ms.setdefault(layer_name, []).append(ms)

    profiler = LayerTimes()
    runner.activate()
    # The profiler must hang on the very execution context the runner enqueues on.
    runner._context.profiler = profiler
    for _ in range(iterations):
        runner.infer(feed)
    return profiler.ms


def copy_times(runner: TensorRTRunner, feed: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
               iterations: int) -> Tuple[List[float], List[float]]:
    """(host→device, device→host) times (ms) of pinned copies of the model's input and output tensors, timed
    with CUDA events in the runner's (active) CUDA context: exactly the bytes `infer` moves."""
    runner.activate()
    cuda = runner._cuda
    stream = cuda.Stream()

    def timed(copies: List[Callable[[], None]]) -> List[float]:
        times = []
        for _ in range(iterations):
            start, end = cuda.Event(), cuda.Event()
            start.record(stream)
            for copy in copies:
                copy()
            end.record(stream)
            end.synchronize()
            times.append(start.time_till(end))
        return times

    hosts = {k: cuda.pagelocked_empty(v.shape, np.float32) for k, v in {**feed, **outputs}.items()}
    devs = {k: cuda.mem_alloc(max(h.nbytes, 1)) for k, h in hosts.items()}
    h2d = timed([lambda k=k: cuda.memcpy_htod_async(devs[k], hosts[k], stream) for k in feed])
    d2h = timed([lambda k=k: cuda.memcpy_dtoh_async(hosts[k], devs[k], stream) for k in outputs])
    for d in devs.values():
        d.free()
    return h2d, d2h
