"""Return of a task's privileged expert on the task's own env, over fixed seeds.

    python benchmarks/expert_return.py --task car-racing --seeds 0-19
    python benchmarks/expert_return.py --task atari-breakout --seeds 0-9

Each episode is `env.reset(seed=s)` on the env `edge_digr.core.tasks` builds (Breakout: sticky actions
p = 0.25, frame skip 4, up to 30 reset no-ops; CarRacing-v3: its own 1000-step limit), bounded by the
task's episode length. Prints one line per episode and the mean ± std (population std) over the seeds.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
from tqdm import tqdm

from edge_digr.experts import EXPERTS, make_expert
from edge_digr.core.tasks import get_task


def parse_seeds(text: str) -> List[int]:
    """"0-9" or "0,3,5" (or a mix: "0-4,7")."""
    seeds: List[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    return seeds


def run_episode(task_name: str, seed: int, max_steps: int, bar: tqdm) -> Dict[str, Any]:
    env = get_task(task_name).make_env()
    expert = make_expert(task_name)
    env.reset(seed=seed)
    expert.reset()
    total, steps, done = 0.0, 0, False
    while not done and steps < max_steps:
        _, reward, terminated, truncated, _ = env.step(expert.act(env))
        total += float(reward)
        steps += 1
        done = terminated or truncated
        bar.update(1)
    env.close()
    return {"seed": seed, "return": total, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=sorted(EXPERTS), help="task whose expert to run")
    parser.add_argument("--seeds", default="0-9", help="reset seeds, e.g. 0-19 or 0,2,5")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="agent-step bound per episode (default: the task's episode length)")
    parser.add_argument("--json", type=Path, help="also write the per-episode results and summary here")
    args = parser.parse_args()

    max_steps = args.max_steps or get_task(args.task).train.max_episode_steps or 100_000
    seeds = parse_seeds(args.seeds)
    episodes = []
    with tqdm(total=len(seeds) * max_steps, unit="step", desc=f"{args.task} expert") as bar:
        for seed in seeds:
            start = bar.n
            episodes.append(run_episode(args.task, seed, max_steps, bar))
            bar.update(max_steps - (bar.n - start))  # an episode over early frees its unused budget
            tqdm.write("seed {seed}: return {return:.1f}, {steps} steps".format(**episodes[-1]))
    returns = np.array([e["return"] for e in episodes])
    summary = {"task": args.task, "mean": float(returns.mean()), "std": float(returns.std()),
               "min": float(returns.min()), "max": float(returns.max()), "episodes": len(episodes),
               "seeds": args.seeds, "max_steps": max_steps}
    print(f"{args.task} expert: return {summary['mean']:.1f} ± {summary['std']:.1f} over {len(episodes)} episodes "
          f"(seeds {args.seeds}, min {returns.min():.1f}, max {returns.max():.1f})")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "episodes": episodes}, indent=2))


if __name__ == "__main__":
    main()
