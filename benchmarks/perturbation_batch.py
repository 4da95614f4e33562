"""Time per perturbation map against the perturbed frames per forward call, in one run.

    python benchmarks/perturbation_batch.py --teacher models/car-racing/teacher.pt --labels labels.npz

Maps the first `--frames` frames of a labels file with each `--batch-sizes` value, on 1 and 2 torch
threads, `--repeats` times each in turn (the best time counts: other jobs only ever slow a run down), and
checks that every batch size gives the same maps. Prints the machine line and one row per setting.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from edge_digr.checkpoint import load_policy, policy_task
from edge_digr.core.perturbation import PerturbationConfig
from edge_digr.core.tasks import get_task
from edge_digr.labels import load_labels
from edge_digr.machine import machine_info, machine_line
from edge_digr.saliency import Perturbation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="teacher.pt whose maps are timed")
    parser.add_argument("--labels", required=True, help="labels.npz of the teacher's task (frames to map)")
    parser.add_argument("--frames", type=int, default=32, help="frames mapped per timing")
    parser.add_argument("--batch-sizes", default="256,128,64,32", help="perturbed frames per forward call")
    parser.add_argument("--threads", default="1,2", help="torch thread counts to time")
    parser.add_argument("--repeats", type=int, default=3, help="timings per setting; the best counts")
    args = parser.parse_args()

    print(machine_line(machine_info()))
    task = get_task(policy_task(args.teacher))
    teacher = load_policy(args.teacher, task.name).eval()
    frames = load_labels(args.labels, task)
    inputs = tuple(torch.from_numpy(np.asarray(frames[spec.name][:args.frames])) for spec in task.inputs)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        best = {b: float("inf") for b in sizes}
        maps = {}
        for _ in range(args.repeats):  # settings interleaved, so a slow spell of the machine hits them alike
            for b in sizes:
                start = time.perf_counter()
                maps[b] = Perturbation(teacher, PerturbationConfig(batch_size=b)).attribute(inputs)
                best[b] = min(best[b], time.perf_counter() - start)
        for b in sizes:
            same = np.allclose(maps[b], maps[sizes[0]], rtol=1e-5, atol=1e-7)
            print(f"{threads} thread(s)  batch {b:4d}  {best[b] / args.frames * 1000:7.1f} ms/map  "
                  f"{best[sizes[0]] / best[b]:.2f}x batch {sizes[0]}  same maps: {same}")


if __name__ == "__main__":
    main()
