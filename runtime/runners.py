"""Runners: one small interface over ONNX Runtime and TensorRT for a fused logits+saliency graph.

Torch-free (this is what runs on the Jetson). Polygraphy-style usage::

    from edge_digr.runtime import open_runner

    with open_runner("student.onnx") as runner:          # or "student.plan" (TensorRT)
        out = runner.infer({"obs": frames})              # frames: float32 (N, C, H, W), raw 0-255
        out["logits"], out["saliency"]                   # or out["action"] for continuous tasks
        runner.last_ms, runner.timings_ms                # wall time of the last / every infer() call

The interface every runner keeps (selftest, profile and run rely on it):

- ``manifest``: the :class:`edge_digr.core.manifest.Manifest` read from the model (task, inputs, outputs,
  action names, precision), so a model file needs no other flag.
- ``input_names`` / ``output_names``: graph input and output names, in graph order.
- ``infer(feed) -> dict``: ``feed`` maps every input name to a *batched* array (batch first); values are
  cast to float32. Returns a dict ``output name -> np.ndarray`` (owned by the caller). Raises
  :class:`UserError` for a missing input or an array whose shape the graph cannot take.
- ``timings_ms`` (list of float, one per ``infer`` call, host wall time including copies) and
  ``last_ms``; ``reset_timings()`` clears them (e.g. after warm-up).
- Context manager: resources (sessions, CUDA buffers, streams) live between ``__enter__`` and
  ``__exit__``; ``infer`` outside the block activates the runner on first use, ``close()`` frees it.

`open_runner(path, **opts)` picks the runner from the file suffix: ``.onnx`` → :class:`OnnxRuntimeRunner`
(options: ``providers``, ``threads``, ``spin``, ``batch``), ``.plan``/``.engine``/``.trt`` → ``TensorRTRunner``
(options: ``cuda_graph``).

Bad model files are `UserError`s (one line, says what to do): a missing, empty, corrupt or truncated file
or one without a manifest when opened; a manifest that does not match the graph, or an engine from another
TensorRT version or GPU, when activated (the session or engine is only loaded then).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from edge_digr.core.errors import UserError
from edge_digr.core.fileio import PathLike
from edge_digr.core.manifest import Manifest, read_onnx_manifest, read_sidecar

ENGINE_SUFFIXES = (".plan", ".engine", ".trt")
# Execution providers tried in this order when present: TensorRT, then CUDA, then the CPU.
ORT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class Runner:
    """Base class: input checking, timing and activation; subclasses implement `_activate`/`_infer`/`_close`."""

    def __init__(self, path: PathLike, manifest: Manifest):
        self.path = Path(path)
        self.manifest = manifest
        self.input_names: List[str] = manifest.input_names
        self.output_names: List[str] = manifest.output_names
        self.timings_ms: List[float] = []
        self._active = False

    # -- interface ------------------------------------------------------------------------------------
    @property
    def last_ms(self) -> Optional[float]:
        return self.timings_ms[-1] if self.timings_ms else None

    def reset_timings(self) -> None:
        self.timings_ms.clear()

    def infer(self, feed: Mapping[str, Any]) -> Dict[str, np.ndarray]:
        arrays = self._check_feed(feed)
        if not self._active:
            self.activate()
        start = time.perf_counter()
        out = self._infer(arrays)
        self.timings_ms.append((time.perf_counter() - start) * 1e3)
        return out

    def activate(self) -> "Runner":
        if not self._active:
            self._activate()
            self._active = True
        return self

    def close(self) -> None:
        if self._active:
            self._close()
            self._active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, task={self.manifest.task!r})"

    # -- for subclasses -------------------------------------------------------------------------------
    def _activate(self) -> None:
        raise NotImplementedError

    def _infer(self, arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _check_feed(self, feed: Mapping[str, Any]) -> Dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise UserError(f"the model needs input(s) {', '.join(missing)}; got {', '.join(feed) or 'nothing'}")
        arrays: Dict[str, np.ndarray] = {}
        batch = None
        for spec in self.manifest.inputs:
            name, want = spec["name"], list(spec["shape"])
            arr = np.ascontiguousarray(feed[name], dtype=np.float32)
            if not _shape_fits(arr.shape, want):
                raise UserError(f"input {name!r} has shape {tuple(arr.shape)}, the model expects "
                                f"{_shape_text(want)} (batch first)")
            if batch is not None and arr.shape[0] != batch:
                raise UserError(f"inputs disagree on the batch size: {self.input_names[0]!r} has {batch}, "
                                f"{name!r} has {arr.shape[0]}")
            batch = arr.shape[0]
            arrays[name] = arr
        return arrays


def _shape_fits(shape: Sequence[int], want: Sequence[int]) -> bool:
    return len(shape) == len(want) and all(w in (-1, None) or s == w for s, w in zip(shape, want))


def _shape_text(shape: Sequence[Any]) -> str:
    return "(" + ", ".join("N" if d in (-1, None) or isinstance(d, str) else str(d) for d in shape) + ")"


def session_config(batch: int) -> Dict[str, str]:
    """ONNX Runtime session config entries for a graph run at `batch` frames per call (docs/RESULTS.md, issue 17).

    At batch 1 every Gemm/MatMul of a fused graph multiplies one row (the exporter writes the K backward
    products of a continuous head one row each), which MLAS's one-row kernels do straight from the weight
    initializer. Prepacking would give the forward Gemm and the backward MatMul a packed copy each of the
    same weight: twice the bytes, which do not stay in cache; the fused atari-breakout teacher graph took
    1.6-2.4x as long with them on a 2-core EPYC. From batch 2 on, MLAS repacks an unpacked weight on every
    call of a multi-row product, so prepacking stays on there.
    """
    return {"session.disable_prepacking": "1"} if batch == 1 else {}


def session_options(threads: Optional[int] = None, spin: bool = True, batch: int = 1) -> Any:
    """onnxruntime.SessionOptions as the runner uses them (the profiler's per-node pass and benchmarks too)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in session_config(batch).items():
        opts.add_session_config_entry(key, value)
    return opts


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime session; uses the TensorRT and CUDA execution providers when the install has them."""

    def __init__(self, path: PathLike, manifest: Optional[Manifest] = None,
                 providers: Optional[Sequence[str]] = None, threads: Optional[int] = None, spin: bool = True,
                 batch: int = 1):
        _require_file(path)
        manifest = manifest or read_onnx_manifest(path)
        if manifest is None:
            raise UserError(f"{path} has no edge-digr manifest in its metadata; export it with `edge-digr export`")
        super().__init__(path, manifest)
        self.requested_providers = list(providers) if providers else None
        self.threads = threads  # intra-op threads; None: ONNX Runtime's default pool
        # Idle intra-op workers busy-wait for the next call (lowest latency in a run loop); off where other
        # work shares the cores between calls, e.g. the profiler's interleaved torch baseline.
        self.spin = spin
        # The batch size the first session is tuned for (`session_config`); a call at a batch size whose options
        # differ opens a second session on first use, so a run loop (batch 1) never holds two.
        self.batch = batch
        self.providers: List[str] = []
        self._wanted: List[str] = []  # execution providers, settled on activation
        self._session: Any = None  # the session for `batch`
        self._sessions: Dict[tuple, Any] = {}  # session config items -> session

    def _activate(self) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        wanted = self.requested_providers or [p for p in ORT_PROVIDERS if p in available]
        unknown = [p for p in wanted if p not in available]
        if unknown:
            raise UserError(f"ONNX Runtime here has no {', '.join(unknown)}; available: {', '.join(available)}")
        self._wanted = wanted
        self._session = self._session_for(self.batch)
        self.providers = self._session.get_providers()
        _check_graph_matches(self.path, self.manifest,
                             {i.name: i.shape for i in self._session.get_inputs()},
                             {o.name: o.shape for o in self._session.get_outputs()})

    def _session_for(self, batch: int) -> Any:
        import onnxruntime as ort

        key = tuple(sorted(session_config(batch).items()))
        if key not in self._sessions:
            try:
                self._sessions[key] = ort.InferenceSession(
                    str(self.path), session_options(self.threads, self.spin, batch), providers=self._wanted)
            except Exception as exc:  # onnxruntime raises several types for unloadable models
                raise UserError(f"{self.path} cannot be loaded by ONNX Runtime ({_first_line(exc)}); "
                                "re-export it with `edge-digr export`") from None
        return self._sessions[key]

    def _infer(self, arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        session = self._session_for(len(next(iter(arrays.values()))))
        values = session.run(self.output_names, arrays)
        return dict(zip(self.output_names, values))

    def _close(self) -> None:
        self._session = None
        self._sessions.clear()


def _check_graph_matches(path: Path, manifest: Manifest, graph_inputs: Mapping[str, Sequence[Any]],
                         graph_outputs: Mapping[str, Sequence[Any]]) -> None:
    """Refuse a manifest that does not describe the graph (names, and the sizes of inputs and outputs: e.g. an
    action count that disagrees with the head's width): the runtime would feed or read the wrong tensors."""
    if set(graph_inputs) != set(manifest.input_names) or not set(manifest.output_names) <= set(graph_outputs):
        raise UserError(f"the manifest of {path} does not match its graph: manifest inputs "
                        f"{manifest.input_names} / outputs {manifest.output_names}, graph inputs "
                        f"{sorted(graph_inputs)} / outputs {list(graph_outputs)}; re-export the model")
    for kind, specs, shapes in (("input", manifest.inputs, graph_inputs), ("output", manifest.outputs, graph_outputs)):
        for spec in specs:
            graph = [d if isinstance(d, int) and d > 0 else -1 for d in shapes[spec["name"]]]
            want = list(spec["shape"])
            if len(graph) != len(want) or any(g != -1 and w != -1 and g != w for g, w in zip(graph, want)):
                raise UserError(f"the manifest of {path} gives {kind} {spec['name']!r} the shape "
                                f"{_shape_text(want)} but the graph's is {_shape_text(graph)}; re-export the model")


def _require_file(path: PathLike) -> None:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path} does not exist; check the path" if not p.exists() else f"{path} is not a file")
    if p.stat().st_size == 0:
        raise UserError(f"{path} is empty; re-export or rebuild it")


def _check_options(opts: Dict[str, Any], known: set, what: str) -> None:
    unknown = sorted(set(opts) - known)
    if unknown:
        raise UserError(f"option(s) {', '.join(unknown)} do not apply to {what}; it takes {', '.join(sorted(known))}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def open_runner(path: PathLike, **opts: Any) -> Runner:
    """The runner for a model file, chosen by suffix, with its manifest loaded (see the module docstring)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        _check_options(opts, {"providers", "threads", "spin", "batch"}, "an ONNX model (ONNX Runtime)")
        return OnnxRuntimeRunner(path, **opts)
    if suffix in ENGINE_SUFFIXES:
        from edge_digr.runtime.trt_backend import TensorRTRunner

        _check_options(opts, {"cuda_graph"}, "a TensorRT engine")
        _require_file(path)
        return TensorRTRunner(path, read_sidecar(path), **opts)
    raise UserError(f"{path}: unknown model type {suffix or '(no suffix)'!r}; pass a .onnx file or a TensorRT "
                    f"engine ({', '.join(ENGINE_SUFFIXES)})")
