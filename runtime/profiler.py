"""Latency of the fused logits+saliency pass, side by side with what it replaces, measured in one run.

Variants (each timed per call, after warm-up, with latency percentiles and throughput):

- ``fused``: the fused graph (logits|action + saliency), through the runtime's runner.
- ``forward``: the forward-only graph (head output only). For an ONNX model it is *derived from the fused
  graph itself* (`derive_forward_graph`: onnx's Extractor keeps only the nodes the head output depends
  on), so it has exactly the fused graph's forward weights and operators and needs no torch, which the
  Jetson does not have; `edge-digr bundle` ships that derived graph so the device can build an engine from
  it. For a TensorRT plan, pass the forward-only plan built from it.
- ``perturbation``: the Greydanus perturbation saliency the fused pass replaces
  (`edge_digr.core.perturbation.perturbation_saliency`), batched over masks through the forward-only graph,
  one frame per call.
- baselines passed in by the caller (`profile(..., baselines=...)`): the runtime never imports torch, so
  the PyTorch eager forward + autograd baseline (``torch_eager``) is built on the desktop side,
  by benchmarks/profile_torch.py.

Host↔device copies are timed separately where the backend has them (TensorRT: pinned-memory copies of
the model's input and output tensors, CUDA events); per-layer times come from ONNX Runtime's profiler
(SessionOptions.enable_profiling) or TensorRT's IProfiler, in a separate pass so they do not disturb the
latencies. On a Jetson, tegrastats is sampled throughout (`edge_digr.runtime.jetson`).

Torch-free; TensorRT is reached through `edge_digr.runtime.trt_backend`.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from edge_digr.core.errors import UserError, missing_dependency
from edge_digr.core.fileio import PathLike, atomic_path, sha256_file
from edge_digr.core.manifest import METADATA_KEY, Manifest, read_onnx_manifest
from edge_digr.core.perturbation import PerturbationConfig, perturbation_saliency

FORWARD_GRAPH = "forward-only"  # manifest.extra["graph"] of a derived forward-only graph
PERCENTILES = (50, 90, 99)


# ------------------------------------------------------------------------------------------ statistics
@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency percentiles (ms) and throughput; `frames` frames are processed per call."""

    calls: int
    frames: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    min_ms: float

    @property
    def per_frame_ms(self) -> float:
        return self.p50_ms / self.frames

    @property
    def throughput_fps(self) -> float:
        return 1e3 * self.frames / self.mean_ms

    @classmethod
    def of(cls, times_ms: Sequence[float], frames: int) -> "LatencyStats":
        t = np.asarray(times_ms, dtype=np.float64)
        if t.size == 0:
            raise ValueError("no timings to summarise")
        p50, p90, p99 = np.percentile(t, PERCENTILES)
        return cls(int(t.size), frames, float(t.mean()), float(p50), float(p90), float(p99), float(t.max()),
                   float(t.min()))

    def to_dict(self) -> Dict[str, float]:
        return {**asdict(self), "per_frame_ms": self.per_frame_ms, "throughput_fps": self.throughput_fps}


@dataclass
class Variant:
    """One thing to time: `fn` processes `frames` frames per call and is called `iterations` times."""

    name: str
    description: str
    fn: Callable[[], Any]
    frames: int
    iterations: int
    warmup: int
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class VariantResult:
    name: str
    description: str
    stats: LatencyStats
    samples_ms: List[float]
    windows: List[Tuple[float, float]]  # monotonic (start, end) of each timed block, for tegrastats
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"description": self.description, **self.stats.to_dict(), **self.extra,
                "samples_ms": [round(t, 5) for t in self.samples_ms]}


