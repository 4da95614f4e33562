"""Issue 3, "Performance": the fused logits+saliency pass against what it replaces, measured in one run.

On a Nature-CNN (atari-breakout teacher architecture, 4×84×84, random weights) in ONNX Runtime on the
CPU, at 1 and 2 threads and batch 1 and 32, interleaved in one process (edge_digr.runtime.profiler.measure):

- ``fused``: the graph `edge-digr export` writes (logits + saliency);
- ``forward``: its forward-only subgraph (edge_digr.runtime.profiler.derive_forward_graph);
- ``torch_eager``: PyTorch eager forward + torch.autograd.grad on the same network and input;
- ``perturbation``: the project's batched perturbation saliency (edge_digr.saliency.Perturbation, torch,
  the labeller's implementation), one frame per call; ``perturbation_ort``: the same algorithm through the
  forward-only ONNX graph (what `edge-digr profile` times on the device);
- diagnostic, not part of the targets: ``fused_sepw`` (export with separate_backward_weights=True: the
  backward MatMul gets its own weight initializer, as INT8 calibration needs).

Ratios use per-frame medians (``ratios``) and, as a reference robust to other processes on the CPU,
per-frame minima (``ratios_min``). Targets: torch_eager/fused ≥ 3, fused/forward ≤ 2.2, perturbation/fused ≥ 200.
``torch_eager_over_two_forwards`` is the eager/fused ratio a fused pass costing exactly two forward passes
(the FLOP floor of an input gradient) would reach: where it is below 3, that target cannot be met by the
graph on this machine.

    python benchmarks/bench_fused.py --json bench_fused.json
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

TARGETS = {"torch_eager_over_fused": (">=", 3.0), "fused_over_forward": ("<=", 2.2),
           "perturbation_over_fused_per_frame": (">=", 200.0)}


def ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # the runtime's runner takes the default pool; a benchmark pins it
    opts.inter_op_num_threads = 1
    # No busy-waiting between calls: spinning ORT workers would steal the cores from the torch variants
    # interleaved with them (and torch's OpenMP workers from ORT; see OMP_WAIT_POLICY in main).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_config(models: Dict[str, Path], policy: Any, threads: int, batch: int, iterations: int,
               torch_iterations: int, perturbation_frames: int, rounds: int) -> Dict[str, Any]:
    import torch

    from edge_digr.core.manifest import read_onnx_manifest
    from edge_digr.core.perturbation import PerturbationConfig
    from edge_digr.runtime.profiler import Variant, measure, perturbation_variant, random_feed, ratios
    from profile_torch import torch_variant  # benchmarks/: the runtime never imports torch
    from edge_digr.saliency import Perturbation

    torch.set_num_threads(threads)
    feed = random_feed(read_onnx_manifest(models["fused"]), batch)
    sessions = {name: ort_session(path, threads) for name, path in models.items()}
    warmup = max(3, iterations // 10)
    todo: List[Variant] = [Variant(name, f"ONNX Runtime CPU, {name} graph", lambda s=s: s.run(None, feed), batch,
                                   iterations, warmup) for name, s in sessions.items()]
    todo.append(torch_variant(policy, feed, torch_iterations, max(2, torch_iterations // 10)))
    frame = policy.inputs_from({k: v[:1] for k, v in feed.items()})
    pert = PerturbationConfig()
    todo.append(Variant("perturbation", "edge_digr.saliency.Perturbation (torch, batched over masks), 1 frame/call",
                        lambda: Perturbation(policy, pert).attribute(frame), 1, perturbation_frames, 1))
    fwd = sessions["forward"]
    todo.append(perturbation_variant(lambda f: fwd.run(["logits"], f)[0], feed, pert, perturbation_frames,
                                     "perturbation_ort"))
    results = measure(todo, rounds, progress=True)
    out = {"threads": threads, "batch": batch, "variants": {n: r.to_dict() for n, r in results.items()}}
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
    head = "| threads | batch | " + " | ".join(f"{n} ms/frame p50 (min)" for n in names) + " |"
    lines = [head, "|" + "---|" * (2 + len(names))]
    for c in configs:
        cells = [f"{c['variants'][n]['per_frame_ms']:.4g} ({c['variants'][n]['min_ms'] / c['variants'][n]['frames']:.4g})"
                 for n in names]
        lines.append(f"| {c['threads']} | {c['batch']} | " + " | ".join(cells) + " |")
    keys = list(TARGETS) + ["perturbation_ort_over_fused_per_frame", "fused_sepw_over_forward",
                            "torch_eager_over_two_forwards"]
    lines += ["", "| threads | batch | " + " | ".join(keys) + " |", "|" + "---|" * (2 + len(keys))]
    for key, label in (("ratios", "p50"), ("ratios_min", "min")):
        for c in configs:
            cells = []
            for k in keys:
                r = c[key][k]
                op, bound = TARGETS.get(k, ("", None))
                ok = "" if bound is None else (" ✓" if (r >= bound if op == ">=" else r <= bound) else " ✗")
                cells.append(f"{r:.2f}×{ok}")
            lines.append(f"| {c['threads']} | {c['batch']} ({label}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    from edge_digr.policies import PixelPolicy, PolicyConfig
    from edge_digr.runtime.profiler import derive_forward_graph, machine
    from edge_digr.core.tasks import get_task

    torch.manual_seed(args.seed)
    task = get_task("atari-breakout")
    policy = PixelPolicy(PolicyConfig.for_task(task, "teacher")).eval()
    configs = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        save_checkpoint(d / "nature.pt", policy, task.name, "benchmark", seed=args.seed)
        models = {"fused": d / "fused.onnx", "forward": d / "forward.onnx", "fused_sepw": d / "sepw.onnx"}
        export_checkpoint(d / "nature.pt", models["fused"])
        derive_forward_graph(models["fused"], models["forward"])
        export_checkpoint(d / "nature.pt", models["fused_sepw"], separate_backward_weights=True)
        for threads in args.threads:
            for batch in args.batch:
                its = max(20, args.iterations // batch)
                configs.append(run_config(models, policy, threads, batch, its, max(10, its // 3),
                                          args.perturbation_frames, args.rounds))
                print(f"threads {threads} batch {batch}: " + ", ".join(
                    f"{k} {v:.2f}x" for k, v in configs[-1]["ratios"].items()), file=sys.stderr)
    report = {"command": "python benchmarks/bench_fused.py " + " ".join(argv), "machine": machine(),
              "torch": torch.__version__, "network": "Nature-CNN (atari-breakout teacher arch), random weights",
              "targets": {k: f"{op} {b}" for k, (op, b) in TARGETS.items()}, "configs": configs}
    print(table(configs))
    if args.json:
        from edge_digr.core.fileio import write_json

        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
