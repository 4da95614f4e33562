"""The run loop: frames from a feed → runner → action (and saliency) → back to the feed, with a summary.

Per frame: a frame with NaN/Inf values is skipped (not inferred) and counted, a frame the source dropped
is counted and not inferred either; in both cases an interactive feed gets the previous action again
(hold the last command — for a vehicle, the safe default over a made-up one). Latency is the runner's
per-call time (host to host, copies included); a deadline miss is a call slower than `deadline_ms`.

Memory stays flat on long runs: latency percentiles come from a fixed-size reservoir (exact up to its
size), the mean return from a running sum, and the summary lists only the latest returns. SIGTERM (how
systemd stops a service) ends the run after the current step, like reaching a limit: the recording is
closed and kept, the summary printed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

import numpy as np

from edge_digr.core.errors import UserError
from edge_digr.core.manifest import Manifest
from edge_digr.core.tasks import ActionSpec
from edge_digr.runtime.feeds import Feed, Frame
from edge_digr.runtime.runners import Runner
from edge_digr.runtime.stats import Reservoir

RETURNS_KEPT = 100  # returns listed in the summary (the latest): a day-long run finishes thousands of episodes
RETURNS_SHOWN = 10  # of which the text summary prints

if TYPE_CHECKING:
    from edge_digr.runtime.serve import ServeOptions


@dataclass
class RunLimits:
    episodes: Optional[int] = None  # stop after this many finished episodes
    max_steps: Optional[int] = None  # stop after this many frames (inferred or skipped)
    deadline_ms: Optional[float] = None


@dataclass
class StepResult:
    step: int  # index of the inferred frame
    episode: int
    frame: Frame
    outputs: Dict[str, np.ndarray]  # unbatched runner outputs (logits|action, saliency)
    action: Any  # what was sent to the feed: int (discrete) or float32 array (continuous)
    latency_ms: float


@dataclass
class RunSummary:
    steps: int = 0  # frames inferred
    episodes: int = 0  # episodes finished
    returns: List[float] = field(default_factory=list)  # of the latest finished episodes, at most RETURNS_KEPT
    return_total: float = 0.0  # summed over every finished episode
    partial_return: Optional[float] = None  # of an episode cut by --max-steps
    latency_p50_ms: Optional[float] = None
    latency_p99_ms: Optional[float] = None
    deadline_ms: Optional[float] = None
    deadline_misses: int = 0
    nonfinite_frames: int = 0  # NaN/Inf frames skipped
    dropped_frames: int = 0  # frames the source lost
    reconnects: int = 0  # CARLA server reconnections
    stopped_by: Optional[str] = None  # the signal that ended the run early (SIGTERM)

    @property
    def mean_return(self) -> Optional[float]:
        return self.return_total / self.episodes if self.episodes else None

    def add_return(self, value: float) -> None:
        self.episodes += 1
        self.return_total += value
        self.returns = (self.returns + [value])[-RETURNS_KEPT:]

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "mean_return": self.mean_return}

    def text(self) -> str:
        def ms(v: Optional[float]) -> str:
            return "n/a" if v is None else f"{v:.2f} ms"

        ret = "n/a" if self.mean_return is None else f"{self.mean_return:.2f}"
        shown = self.returns[-RETURNS_SHOWN:]
        which = "returns" if len(shown) == self.episodes else f"last {len(shown)} returns"
        lines = [f"steps {self.steps}, episodes {self.episodes}, mean return {ret}"
                 + (f" ({which} {', '.join(f'{r:.2f}' for r in shown)})" if shown else "")
                 + (f", unfinished episode return {self.partial_return:.2f}" if self.partial_return is not None
                    else ""),
                 f"latency p50 {ms(self.latency_p50_ms)}, p99 {ms(self.latency_p99_ms)}"
                 + (f", deadline {self.deadline_ms:g} ms missed {self.deadline_misses}x"
                    if self.deadline_ms is not None else ""),
                 f"skipped NaN/Inf frames {self.nonfinite_frames}, dropped frames {self.dropped_frames}"
                 + (f", reconnects {self.reconnects}" if self.reconnects else "")]
        if self.stopped_by:
            lines.append(f"stopped by {self.stopped_by}")
        return "\n".join(lines)


def choose_action(outputs: Dict[str, np.ndarray], manifest: Manifest) -> Any:
    """Greedy discrete action (argmax of logits), or the action mean clipped to the task's bounds."""
    spec = ActionSpec.from_dict(manifest.action)
    head = np.asarray(outputs["action" if spec.continuous else "logits"]).reshape(-1, spec.n)
    chosen = spec.choose(head)[0]
    return chosen if spec.continuous else int(chosen)