def measure(variants: Sequence[Variant], rounds: int = 1, progress: bool = True) -> Dict[str, VariantResult]:
    """Time every variant in one run, interleaved over `rounds` rounds.

    Each round runs a contiguous block of every variant's calls in turn, so slow drifts of the machine
    (a shared CPU, thermal throttling, clock changes) fall on all variants alike; with ``rounds=1`` each
    variant runs in one block (cleanest tegrastats windows). Warm-up calls are untimed.
    """
    from tqdm import tqdm

    for v in variants:
        for _ in range(v.warmup):
            v.fn()
    times: Dict[str, List[float]] = {v.name: [] for v in variants}
    windows: Dict[str, List[Tuple[float, float]]] = {v.name: [] for v in variants}
    with tqdm(total=sum(v.iterations for v in variants), desc="profile", unit="call", leave=False,
              disable=not progress) as bar:
        for r in range(rounds):
            for v in variants:
                calls = v.iterations * (r + 1) // rounds - v.iterations * r // rounds
                if calls == 0:
                    continue
                t0 = time.monotonic()
                for _ in range(calls):
                    start = time.perf_counter()
                    v.fn()
                    times[v.name].append((time.perf_counter() - start) * 1e3)
                windows[v.name].append((t0, time.monotonic()))
                bar.update(calls)
    return {v.name: VariantResult(v.name, v.description, LatencyStats.of(times[v.name], v.frames), times[v.name],
                                  windows[v.name], v.extra) for v in variants}


def ratios(variants: Mapping[str, VariantResult], statistic: str = "p50") -> Dict[str, float]:
    """The issue's performance ratios of per-frame `statistic` ("p50", "min", ...) from one run.

    Variants that were not measured are left out.
    """
    def per_frame(name: str) -> float:
        stats = variants[name].stats
        return getattr(stats, f"{statistic}_ms") / stats.frames

    fused = per_frame("fused")
    out: Dict[str, float] = {}
    if "torch_eager" in variants:
        out["torch_eager_over_fused"] = per_frame("torch_eager") / fused
    if "forward" in variants:
        out["fused_over_forward"] = fused / per_frame("forward")
    if "perturbation" in variants:
        out["perturbation_over_fused_per_frame"] = per_frame("perturbation") / fused
    return out


# ------------------------------------------------------------------------------------ forward-only graph
def head_output(manifest: Manifest) -> str:
    return "action" if manifest.continuous else "logits"


def derive_forward_graph(fused: PathLike, out: PathLike) -> Path:
    """Write the forward-only subgraph of a fused ONNX model (head output only), with its own manifest."""
    try:
        import onnx
        from onnx.utils import Extractor
    except ImportError as exc:
        raise missing_dependency("onnx", "profile", "deriving the forward-only graph") from exc
    manifest = read_onnx_manifest(fused)
    if manifest is None:
        raise UserError(f"{fused} has no edge-digr manifest; export it with `edge-digr export`")
    head = head_output(manifest)
    model = onnx.load(str(fused))
    sub = Extractor(model).extract_model(manifest.input_names, [head])
    forward = Manifest(**{**asdict(manifest), "outputs": [o for o in manifest.outputs if o["name"] == head],
                          "extra": {**manifest.extra, "graph": FORWARD_GRAPH,
                                    "derived_from_sha256": sha256_file(fused)}})
    del sub.metadata_props[:]
    sub.metadata_props.add(key=METADATA_KEY, value=forward.to_json())
    sub.doc_string = f"forward-only subgraph ({head}) of {Path(fused).name}"
    with atomic_path(out) as tmp:
        onnx.save(sub, str(tmp))
    return Path(out)


# --------------------------------------------------------------------------------------------- inputs
def random_feed(manifest: Manifest, batch: int, seed: int = 0) -> Dict[str, np.ndarray]:
    """Inputs of the manifest's shapes: pixels uniform in 0–255, other inputs uniform in 0–1.

    Latency of these dense graphs does not depend on the values, only on the shapes.
    """
    rng = np.random.default_rng(seed)
    feed = {}
    for i, spec in enumerate(manifest.inputs):
        shape = (batch, *spec["shape"][1:])
        scale = 255.0 if i == 0 else 1.0
        feed[spec["name"]] = (rng.random(shape, dtype=np.float32) * scale).astype(np.float32)
    return feed


