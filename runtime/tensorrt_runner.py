"""TensorRT runner: deserialize a `.plan`, run it through pycuda buffers on one stream.

Two code paths, picked by the installed TensorRT's major version:

- TensorRT 8.x (JetPack 5, TensorRT 8.5): binding indices — `engine.num_bindings`,
  `context.set_binding_shape(i, shape)`, `context.execute_async_v2(bindings, stream_handle)`.
- TensorRT 10.x (JetPack 6): named tensors — `engine.num_io_tensors`, `context.set_input_shape(name, shape)`,
  `context.set_tensor_address(name, ptr)`, `context.execute_async_v3(stream_handle)`.

Buffers: one pinned (page-locked) host array and one device allocation per graph tensor, reallocated only
when the batch size changes; copies and execution are queued on one stream and synchronised once per call.
With `cuda_graph=True` the enqueue is captured once into a CUDA graph and replayed (needs pycuda's
stream capture, pycuda >= 2024.1); buffer addresses stay fixed between replays, which is what makes it valid.

tensorrt and pycuda are imported when the runner is activated, with an install hint if missing.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edge_digr.errors import UserError, missing_dependency
from edge_digr.fileio import PathLike, sha256_file
from edge_digr.manifest import Manifest, sidecar_path
from edge_digr.runtime.runners import Runner, _check_graph_matches, _first_line

REBUILD_HINT = "rebuild it on this device from the ONNX with `edge-digr build MODEL.onnx --out {plan}`"


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing_dependency(module.split(".")[0], "trt", "running a TensorRT engine") from exc


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
    if built_trt and built_trt.split(".")[:2] != trt_version.split(".")[:2]:
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
        self._ctx: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._tensors: Dict[str, _Tensor] = {}
        self._batch: Optional[int] = None
        self._graph_exec: Any = None
        self._v10 = False

    # -- activation -----------------------------------------------------------------------------------
    def _activate(self) -> None:
        trt = _import("tensorrt")
        cuda = _import("pycuda.driver")
        self._cuda = cuda
        self.trt_version = trt.__version__
        self._v10 = int(self.trt_version.split(".")[0]) >= 10
        cuda.init()
        device = cuda.Device(0)
        check_build_target(self.manifest, self.trt_version, device.name(), str(self.path))
        # The primary context is the one the CUDA runtime inside TensorRT uses too.
        self._ctx = device.retain_primary_context()
        self._ctx.push()
        try:
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
        if self._ctx is not None:
            self._ctx.pop()
            self._ctx = None


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