def idle_action(manifest: Manifest) -> Any:
    """The action before any frame was inferred: 0 (discrete) or the zero vector clipped into bounds."""
    return choose_action({"action": np.zeros(manifest.action["n"], np.float32)}, manifest) \
        if manifest.continuous else 0


def run_loop(runner: Runner, feed: Feed, limits: RunLimits,
             on_step: Optional[Callable[[StepResult], Optional[bool]]] = None,
             on_frame: Optional[Callable[[], None]] = None) -> RunSummary:
    """Drive `feed` with `runner` until the feed ends or a limit is reached. `on_step` may return False to stop.

    `on_frame` is called once per frame taken from the feed (inferred or skipped), e.g. to advance a bar.
    """
    manifest = runner.manifest
    summary = RunSummary(deadline_ms=limits.deadline_ms)
    latencies = Reservoir()
    action = idle_action(manifest)
    frames_seen = 0
    episode_return = 0.0
    frame = feed.reset()
    while frame is not None:
        frames_seen += 1
        usable = not frame.dropped and all(np.isfinite(v).all() for v in frame.inputs.values())
        summary.dropped_frames += frame.dropped
        summary.nonfinite_frames += not frame.dropped and not usable
        summary.reconnects += bool(frame.info.get("reconnected"))
        if usable:
            outputs = runner.infer({k: v[None] for k, v in frame.inputs.items()})
            outputs = {k: v[0] for k, v in outputs.items()}
            action = choose_action(outputs, manifest)
            latencies.add(runner.last_ms)
            if limits.deadline_ms is not None and runner.last_ms > limits.deadline_ms:
                summary.deadline_misses += 1
            result = StepResult(summary.steps, summary.episodes, frame, outputs, action, runner.last_ms)
            summary.steps += 1
            if on_step is not None and on_step(result) is False:
                break
        if on_frame is not None:
            on_frame()
        if frame.done:
            summary.add_return(episode_return)
            episode_return = 0.0
            if limits.episodes is not None and summary.episodes >= limits.episodes:
                break
        if limits.max_steps is not None and frames_seen >= limits.max_steps:
            break
        if frame.done:
            frame = feed.reset()
        else:
            frame = feed.step(action)
            if frame is not None:
                episode_return += frame.reward
    if frame is not None and not frame.done:
        summary.partial_return = episode_return
    summary.latency_p50_ms = latencies.percentile(50)
    summary.latency_p99_ms = latencies.percentile(99)
    return summary


# ------------------------------------------------------------------------------------------ a whole run
@dataclass
class RunOptions:
    engine: str
    feed: str = "env"
    episodes: Optional[int] = None
    max_steps: Optional[int] = None
    deadline_ms: Optional[float] = None
    record: Optional[str] = None
    fps: float = 10.0
    show: bool = False
    save_feed: Optional[str] = None
    seed: int = 0
    providers: List[str] = field(default_factory=list)
    cuda_graph: bool = False
    print_steps: bool = False
    serve: Optional["ServeOptions"] = None  # live browser view (runtime/serve.py)
    rate: Optional[float] = None  # pace the loop to at most this many frames per second