# ------------------------------------------------------------------------------------- per-layer times
def ort_layer_times(model: PathLike, feed: Mapping[str, np.ndarray], iterations: int,
                    providers: Sequence[str] = ("CPUExecutionProvider",),
                    threads: Optional[int] = None) -> List[Dict[str, Any]]:
    """Median time per graph node from ONNX Runtime's profiler (a separate session, so timings stay clean).

    The session has the runner's options for the feed's batch size (`session_options`), so the nodes are
    the ones the timed variants ran. Medians, not means: the first runs (allocation, kernel selection) and
    preemptions would dominate a mean.
    """
    import onnxruntime as ort

    from edge_digr.runtime.runners import session_options

    opts = session_options(threads, spin=False, batch=len(next(iter(feed.values()))))
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = os.path.join(tmp, "ort_profile")
        session = ort.InferenceSession(str(model), opts, providers=list(providers))
        for _ in range(iterations):
            session.run(None, dict(feed))
        events = json.loads(Path(session.end_profiling()).read_text())
    return parse_ort_profile(events)


def parse_ort_profile(events: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Per-node median kernel time from ORT profile events (``cat == "Node"``, name ``<node>_kernel_time``)."""
    ops: Dict[str, str] = {}
    durations: Dict[str, List[float]] = {}
    for ev in events:
        name = str(ev.get("name", ""))
        if ev.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        node = name[: -len("_kernel_time")]
        ops[node] = ev.get("args", {}).get("op_name", "")
        durations.setdefault(node, []).append(float(ev.get("dur", 0)) / 1e3)
    return _layer_table([(node, ops[node], float(np.median(ms))) for node, ms in durations.items()])


def _layer_table(rows: Sequence[tuple]) -> List[Dict[str, Any]]:
    total = sum(ms for _, _, ms in rows) or 1.0
    return [{"layer": name, "op": op, "median_ms": ms, "share": ms / total}
            for name, op, ms in sorted(rows, key=lambda r: -r[2])]


def by_op(layers: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Per-layer rows summed by operator type (ONNX Runtime rows only: TensorRT layers carry no op)."""
    totals: Dict[str, float] = {}
    for row in layers:
        totals[row["op"]] = totals.get(row["op"], 0.0) + row["median_ms"]
    return _layer_table([("", op, ms) for op, ms in totals.items()])


def trt_layer_times(runner: Any, feed: Mapping[str, np.ndarray], iterations: int) -> List[Dict[str, Any]]:
    """Median time per engine layer from TensorRT's IProfiler."""
    from edge_digr.runtime.trt_backend import layer_times

    times = layer_times(runner, feed, iterations)
    return _layer_table([(name, "", float(np.median(ms))) for name, ms in times.items()])


# ------------------------------------------------------------------------------ host<->device copies
def trt_copy_times(runner: Any, feed: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
                   iterations: int) -> Dict[str, Any]:
    """Pinned host↔device copies of the model's input and output tensors, timed with CUDA events."""
    from edge_digr.runtime.trt_backend import copy_times

    h2d, d2h = copy_times(runner, feed, outputs, iterations)
    return {"h2d": LatencyStats.of(h2d, 1).to_dict(), "d2h": LatencyStats.of(d2h, 1).to_dict(),
            "h2d_bytes": int(sum(v.nbytes for v in feed.values())),
            "d2h_bytes": int(sum(v.nbytes for v in outputs.values()))}


# ---------------------------------------------------------------------------------------- the profile
@dataclass(frozen=True)
class ProfileConfig:
    batch: int = 1
    iterations: int = 200
    warmup: int = 20
    rounds: int = 10  # interleaving rounds (1: each variant in one block)
    perturbation_iterations: int = 5  # frames; each is (H/stride)·(W/stride) forward passes
    perturbation: PerturbationConfig = PerturbationConfig()
    threads: Optional[int] = None  # ONNX Runtime intra-op threads (default: its own)
    layer_iterations: int = 20  # 0 skips the per-layer pass
    tegrastats_interval_ms: int = 100
    power_rail: Optional[str] = None  # default: the input rail (VDD_IN / POM_5V_IN)
    seed: int = 0
    progress: bool = True


def perturbation_variant(forward_fn: Callable[[Dict[str, np.ndarray]], np.ndarray], feed: Mapping[str, np.ndarray],
                         config: PerturbationConfig, iterations: int, name: str = "perturbation") -> Variant:
    """The project's batched perturbation saliency of one frame, with `forward_fn` as the network."""
    frame = {k: np.ascontiguousarray(v[:1]) for k, v in feed.items()}
    return Variant(name,
                   f"Greydanus perturbation saliency (edge_digr.core.perturbation, stride {config.stride}, "
                   f"{config.batch_size} perturbed frames per forward call), one frame per call",
                   lambda: perturbation_saliency(forward_fn, frame, "obs", config), 1, iterations, 1)


def machine() -> Dict[str, Any]:
    import onnxruntime as ort

    # The load average says whether other processes shared the CPU while this was measured.
    return {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "onnxruntime": ort.__version__,
            "load_average_1_5_15min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _ort_options(path: Path, threads: Optional[int], batch: int) -> Dict[str, Any]:
    """Runner options for ONNX Runtime (TensorRT plans take none): the intra-op pool pinned if asked, no
    spinning workers, which would take the cores from the variants interleaved with them (measured: up to
    100x on single torch calls with 2 threads on 2 cores), and the session tuned for the profiled batch."""
    if path.suffix.lower() != ".onnx":
        return {}
    return {"spin": False, "batch": batch, **({"threads": threads} if threads else {})}


# A baseline the caller adds: given the manifest and the feed, the Variant to time, or why not (a string).
Baseline = Callable[[Manifest, Mapping[str, np.ndarray]], Union[Variant, str]]


def profile(engine: PathLike, cfg: ProfileConfig = ProfileConfig(), forward: Optional[PathLike] = None,
            baselines: Optional[Mapping[str, Baseline]] = None) -> Dict[str, Any]:
    """Profile a fused model (`.onnx` or a TensorRT plan) and its baselines; returns the JSON-able report.

    `baselines` maps a variant name to a callable the desktop side passes in (benchmarks/profile_torch.py
    adds ``torch_eager``); a callable that returns a string instead of a Variant is reported as skipped.
    """
    from edge_digr.runtime.jetson import TegrastatsSampler, device_state
    from edge_digr.runtime.runners import open_runner
    from edge_digr.runtime.tegrastats import summarize

    if cfg.batch < 1 or cfg.iterations < 1 or cfg.warmup < 0 or cfg.rounds < 1 or cfg.perturbation_iterations < 0:
        raise UserError("--batch, --iterations and --rounds must be at least 1, --warmup and "
                        "--perturbation-frames at least 0")
    engine = Path(engine)
    is_onnx = engine.suffix.lower() == ".onnx"
    skipped: Dict[str, str] = {}
    layers: Dict[str, List[Dict[str, Any]]] = {}
    copies: Dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        fused = stack.enter_context(open_runner(engine, **_ort_options(engine, cfg.threads, cfg.batch)))
        manifest = fused.manifest
        head = head_output(manifest)
        feed = random_feed(manifest, cfg.batch, cfg.seed)
        todo = [Variant("fused", f"fused graph: {head} + saliency", lambda: fused.infer(feed), cfg.batch,
                        cfg.iterations, cfg.warmup)]
        forward_origin = str(forward) if forward else None
        if forward is None and is_onnx:
            forward = derive_forward_graph(engine, Path(tmp) / f"{engine.stem}.forward.onnx")
            forward_origin = "derived from the fused graph (onnx.utils.Extractor, head output only)"
        if forward is None:
            skipped["forward"] = skipped["perturbation"] = (
                "a TensorRT plan has no forward-only subgraph: pass --forward with the plan built from the "
                "bundle's forward-only ONNX")
        else:
            fwd = stack.enter_context(open_runner(forward, **_ort_options(Path(forward), cfg.threads, cfg.batch)))
            todo.append(Variant("forward", f"forward-only graph: {head}", lambda: fwd.infer(feed), cfg.batch,
                                cfg.iterations, cfg.warmup))
            if cfg.perturbation_iterations:
                todo.append(perturbation_variant(lambda f: fwd.infer(f)[head], feed, cfg.perturbation,
                                                 cfg.perturbation_iterations))
        for name, make in (baselines or {}).items():
            variant = make(manifest, feed)
            if isinstance(variant, str):
                skipped[name] = variant
            else:
                todo.append(variant)
        tegra = stack.enter_context(TegrastatsSampler(cfg.tegrastats_interval_ms))
        variants = measure(todo, cfg.rounds, cfg.progress)
        tegra.stop()
        if not is_onnx:
            copies["fused"] = trt_copy_times(fused, feed, fused.infer(feed), cfg.iterations)
        if cfg.layer_iterations:
            if is_onnx:
                layers["fused"] = ort_layer_times(engine, feed, cfg.layer_iterations, fused.providers,
                                                  cfg.threads)
                if forward is not None and Path(forward).suffix.lower() == ".onnx":
                    layers["forward"] = ort_layer_times(forward, feed, cfg.layer_iterations, fwd.providers,
                                                        cfg.threads)
            else:
                layers["fused"] = trt_layer_times(fused, feed, cfg.layer_iterations)
    power: Dict[str, Any] = {"note": "tegrastats not found: not a Jetson, power not measured"}
    if tegra.available:
        power = {}
        for name, v in variants.items():
            samples = [s for t0, t1 in v.windows for s in tegra.between(t0, t1)]
            duration = sum(t1 - t0 for t0, t1 in v.windows)
            power[name] = summarize(samples, duration, v.stats.calls * v.stats.frames, cfg.power_rail).to_dict()
    providers = getattr(fused, "providers", None)
    return {
        "engine": str(engine), "engine_sha256": sha256_file(engine), "forward": forward_origin,
        "backend": "onnxruntime" if is_onnx else "tensorrt", "providers": providers,
        "task": manifest.task, "precision": manifest.precision,
        "batch": cfg.batch, "iterations": cfg.iterations, "warmup": cfg.warmup, "rounds": cfg.rounds,
        "perturbation": asdict(cfg.perturbation),
        "machine": machine(), "device": device_state(),
        "variants": {name: v.to_dict() for name, v in variants.items()},
        "ratios": ratios(variants),
        "ratios_min": ratios(variants, "min"),  # best case: robust to other processes sharing the CPU
        "skipped": skipped,
        "copies": copies if not is_onnx else {"note": (
            "CPU execution provider: the graph reads host memory, there are no host↔device copies"
            if providers == ["CPUExecutionProvider"] else
            "ONNX Runtime copies inside session.run; they are included in the latencies")},
        "layers": layers,
        "layer_ops": {name: [{k: r[k] for k in ("op", "median_ms", "share")} for r in by_op(rows)]
                      for name, rows in layers.items() if is_onnx},
        "power": power,
    }


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend; matplotlib is optional (not on a bare Jetson)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise missing_dependency("matplotlib", "profile", "--plot") from exc
    return plt


def check_plot_path(path: PathLike) -> None:
    """Refuse, before the profile runs, a --plot name whose format matplotlib cannot write (it would fail after)."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(path).suffix.lstrip(".").lower()
    if suffix and suffix not in formats:
        raise UserError(f"--plot {path}: matplotlib cannot write .{suffix} files; use one of "
                        f"{', '.join('.' + f for f in sorted(formats))}")


def plot_cdf(report: Mapping[str, Any], path: PathLike) -> None:
    """Latency CDF, one curve per variant (per-call latency, log scale: the variants span 1000×)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, v in report["variants"].items():
        t = np.sort(np.asarray(v["samples_ms"]))
        ax.step(t, np.arange(1, t.size + 1) / t.size, where="post",
                label=f"{name} (p50 {v['p50_ms']:.3g} ms, {v['frames']} frame/call)")
    ax.set_xscale("log")
    ax.set_xlabel("latency per call (ms)")
    ax.set_ylabel("fraction of calls")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{report['task']} · {report['backend']} · batch {report['batch']}")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    suffix = Path(path).suffix or ".png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=suffix.lstrip("."), dpi=120)
    plt.close(fig)
