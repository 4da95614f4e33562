"""Where each policy's input gradient goes, measured against the teacher's non-salient region A.

    python benchmarks/digr_gradient_share.py --runs runs/minigrid-fetch/seed0,runs/minigrid-fetch/seed1

For every seed folder written by `edge-digr demo` (teacher.pt, student_*.pt, labels.npz) and its held-out
frames: the squared gradient of the saliency target, ‖∂g/∂(x/255)‖² summed over pixels (what the DIGR
penalty is built from), its part inside A (the demo's rule: below 10 % of the frame's perturbation
maximum), and the share inside A. DESIGN.md's raw penalty can fall either by moving gradient out of A or
by shrinking the gradient everywhere; the share tells the two apart (and is what DIGR's default penalty,
the share form, minimises).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from edge_digr.checkpoint import load_checkpoint
from edge_digr.distill import selection_mask
from edge_digr.labels import load_labels, split
from edge_digr.saliency import input_gradient
from edge_digr.core.tasks import get_task

POLICIES = ("teacher", "student_plain", "student_digr", "student_igr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="comma-separated seed folders")
    parser.add_argument("--task", default="minigrid-fetch")
    parser.add_argument("--frames", type=int, default=800, help="held-out frames used per seed")
    args = parser.parse_args()

    task = get_task(args.task)
    print("| seed folder | policy | Σ‖∇‖² | Σ‖∇‖² in A | share in A |\n| --- | --- | --- | --- | --- |")
    for run in (Path(r) for r in args.runs.split(",")):
        _, held_out = split(load_labels(run / "labels.npz", task))
        region = torch.from_numpy(selection_mask(held_out["saliency"][:args.frames], "fraction", 0.1))
        inputs = tuple(torch.from_numpy(np.ascontiguousarray(held_out[spec.name][:args.frames], dtype=np.float32))
                       for spec in task.inputs)
        for name in POLICIES:
            if not (run / f"{name}.pt").exists():
                continue
            policy, _ = load_checkpoint(run / f"{name}.pt")
            sq = (input_gradient(policy, inputs) * 255.0).pow(2).sum(dim=1).flatten(1)  # per frame, per pixel
            total, inside = sq.sum(1), (sq * region.flatten(1)).sum(1)
            print(f"| {run} | {name} | {total.mean():.3g} | {inside.mean():.3g} | {(inside / total).mean():.3f} |")


if __name__ == "__main__":
    main()