def run_session(opts: RunOptions) -> RunSummary:
    """`edge-digr run` as a function: open the model and the feed, run, record, save the feed, summarise."""
    import contextlib
    import sys

    from tqdm import tqdm

    from edge_digr.core.fileio import check_writable
    from edge_digr.runtime.feeds import FeedRecorder, ReplayFeed, open_feed
    from edge_digr.runtime.overlay import Recorder, Window, compose
    from edge_digr.runtime.runners import open_runner
    from edge_digr.runtime.serve import LiveView, Playback

    # Outputs are checked before the run, so that a long run never ends by failing to write its results.
    inputs = [opts.engine] + ([opts.feed[len("replay:"):]] if opts.feed.startswith("replay:") else [])
    recorder = Recorder(check_writable(opts.record, inputs=inputs, option="--record"), opts.fps) \
        if opts.record else None
    if opts.save_feed:
        check_writable(opts.save_feed, inputs=inputs, option="--save-feed")
    runner_opts: Dict[str, Any] = {}
    if opts.providers:
        runner_opts["providers"] = opts.providers
    if opts.cuda_graph:
        runner_opts["cuda_graph"] = True
    episodes = opts.episodes
    if episodes is None and opts.max_steps is None and not opts.feed.startswith("replay:"):
        episodes = 1  # a live feed never ends by itself
    limits = RunLimits(episodes=episodes, max_steps=opts.max_steps, deadline_ms=opts.deadline_ms)
    with contextlib.ExitStack() as stack:
        sigterm = stack.enter_context(StopOnSigterm())
        runner = stack.enter_context(open_runner(opts.engine, **runner_opts))
        manifest = runner.manifest
        if (opts.record or opts.show or opts.serve) and "saliency" not in runner.output_names:
            raise UserError(f"{opts.engine} has no saliency output (a forward-only export?); --record, "
                            "--show and --serve need the fused graph from `edge-digr export`")
        labels = list(manifest.action["names"]) if manifest.continuous else ["saliency"]
        if recorder is not None:
            stack.enter_context(recorder)
        window = Window() if opts.show else None
        if window is not None:
            stack.callback(window.close)
        saver = FeedRecorder(opts.save_feed, runner.input_names) if opts.save_feed else None
        feed = stack.enter_context(open_feed(opts.feed, manifest, seed=opts.seed))
        replay = isinstance(feed, ReplayFeed)
        # A served replay has no clock of its own: it plays at the view's rate, and only it can be paused.
        playback = Playback(opts.rate or (opts.serve.fps if opts.serve and replay else None),
                            pausable=bool(opts.serve) and replay)
        view = None
        if opts.serve is not None:
            view = stack.enter_context(LiveView(opts.serve, manifest, labels, playback, opts.feed, opts.deadline_ms,
                                                feed.length if replay else None))
            tqdm.write(f"live view: {view.url}", file=sys.stdout)
            sys.stdout.flush()  # a supervisor or test reading a pipe learns the port now, not at exit
        bar = stack.enter_context(tqdm(total=opts.max_steps, unit="frame", desc="run", leave=False,
                                       disable=None))

        def on_step(r: StepResult) -> Optional[bool]:
            if view is not None:
                view.publish(r)
            if saver is not None:
                saver.add(r.frame.inputs)
            if opts.print_steps:
                tqdm.write(step_line(r, manifest))
            if recorder is not None or window is not None:
                image = compose(r.frame.inputs[runner.input_names[0]], r.outputs["saliency"], labels)
                if recorder is not None:
                    recorder.add(image)
                if window is not None and not window.show(image):
                    return False
            return False if sigterm.requested else None

        def on_frame() -> None:
            bar.update(1)
            playback.wait()

        summary = run_loop(runner, feed, limits, on_step, on_frame)
        if sigterm.requested:
            summary.stopped_by = "SIGTERM"
        if saver is not None:
            saver.save()
    return summary


class StopOnSigterm:
    """While entered, SIGTERM only sets `requested` (the run stops after the current step and closes its files);
    a second SIGTERM acts as usual. Signals can be caught in the main thread only: elsewhere this does nothing."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "StopOnSigterm":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        import signal

        self.requested = True
        signal.signal(signal.SIGTERM, self._previous)

    def __exit__(self, *exc: Any) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def step_line(r: StepResult, manifest: Manifest) -> str:
    """One line per step: action (by name) and where the saliency peaks."""
    if manifest.continuous:
        action = ", ".join(f"{n}={v:+.3f}" for n, v in zip(manifest.action["names"], r.action))
    else:
        action = manifest.action["names"][r.action]
    line = f"step {r.step} episode {r.episode}: action {action}; {r.latency_ms:.2f} ms"
    sal = r.outputs.get("saliency")
    if sal is not None:
        peak = tuple(int(i) for i in np.unravel_index(int(np.argmax(sal)), sal.shape))
        line += f"; saliency max {float(sal.max()):.4g} at {peak}"
    return line
