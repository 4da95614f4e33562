"""Perturbation labelling throughput: the serial path against Ray with 1 and 2 workers, in one run (issue 15).

    python benchmarks/bench_label_ray.py --task car-racing --teacher models/car-racing/teacher.pt --frames 24

The teacher's rollouts (the same frames for every variant) are collected once; then each variant labels
them with `edge_digr.labels.add_perturbation_maps`, `--repeats` times, and the best time counts (other jobs
on a shared machine only ever slow a run down). Each Ray variant starts its own local instance with
`num_cpus` = its worker count and labels one chunk first, so that worker start-up (a Python process that
imports torch) is reported apart from the steady-state rate. Every variant's maps are checked against the
serial ones. Prints the machine line (edge_digr.machine) and a table; `--json` writes the numbers.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from edge_digr.checkpoint import load_policy, policy_task
from edge_digr.labels import add_perturbation_maps, collect
from edge_digr.machine import machine_info, machine_line
from edge_digr.core.perturbation import PerturbationConfig
from edge_digr.core.tasks import get_task


def best_time(label: Any, repeats: int) -> float:
    """Best wall time of `repeats` calls of `label()`."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        label()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=None, help="Task (default: the one the teacher records).")
    parser.add_argument("--teacher", type=Path, default=Path("models/car-racing/teacher.pt"))
    parser.add_argument("--frames", type=int, default=24, help="Frames to label.")
    parser.add_argument("--chunk", type=int, default=4, help="Frames per Ray task.")
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to time (local instances).")
    parser.add_argument("--repeats", type=int, default=2, help="Timed runs per variant (the best counts).")
    parser.add_argument("--json", type=Path, default=None, help="Write the results here.")
    args = parser.parse_args()

    import ray

    torch.set_num_threads(1)  # the serial path on one core, as each Ray worker runs (Ray sets 1 thread a CPU)
    task = get_task(policy_task(args.teacher, args.task))
    teacher = load_policy(args.teacher, task.name)
    frames = collect(teacher, task, args.frames, seed=0, progress=False)
    config = PerturbationConfig()
    info = machine_info()
    print(f"machine: {machine_line(info)}; load average {os.getloadavg()[0]:.1f} (other jobs share the cores)")
    print(f"task {task.name}, {args.frames} frames, stride {config.stride}, chunk {args.chunk}")

    def run(address: Optional[str]) -> np.ndarray:
        data = dict(frames)
        add_perturbation_maps(teacher, task, data, config, progress=False, ray_address=address, ray_chunk=args.chunk)
        return data["saliency"]

    reference = run(None)
    rows: List[Dict[str, Any]] = [{"variant": "serial", "workers": 1, "startup_s": 0.0,
                                   "seconds": best_time(lambda: run(None), args.repeats), "max_abs_diff": 0.0}]
    for workers in (int(w) for w in args.workers.split(",")):
        start = time.perf_counter()
        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
        warm = {k: v[:args.chunk] for k, v in frames.items()}
        add_perturbation_maps(teacher, task, warm, config, progress=False, ray_address="local", ray_chunk=args.chunk)
        startup = time.perf_counter() - start
        maps = run("local")
        seconds = best_time(lambda: run("local"), args.repeats)
        ray.shutdown()
        rows.append({"variant": f"ray {workers}", "workers": workers, "startup_s": startup, "seconds": seconds,
                     "max_abs_diff": float(np.abs(maps - reference).max())})
    serial = rows[0]["seconds"]
    print("\n| variant | frames/s | × serial | Ray start-up + first chunk (s) | max |Δ| vs serial |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        row["frames_per_s"] = args.frames / row["seconds"]
        row["speedup"] = serial / row["seconds"]
        print(f"| {row['variant']} | {row['frames_per_s']:.2f} | {row['speedup']:.2f} | "
              f"{row['startup_s']:.1f} | {row['max_abs_diff']:.1e} |")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        from edge_digr.core.fileio import write_json

        write_json(args.json, {"machine": info, "load_average_end": os.getloadavg()[0], "task": task.name, "frames": args.frames, "chunk": args.chunk,
                               "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()
