"""Sweep DIGR's λ and selection-mask rule on one seed's teacher and labels; report agreement and return.

    python benchmarks/digr_sweep.py --run runs/minigrid-fetch/seed0 --lams 0,0.1,1,10 --rules fraction:0.1,topk:0.2

Uses the seed folder written by `edge-digr demo` (teacher.pt, labels.npz). Each configuration is
distilled once into <run>/sweep/ (reused if present) and evaluated on the same held-out frames and
evaluation seeds as the demo. λ = 0 is plain distillation; DIGR students use the share penalty.
`--strips DIR` draws each configuration's gradient maps beside the demo's plain and DIGR students on the
demo's sample frames (DIR/<config>_<i>.png).

`--ray [ADDRESS]` runs each (rule, λ) configuration as a Ray task needing `--cpus-per-job` CPUs (alone: a
local Ray instance; `auto` or `ray://HOST:10001`: an existing cluster, whose workers must see --run at the
same path). A configuration that fails is reported with its options; the others' rows are still printed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional

from edge_digr.checkpoint import load_checkpoint
from edge_digr.demo import COLUMNS, write_strips
from edge_digr.distill import DistillConfig, distill
from edge_digr.labels import load_labels, split
from edge_digr.metrics import evaluate_policy, open_policy
from edge_digr.core.tasks import get_task
from edge_digr.ray_jobs import add_ray_arguments, run_jobs


def run_config(run: Path, task_name: str, rule: str, threshold: str, lam: float, episodes: int, seed: int,
               strips: Optional[Path]) -> Dict[str, Any]:
    """Distil (unless already there) and evaluate one configuration; its row of the table."""
    task = get_task(task_name)
    labels = run / "labels.npz"
    train, test = split(load_labels(labels, task))
    mode = "plain" if lam == 0 else "digr"
    # The penalty form stays in a DIGR student's name: sweep folders of earlier sessions hold raw-penalty
    # students named without it, from when raw was the default, and files found here are reused.
    variant = "" if mode == "plain" else "_share"
    out = run / "sweep" / f"{mode}_{rule}{threshold}_lam{lam:g}{variant}.pt"
    if not out.exists():
        teacher, _ = load_checkpoint(run / "teacher.pt")
        cfg = DistillConfig.for_task(task, mode, seed, lam=lam, mask_rule=rule, mask_threshold=float(threshold))
        distill(task, train, cfg, out, progress=False, teacher=teacher)
    policy = open_policy(str(out), task)
    m = evaluate_policy(policy, task, episodes, str(labels), seed, progress=False)
    if strips:
        strips.mkdir(parents=True, exist_ok=True)
        demo_students = {name: open_policy(str(run / f"student_{name}.pt"), task) for name in ("plain", "digr")}
        write_strips({**demo_students, out.stem: policy}, task, test, strips, {**COLUMNS, out.stem: out.stem},
                     prefix=out.stem)
    return {"rule": rule, "threshold": float(threshold), "lam": lam, **m}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--task", default="minigrid-fetch")
    parser.add_argument("--lams", default="0,0.1,1,10")
    parser.add_argument("--rules", default="fraction:0.1", help="rule:threshold,... (fraction or topk)")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strips", type=Path, default=None, help="folder for strips: frame | teacher | plain | "
                                                                    "DIGR | this configuration")
    add_ray_arguments(parser, "configurations", cpus=1)
    args = parser.parse_args()

    configs = [dict(run=args.run, task_name=args.task, rule=rule, threshold=threshold, lam=float(lam),
                    episodes=args.episodes,
                    seed=args.seed, strips=args.strips)
               for rule, threshold in (spec.split(":") for spec in args.rules.split(","))
               for lam in args.lams.split(",")]
    results, failures = run_jobs(run_config, configs, args.ray, args.cpus_per_job)
    rows = [r for r in results if r is not None]
    for row in rows:
        print(json.dumps(row), flush=True)
    cols = ["return", "success", "saliency_pearson", "saliency_iou_top10", "pointing"]
    print("\n| rule | λ | " + " | ".join(cols) + " |\n|" + " --- |" * (len(cols) + 2))
    for r in rows:
        print(f"| {r['rule']} {r['threshold']:g} | {r['lam']:g} | " +
              " | ".join(f"{r[c]:.3f}" for c in cols if c in r) + " |")
    for config, reason in failures:
        print(f"failed: rule {config['rule']}:{config['threshold']} λ {config['lam']:g}: {reason}", file=sys.stderr)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
