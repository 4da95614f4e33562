"""Soak benchmark (issue 13): the memory of one long `edge-digr run`, sampled while it runs.

Runs the real command in a child process — the task's own environment feed (MiniGrid Fetch by default),
ONNX Runtime on the CPU, a random-weight `edge` student exported with the fused exporter — and samples the
child's resident set size (VmRSS in /proc/PID/status) every `--interval` seconds. The figure that matters
is growth: RSS at the end against RSS once the run is under way (the first sample after `--settle` seconds,
when imports, the model and the environment are loaded), and the least-squares slope over the samples after
that, in bytes per step. `--record out.gif` measures a recording run the same way.

`--stub` measures the run loop alone, in this process, at full speed: `edge_digr.runtime.loop.run_loop`
over a feed that ends an episode every 10 frames and a runner that returns fixed outputs with a varying
latency, RSS read every 1000 steps. That is where a long run's growth came from (every latency and every
return kept), without the environment's and the model's cost per step.

    python benchmarks/soak_run.py --steps 100000 --json soak.json
    python benchmarks/soak_run.py --steps 3000 --record soak.gif --json soak_gif.json
    python benchmarks/soak_run.py --stub --steps 100000 --json soak_stub.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

CLI = [sys.executable, "-c", "from edge_digr.cli import main; main()"]


def rss_bytes(pid: int) -> Optional[int]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def export_student(folder: Path, task: str) -> Path:
    import torch

    from edge_digr.checkpoint import save_checkpoint
    from edge_digr.export import export_checkpoint
    from edge_digr.policies import PixelPolicy, PolicyConfig
    from edge_digr.core.tasks import get_task

    torch.manual_seed(0)
    ckpt = folder / f"{task}.pt"
    save_checkpoint(ckpt, PixelPolicy(PolicyConfig.for_task(get_task(task), "edge")), task, role="student")
    export_checkpoint(ckpt, folder / f"{task}.onnx")
    return folder / f"{task}.onnx"


def slope(points: List[List[float]]) -> Optional[float]:
    """Least-squares slope of y over x."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    den = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / den if den else None


def soak(engine: Path, steps: int, record: Optional[str], interval: float, settle: float, folder: Path) -> Dict:
    summary_json = folder / "summary.json"
    args = ["run", "--engine", str(engine), "--max-steps", str(steps), "--json", str(summary_json)]
    if record:
        args += ["--record", record]
    start = time.monotonic()
    proc = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    samples: List[List[float]] = []  # [seconds since start, RSS bytes]
    while proc.poll() is None:
        rss = rss_bytes(proc.pid)
        if rss is not None:
            samples.append([round(time.monotonic() - start, 2), rss])
        time.sleep(interval)
    out = proc.communicate()[0]
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"the run failed ({proc.returncode}):\n{out}")
    summary = json.loads(summary_json.read_text())
    settled = [s for s in samples if s[0] >= settle]
    if len(settled) < 2:
        raise SystemExit(f"too few samples after {settle} s: lengthen the run or lower --settle")
    # Steps over time are near-linear once settled: convert the time slope to bytes per step.
    steps_per_s = summary["steps"] / wall
    per_s = slope(settled)
    return {
        "command": f"edge-digr run --engine {engine.name} --max-steps {steps}"
                   + (f" --record {Path(record).name}" if record else ""),
        "steps": summary["steps"], "wall_s": round(wall, 1), "samples": samples,
        "rss_settled_mb": settled[0][1] / 2**20, "rss_end_mb": samples[-1][1] / 2**20,
        "rss_max_mb": max(s[1] for s in samples) / 2**20,
        "growth_mb": (samples[-1][1] - settled[0][1]) / 2**20,
        "slope_bytes_per_step": per_s / steps_per_s if per_s is not None else None,
        "summary_text_bytes": len(out.encode()),
    }


def soak_stub(steps: int, task: str) -> Dict:
    """`run_loop` over a stub feed and runner, RSS sampled in this process every 1000 steps."""
    import numpy as np

    from edge_digr.core.manifest import for_task
    from edge_digr.runtime.feeds import Feed, Frame
    from edge_digr.runtime.loop import RunLimits, run_loop

    manifest = for_task(task)
    inputs = {i["name"]: np.zeros(i["shape"][1:], np.float32) for i in manifest.inputs}
    outputs = {o["name"]: np.zeros([1] + o["shape"][1:], np.float32) for o in manifest.outputs}
    rng = np.random.default_rng(0)

    class StubRunner:
        def __init__(self) -> None:
            self.manifest, self.last_ms = manifest, 0.0

        def infer(self, feed: Dict[str, Any]) -> Dict[str, Any]:
            self.last_ms = float(rng.exponential(1.0))
            return outputs

    class StubFeed(Feed):
        def __init__(self) -> None:
            self.t = 0

        def reset(self) -> Frame:
            return Frame(inputs)

        def step(self, action: Any) -> Frame:
            self.t += 1
            return Frame(inputs, reward=1.0, done=self.t % 10 == 0)

    samples: List[List[float]] = []
    frames = [0]

    def on_frame() -> None:
        frames[0] += 1
        if frames[0] % 1000 == 0:
            samples.append([frames[0], rss_bytes(os.getpid())])

    start = time.monotonic()
    summary = run_loop(StubRunner(), StubFeed(), RunLimits(max_steps=steps), on_frame=on_frame)
    settled = samples[len(samples) // 20:]  # after the first 5 %: allocator warm-up
    return {
        "command": f"soak_run.py --stub --steps {steps}", "steps": summary.steps, "episodes": summary.episodes,
        "wall_s": round(time.monotonic() - start, 1), "samples": samples,
        "rss_settled_mb": settled[0][1] / 2**20, "rss_end_mb": samples[-1][1] / 2**20,
        "rss_max_mb": max(s[1] for s in samples) / 2**20, "growth_mb": (samples[-1][1] - settled[0][1]) / 2**20,
        "slope_bytes_per_step": slope(settled), "summary_text_bytes": len(summary.text().encode()),
        "summary_json_bytes": len(json.dumps(summary.to_dict()).encode()),
    }


def main(argv: Optional[List[str]] = None) -> None:
    from edge_digr.machine import machine_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--task", default="minigrid-fetch")
    parser.add_argument("--engine", help="model to run (default: a random-weight edge student, exported here)")
    parser.add_argument("--record", help="also record (e.g. soak.gif), to measure a recording run")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between RSS samples")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before the reference sample")
    parser.add_argument("--stub", action="store_true", help="the run loop alone, with a stub feed and runner")
    parser.add_argument("--json", help="write the report here")
    opts = parser.parse_args(argv)
    if opts.stub:
        report: Dict[str, Any] = soak_stub(opts.steps, opts.task)
    else:
        report = soak_child(opts)
    report.update(task=opts.task, argv=sys.argv[1:], machine=machine_info(),
                  load_average_1_5_15min=list(os.getloadavg()))
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=2))
    if opts.json:
        Path(opts.json).write_text(json.dumps(report, indent=2) + "\n")


def soak_child(opts: argparse.Namespace) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        engine = Path(opts.engine) if opts.engine else export_student(folder, opts.task)
        record = str(folder / Path(opts.record).name) if opts.record else None
        return soak(engine, opts.steps, record, opts.interval, opts.settle, folder)


if __name__ == "__main__":
    main()
