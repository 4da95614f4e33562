"""Issue 14: what `run --serve` costs the policy loop, measured in one run.

The real loop (`run_loop`, the task's env feed, the fused graph in ONNX Runtime) paced at a camera-like
`--rate`, in three variants interleaved over rounds on one runner:

- ``off``: no live view;
- ``serve0``: `--serve` on, nobody watching;
- ``serve2``: `--serve` on, two clients reading /stream.mjpg from their own processes (as browsers on a
  laptop would; their CPU is not counted).

Per variant: the loop's own time per step (wall time of an iteration without the pacing sleep — what the
policy waits for), the whole process's CPU time per step (the loop plus the view's encoder and HTTP
threads; ONNX Runtime runs one intra-op thread that does not spin, so CPU time is work), and the view's counters (frames encoded, JPEG encode time, frames clients missed). The verdict
(issue 14: < 10 %): the loop's time per step with the view over without, and the view's CPU time per step
as a share of the step period 1/rate.

    python benchmarks/bench_serve.py --json bench_serve.json
    python benchmarks/bench_serve.py --engine student.onnx --rate 20 --serve-fps 20   # another model / feed rate
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional


VARIANTS = ("off", "serve0", "serve2")
_CLIENT = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=30) as r:
    while r.read(65536):
        pass
"""


