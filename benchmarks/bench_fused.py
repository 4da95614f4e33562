"""Issues 3 and 17, "Performance": the fused logits+saliency pass against what it replaces, measured in one run.

For each task graph (default: the atari-breakout and car-racing teacher and edge architectures, random
weights), in ONNX Runtime on the CPU, at the given thread counts and batch sizes, interleaved in one process
(edge_digr.runtime.profiler.measure), with the runner's session options for the batch size
(edge_digr.runtime.runners.session_options: no weight prepacking at batch 1):

- ``fused``: the graph `edge-digr export` writes (logits|action + saliency);
- ``forward``: its forward-only subgraph (edge_digr.runtime.profiler.derive_forward_graph);
- ``torch_eager``: PyTorch eager forward + torch.autograd.grad on the same network and input;
- ``perturbation``: the project's batched perturbation saliency (edge_digr.saliency.Perturbation, torch,
  the labeller's implementation), one frame per call; ``perturbation_ort``: the same algorithm through the
  forward-only ONNX graph (what `edge-digr profile` times on the device);
- diagnostic, not part of the targets: ``fused_sepw`` (export with separate_backward_weights=True: the
  backward products get their own weight initializers, as INT8 calibration needs).

Ratios use per-frame medians (``ratios``) and, as a reference robust to other processes on the CPU,
per-frame minima (``ratios_min``). Targets (issue 17): fused/forward ≤ 1.25 × floor at batch 1 and ≤ 1.1 ×
floor at larger batches, where the floor is one forward pass plus one backward pass per saliency target
(2 for a discrete head, 1 + K for K action components); torch_eager/fused ≥ 3 at batch 1;
perturbation/fused ≥ 200 per frame. ``torch_eager_over_two_forwards`` is the eager/fused ratio a fused
pass costing exactly two forward passes would reach. The machine line (CPU, L2/L3, single-core probe) and
the load averages before and after are printed and kept in the JSON.

    python benchmarks/bench_fused.py --threads 1 --batch 1 32 --json bench_fused.json
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

GRAPHS = ("atari-breakout:teacher", "atari-breakout:edge", "car-racing:teacher", "car-racing:edge")


def targets(floor: int, batch: int) -> Dict[str, Tuple[str, float]]:
    """The issue's bounds for a graph whose fused pass cannot cost less than `floor` forward passes."""
    out = {"fused_over_forward": ("<=", (1.25 if batch == 1 else 1.1) * floor),
           "perturbation_over_fused_per_frame": (">=", 200.0)}
    if batch == 1:
        out["torch_eager_over_fused"] = (">=", 3.0)
    return out


def ort_session(path: Path, threads: int, batch: int) -> Any:
    import onnxruntime as ort

    from edge_digr.runtime.runners import session_options

    # No busy-waiting between calls: spinning ORT workers would steal the cores from the torch variants
    # interleaved with them (and torch's OpenMP workers from ORT; see OMP_WAIT_POLICY in main).
    return ort.InferenceSession(str(path), session_options(threads, spin=False, batch=batch),
                                providers=["CPUExecutionProvider"])


