"""Issue 3, "Performance": the fused logits+saliency pass against what it replaces, measured in one run.

On a Nature-CNN (atari-breakout teacher architecture, 4×84×84, random weights) in ONNX Runtime on the
CPU, at 1 and 2 threads and batch 1 and 32, interleaved in one process (edge_digr.runtime.profiler.measure):

- ``fused``: the graph `edge-digr export` writes (logits + saliency);
- ``forward``: its forward-only subgraph (edge_digr.runtime.profiler.derive_forward_graph);
- ``torch_eager``: PyTorch eager forward + torch.autograd.grad on the same network and input;
- ``perturbation``: the project's batched perturbation saliency (edge_digr.saliency.Perturbation, torch,
  the labeller's implementation), one frame per call; ``perturbation_ort``: the same algorithm through the
  forward-only ONNX graph (what `edge-digr profile` times on the device);
- diagnostics, not part of the targets: ``fused_sepw`` (export with separate_backward_weights=True) and
  ``fused_sepw_mulmask`` (that graph with every ReLU-mask ``Where(mask, g, 0)`` rewritten as
  ``Mul(g, Cast(mask))``), to show where the fused pass's time above 2× a forward goes.

Ratios use per-frame medians (``ratios``) and, as a reference robust to other processes on the CPU,
per-frame minima (``ratios_min``). Targets: torch_eager/fused ≥ 3, fused/forward ≤ 2.2, perturbation/fused ≥ 200.

    python benchmarks/bench_fused.py --json bench_fused.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

TARGETS = {"torch_eager_over_fused": (">=", 3.0), "fused_over_forward": ("<=", 2.2),
           "perturbation_over_fused_per_frame": (">=", 200.0)}


def where_to_mul(src: Path, dst: Path) -> None:
    """Diagnostic rewrite: Where(mask, g, 0) -> Mul(g, Cast(mask, float)) (same values, other kernels)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    nodes = []
    for n in model.graph.node:
        zero = consts.get(n.input[2]) if n.op_type == "Where" else None
        if zero is not None and zero.size == 1 and float(zero.reshape(-1)[0]) == 0.0:
            mask = n.output[0] + "_mask"
            nodes += [helper.make_node("Cast", [n.input[0]], [mask], name=n.name + "_cast", to=TensorProto.FLOAT),
                      helper.make_node("Mul", [n.input[1], mask], [n.output[0]], name=n.name + "_mul")]
        else:
            nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # the runtime's runner takes the default pool; a benchmark pins it
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_config(models: Dict[str, Path], policy: Any, threads: int, batch: int, iterations: int,
               torch_iterations: int, perturbation_frames: int, rounds: int) -> Dict[str, Any]:
    import torch

    from edge_digr.manifest import read_onnx_manifest
    from edge_digr.perturbation import PerturbationConfig
    from edge_digr.runtime.profiler import (Variant, measure, perturbation_variant, random_feed, ratios,
                                            torch_variant)
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
        def per_frame(name: str) -> float:
            stats = results[name].stats
            return getattr(stats, f"{statistic}_ms") / stats.frames

        out[key] = {**ratios(results, statistic),
                    "perturbation_ort_over_fused_per_frame": per_frame("perturbation_ort") / per_frame("fused"),
                    "fused_sepw_over_forward": per_frame("fused_sepw") / per_frame("forward"),
                    "fused_sepw_mulmask_over_forward": per_frame("fused_sepw_mulmask") / per_frame("forward")}
    for rows in out["variants"].values():
        del rows["samples_ms"]  # the table needs the statistics only
    return out


def table(configs: List[Dict[str, Any]]) -> str:
    names = ["fused", "forward", "fused_sepw", "fused_sepw_mulmask", "torch_eager", "perturbation",
             "perturbation_ort"]
    head = "| threads | batch | " + " | ".join(f"{n} ms/frame p50 (min)" for n in names) + " |"
    lines = [head, "|" + "---|" * (2 + len(names))]
    for c in configs:
        cells = [f"{c['variants'][n]['per_frame_ms']:.4g} ({c['variants'][n]['min_ms'] / c['variants'][n]['frames']:.4g})"
                 for n in names]
        lines.append(f"| {c['threads']} | {c['batch']} | " + " | ".join(cells) + " |")
    keys = list(TARGETS) + ["perturbation_ort_over_fused_per_frame", "fused_sepw_over_forward",
                            "fused_sepw_mulmask_over_forward"]
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

    import torch

    from edge_digr.checkpoint import save_checkpoint
    from edge_digr.export import export_checkpoint
    from edge_digr.policies import PixelPolicy, PolicyConfig
    from edge_digr.runtime.profiler import derive_forward_graph, machine
    from edge_digr.tasks import get_task

    torch.manual_seed(args.seed)
    task = get_task("atari-breakout")
    policy = PixelPolicy(PolicyConfig.for_task(task, "teacher")).eval()
    configs = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        save_checkpoint(d / "nature.pt", policy, task.name, "benchmark", seed=args.seed)
        models = {"fused": d / "fused.onnx", "forward": d / "forward.onnx", "fused_sepw": d / "sepw.onnx",
                  "fused_sepw_mulmask": d / "sepw_mulmask.onnx"}
        export_checkpoint(d / "nature.pt", models["fused"])
        derive_forward_graph(models["fused"], models["forward"])
        export_checkpoint(d / "nature.pt", models["fused_sepw"], separate_backward_weights=True)
        where_to_mul(models["fused_sepw"], models["fused_sepw_mulmask"])
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
        from edge_digr.fileio import write_json

        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