def one_run(runner: Any, variant: str, task: str, steps: int, rate: float, serve_fps: float,
            seed: int) -> Dict[str, Any]:
    from edge_digr.runtime.feeds import EnvFeed
    from edge_digr.runtime.loop import RunLimits, run_loop
    from edge_digr.runtime.serve import LiveView, Playback, ServeOptions

    manifest = runner.manifest
    labels = list(manifest.action["names"]) if manifest.continuous else ["saliency"]
    view: Optional[LiveView] = None
    clients: List[subprocess.Popen] = []
    if variant != "off":
        view = LiveView(ServeOptions(port=0, fps=serve_fps), manifest, labels, Playback(), "env").__enter__()
    try:
        if variant == "serve2":
            url = f"http://127.0.0.1:{view.server.server_address[1]}/stream.mjpg"
            clients = [subprocess.Popen([sys.executable, "-c", _CLIENT, url]) for _ in range(2)]
            deadline = time.monotonic() + 60
            while view.stats()["view"]["streams"] < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        pace = Playback(rate)
        busy: List[float] = []
        resumed = [time.perf_counter()]

        def on_frame() -> None:
            busy.append(time.perf_counter() - resumed[0])
            pace.wait()
            resumed[0] = time.perf_counter()

        with EnvFeed(task, seed=seed) as feed:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            run_loop(runner, feed, RunLimits(max_steps=steps), on_step=view.publish if view else None,
                     on_frame=on_frame)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        viewer = view.stats()["view"] if view else {}
    finally:
        for c in clients:
            c.kill()
            c.wait()
        if view is not None:
            view.close()
    busy = busy[1:]  # the first iteration also timed the feed's reset
    return {"loop_ms_per_step_median": 1e3 * statistics.median(busy), "loop_ms_per_step_mean": 1e3 * statistics.mean(busy),
            "cpu_ms_per_step": 1e3 * cpu / steps, "wall_s": wall, "view": viewer}


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", type=Path, help="a fused .onnx (default: a random-weight minigrid-fetch "
                                                    "student exported here, which needs torch)")
    parser.add_argument("--rate", type=float, default=30.0, help="feed rate (frames/s) the loop is paced to")
    parser.add_argument("--serve-fps", type=float, default=15.0, help="the view's --serve-fps")
    parser.add_argument("--steps", type=int, default=240, help="steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from edge_digr.machine import machine_info
    from edge_digr.runtime.profiler import machine
    from edge_digr.runtime.runners import open_runner

    with tempfile.TemporaryDirectory() as tmp:
        engine = args.engine or export_random_student(Path(tmp), args.seed)
        runs: Dict[str, List[Dict[str, Any]]] = {v: [] for v in VARIANTS}
        # One intra-op thread that sleeps between calls: process CPU time then counts work, not spinning.
        with open_runner(engine, threads=1, spin=False) as runner:
            task = runner.manifest.task
            for r in range(args.rounds):
                for v in VARIANTS[r % 3:] + VARIANTS[:r % 3]:  # rotate the order: no variant always first
                    runs[v].append(one_run(runner, v, task, args.steps, args.rate, args.serve_fps, args.seed))
                    print(f"round {r} {v}: {runs[v][-1]['loop_ms_per_step_median']:.3f} ms/step loop, "
                          f"{runs[v][-1]['cpu_ms_per_step']:.3f} ms/step CPU", file=sys.stderr)

    def med(v: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[v])

    period_ms = 1e3 / args.rate
    summary = {v: {"loop_ms_per_step": med(v, "loop_ms_per_step_median"), "cpu_ms_per_step": med(v, "cpu_ms_per_step")}
               for v in VARIANTS}
    for v in ("serve0", "serve2"):
        summary[v]["loop_time_increase"] = summary[v]["loop_ms_per_step"] / summary["off"]["loop_ms_per_step"] - 1
        summary[v]["view_cpu_share_of_step_period"] = (summary[v]["cpu_ms_per_step"]
                                                       - summary["off"]["cpu_ms_per_step"]) / period_ms
        views = [run["view"] for run in runs[v]]
        summary[v]["frames_encoded_per_run"] = statistics.median(x["frames_encoded"] for x in views)
        enc = [x["encode_ms_mean"] for x in views if x["encode_ms_mean"] is not None]
        summary[v]["jpeg_compose_encode_ms_mean"] = statistics.median(enc) if enc else None
        summary[v]["frames_missed_by_clients_per_run"] = statistics.median(x["missed"] for x in views)
    worst = max(max(summary[v]["loop_time_increase"], summary[v]["view_cpu_share_of_step_period"])
                for v in ("serve0", "serve2"))
    report = {"command": "python benchmarks/bench_serve.py " + " ".join(argv), "machine": {**machine(), **machine_info()},
              "engine": str(args.engine) if args.engine else "random-weight minigrid-fetch edge student",
              "rate_hz": args.rate, "serve_fps": args.serve_fps, "steps": args.steps, "rounds": args.rounds,
              "summary": summary, "worst_cost": worst, "target": "< 0.10", "meets_target": worst < 0.10, "runs": runs}
    for v in VARIANTS:
        s = summary[v]
        extra = "" if v == "off" else (f", loop +{100 * s['loop_time_increase']:.1f} %, view CPU "
                                       f"{100 * s['view_cpu_share_of_step_period']:.1f} % of the {period_ms:.1f} ms step")
        print(f"{v:7s} loop {s['loop_ms_per_step']:.3f} ms/step, CPU {s['cpu_ms_per_step']:.3f} ms/step{extra}")
    print(f"worst cost {100 * worst:.1f} % (target < 10 %): {'met' if worst < 0.10 else 'NOT met'}")
    if args.json:
        from edge_digr.core.fileio import write_json

        write_json(args.json, report)
    return 0


def export_random_student(folder: Path, seed: int) -> Path:
    import torch

    from edge_digr.checkpoint import save_checkpoint
    from edge_digr.export import export_checkpoint
    from edge_digr.policies import PixelPolicy, PolicyConfig
    from edge_digr.core.tasks import get_task

    torch.manual_seed(seed)
    save_checkpoint(folder / "s.pt", PixelPolicy(PolicyConfig.for_task(get_task("minigrid-fetch"), "edge")),
                    "minigrid-fetch", role="student")
    export_checkpoint(folder / "s.pt", folder / "s.onnx")
    return folder / "s.onnx"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