def run_config(graph: str, models: Dict[str, Path], policy: Any, threads: int, batch: int, iterations: int,
               torch_iterations: int, perturbation_frames: int, rounds: int) -> Dict[str, Any]:
    import torch

    from edge_digr.core.manifest import read_onnx_manifest
    from edge_digr.core.perturbation import PerturbationConfig
    from edge_digr.runtime.profiler import Variant, head_output, measure, perturbation_variant, random_feed, ratios
    from profile_torch import torch_variant  # benchmarks/: the runtime never imports torch
    from edge_digr.saliency import Perturbation

    torch.set_num_threads(threads)
    manifest = read_onnx_manifest(models["fused"])
    feed = random_feed(manifest, batch)
    floor = 1 + (manifest.action["n"] if manifest.continuous else 1)
    sessions = {name: ort_session(path, threads, batch) for name, path in models.items()}
    warmup = max(3, iterations // 10)
    todo: List[Variant] = [Variant(name, f"ONNX Runtime CPU, {name} graph", lambda s=s: s.run(None, feed), batch,
                                   iterations, warmup) for name, s in sessions.items()]
    todo.append(torch_variant(policy, feed, torch_iterations, max(2, torch_iterations // 10)))
    frame = policy.inputs_from({k: v[:1] for k, v in feed.items()})
    pert = PerturbationConfig()
    todo.append(Variant("perturbation", "edge_digr.saliency.Perturbation (torch, batched over masks), 1 frame/call",
                        lambda: Perturbation(policy, pert).attribute(frame), 1, perturbation_frames, 1))
    # The perturbation batches its masks, so its forward session is the runner's for a large batch.
    fwd = ort_session(models["forward"], threads, pert.batch_size)
    head = head_output(manifest)
    todo.append(perturbation_variant(lambda f: fwd.run([head], f)[0], feed, pert, perturbation_frames,
                                     "perturbation_ort"))
    results = measure(todo, rounds, progress=True)
    out = {"graph": graph, "floor": floor, "threads": threads, "batch": batch,
           "targets": {k: f"{op} {b:g}" for k, (op, b) in targets(floor, batch).items()},
           "variants": {n: r.to_dict() for n, r in results.items()}}
    for key, statistic in (("ratios", "p50"), ("ratios_min", "min")):
        def per_frame(name: str, statistic: str = statistic) -> float:
            stats = results[name].stats
            return getattr(stats, f"{statistic}_ms") / stats.frames

        out[key] = {**ratios(results, statistic),
                    "perturbation_ort_over_fused_per_frame": per_frame("perturbation_ort") / per_frame("fused"),
                    "fused_sepw_over_forward": per_frame("fused_sepw") / per_frame("forward"),
                    "torch_eager_over_two_forwards": per_frame("torch_eager") / (2 * per_frame("forward"))}
    for rows in out["variants"].values():
        del rows["samples_ms"]  # the table needs the statistics only
    return out


def table(configs: List[Dict[str, Any]]) -> str:
    names = ["fused", "forward", "fused_sepw", "torch_eager", "perturbation", "perturbation_ort"]
    head = "| graph | threads | batch | " + " | ".join(f"{n} ms/frame p50 (min)" for n in names) + " |"
    lines = [head, "|" + "---|" * (3 + len(names))]
    for c in configs:
        cells = [f"{c['variants'][n]['per_frame_ms']:.4g} ({c['variants'][n]['min_ms'] / c['variants'][n]['frames']:.4g})"
                 for n in names]
        lines.append(f"| {c['graph']} | {c['threads']} | {c['batch']} | " + " | ".join(cells) + " |")
    keys = ["fused_over_forward", "torch_eager_over_fused", "perturbation_over_fused_per_frame",
            "perturbation_ort_over_fused_per_frame", "fused_sepw_over_forward", "torch_eager_over_two_forwards"]
    lines += ["", "| graph | floor | threads | batch | " + " | ".join(keys) + " |", "|" + "---|" * (4 + len(keys))]
    for key, label in (("ratios", "p50"), ("ratios_min", "min")):
        for c in configs:
            cells = []
            for k in keys:
                r = c[key][k]
                op, bound = targets(c["floor"], c["batch"]).get(k, ("", None))
                ok = "" if bound is None else (" ✓" if (r >= bound if op == ">=" else r <= bound) else " ✗")
                cells.append(f"{r:.2f}×{ok}")
            lines.append(f"| {c['graph']} | {c['floor']} | {c['threads']} | {c['batch']} ({label}) | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", nargs="+", default=list(GRAPHS), metavar="TASK:ARCH",
                        help="task graphs to time (arch: teacher or edge)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--iterations", type=int, default=300, help="ONNX calls at batch 1 (scaled down by batch)")
    parser.add_argument("--perturbation-frames", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch's OpenMP starts: set it first
    import torch

    from edge_digr.checkpoint import save_checkpoint
    from edge_digr.export import export_checkpoint
    from edge_digr.machine import machine_info, machine_line
    from edge_digr.policies import PixelPolicy, PolicyConfig
    from edge_digr.runtime.profiler import derive_forward_graph, machine
    from edge_digr.core.tasks import get_task

    host = {**machine(), **machine_info()}  # before the run: the probe and load averages of a quiet start
    configs = []
    with tempfile.TemporaryDirectory() as tmp:
        for graph in args.graphs:
            task_name, _, arch = graph.partition(":")
            torch.manual_seed(args.seed)
            task = get_task(task_name)
            policy = PixelPolicy(PolicyConfig.for_task(task, arch or "teacher")).eval()
            d = Path(tmp) / graph.replace(":", "-")
            d.mkdir()
            save_checkpoint(d / "policy.pt", policy, task.name, "benchmark", seed=args.seed)
            models = {"fused": d / "fused.onnx", "forward": d / "forward.onnx", "fused_sepw": d / "sepw.onnx"}
            export_checkpoint(d / "policy.pt", models["fused"])
            derive_forward_graph(models["fused"], models["forward"])
            export_checkpoint(d / "policy.pt", models["fused_sepw"], separate_backward_weights=True)
            for threads in args.threads:
                for batch in args.batch:
                    its = max(20, args.iterations // batch)
                    configs.append(run_config(graph, models, policy, threads, batch, its, max(10, its // 3),
                                              args.perturbation_frames, args.rounds))
                    print(f"{graph} threads {threads} batch {batch}: " + ", ".join(
                        f"{k} {v:.2f}x" for k, v in configs[-1]["ratios"].items()), file=sys.stderr)
    load_after = list(os.getloadavg())
    report = {"command": "python benchmarks/bench_fused.py " + " ".join(argv),
              "machine": {**host, "load_average_after": load_after}, "machine_line": machine_line(host),
              "torch": torch.__version__, "networks": "task architectures, random weights", "configs": configs}
    print(f"machine: {machine_line(host)}")
    print(f"load average (1, 5, 15 min): before {' '.join(f'{x:.2f}' for x in host['load_average_1_5_15min'])}, "
          f"after {' '.join(f'{x:.2f}' for x in load_after)}")
    print(table(configs))
    if args.json:
        from edge_digr.core.fileio import write_json

        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
