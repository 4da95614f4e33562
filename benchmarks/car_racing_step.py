"""CarRacing step time: gymnasium's own road renderer against edge-digr's vectorised one, in one run.

    python benchmarks/car_racing_step.py --steps 1000 --seeds 0,1

Both envs take the same random actions from the same seeds, interleaved step by step (so a change in the
machine's load hits both alike); every frame is compared, and the run fails if any pixel differs.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    import gymnasium as gym

    from edge_digr.core.tasks import get_task
    from edge_digr.machine import machine_line, machine_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="Steps per seed.")
    parser.add_argument("--seeds", default="0,1", help="Comma-separated track seeds.")
    args = parser.parse_args()
    machine = machine_info()
    ours, theirs = get_task("car-racing").make_env(), gym.make("CarRacing-v3", continuous=True)
    rng = np.random.default_rng(0)
    spent = {"gymnasium": 0.0, "edge-digr": 0.0}
    steps = 0
    for seed in (int(s) for s in args.seeds.split(",")):
        ours.reset(seed=seed)
        theirs.reset(seed=seed)
        for _ in range(args.steps):
            action = np.array([rng.uniform(-1, 1), rng.uniform(0.2, 1), 0.0], np.float32)
            t0 = time.perf_counter()
            a = ours.step(action)[0]
            t1 = time.perf_counter()
            b = theirs.step(action)[0]
            spent["edge-digr"] += t1 - t0
            spent["gymnasium"] += time.perf_counter() - t1
            if not np.array_equal(a, b):
                raise SystemExit(f"seed {seed}, step {steps}: the frames differ")
            steps += 1
    for name, total in spent.items():
        print(f"{name:10s} {1000 * total / steps:6.2f} ms/step  {steps / total:6.1f} steps/s")
    print(f"speed-up {spent['gymnasium'] / spent['edge-digr']:.2f}x over {steps} steps, every frame identical; "
          f"{machine_line(machine)}")


if __name__ == "__main__":
    main()
