"""Sweep DIGR's λ and selection-mask rule on one seed's teacher and labels; report agreement and return.

    python benchmarks/digr_sweep.py --run runs/minigrid-fetch/seed0 --lams 0,0.1,1,10 --rules fraction:0.1,topk:0.2

Uses the seed folder written by `edge-digr demo` (teacher.pt, labels.npz). Each configuration is
distilled once into <run>/sweep/ (reused if present) and evaluated on the same held-out frames and
evaluation seeds as the demo. λ = 0 is plain distillation. `--penalty-target logit` penalises the greedy
logit's gradient instead of log π(a*|x)'s (see DistillConfig.penalty_target); `--penalty-norm share`
penalises the share of the gradient's energy in A rather than its size; `--rules soft:0` weights every
pixel by 1 − S/max S (the threshold is unused). `--strips DIR` draws each configuration's gradient maps
beside the demo's plain and DIGR students on the demo's sample frames (DIR/<config>_<i>.png).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge_digr.checkpoint import load_checkpoint
from edge_digr.demo import COLUMNS, write_strips
from edge_digr.distill import DistillConfig, distill
from edge_digr.labels import load_labels, split
from edge_digr.metrics import evaluate_policy, open_policy
from edge_digr.core.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--task", default="minigrid-fetch")
    parser.add_argument("--lams", default="0,0.1,1,10")
    parser.add_argument("--rules", default="fraction:0.1", help="rule:threshold,... (fraction or topk)")
    parser.add_argument("--penalty-target", default="logp", choices=["logp", "logit"])
    parser.add_argument("--penalty-norm", default="none", choices=["none", "share"])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strips", type=Path, default=None, help="folder for strips: frame | teacher | plain | "
                                                                    "DIGR | this configuration")
    args = parser.parse_args()

    task = get_task(args.task)
    labels = args.run / "labels.npz"
    train, test = split(load_labels(labels, task))
    teacher, _ = load_checkpoint(args.run / "teacher.pt")
    rows = []
    if args.strips:
        args.strips.mkdir(parents=True, exist_ok=True)
    demo_students = {mode: open_policy(str(args.run / f"student_{mode}.pt"), task)
                     for mode in ("plain", "digr")} if args.strips else {}
    for rule_spec in args.rules.split(","):
        rule, threshold = rule_spec.split(":")
        for lam in (float(x) for x in args.lams.split(",")):
            mode = "plain" if lam == 0 else "digr"
            variant = "" if mode == "plain" else "".join(
                f"_{v}" for v, default in ((args.penalty_target, "logp"), (args.penalty_norm, "none")) if v != default)
            out = args.run / "sweep" / f"{mode}_{rule}{threshold}_lam{lam:g}{variant}.pt"
            if not out.exists():
                cfg = DistillConfig.for_task(task, mode, args.seed, lam=lam, mask_rule=rule,
                                             mask_threshold=float(threshold), penalty_target=args.penalty_target,
                                             penalty_norm=args.penalty_norm)
                distill(task, train, cfg, out, progress=False, teacher=teacher)
            policy = open_policy(str(out), task)
            m = evaluate_policy(policy, task, args.episodes, str(labels), args.seed, progress=False)
            if args.strips:
                write_strips({**demo_students, out.stem: policy}, task, test, args.strips,
                             {**COLUMNS, out.stem: out.stem}, prefix=out.stem)
            rows.append({"rule": rule, "threshold": float(threshold), "lam": lam, "target": args.penalty_target,
                         "norm": args.penalty_norm, **m})
            print(json.dumps(rows[-1]), flush=True)
    cols = ["return", "success", "saliency_pearson", "saliency_iou_top10", "pointing"]
    print("\n| rule | λ | " + " | ".join(cols) + " |\n|" + " --- |" * (len(cols) + 2))
    for r in rows:
        print(f"| {r['rule']} {r['threshold']:g} | {r['lam']:g} | " +
              " | ".join(f"{r[c]:.3f}" for c in cols if c in r) + " |")


if __name__ == "__main__":
    main()
