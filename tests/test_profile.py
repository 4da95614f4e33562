"""`edge-digr profile` on ONNX Runtime: report structure, forward-only derivation, CDF plot, errors.

Uses the runtime tests' hand-built contract graph (tests/runtime_fixtures.py) so most tests need neither
torch nor the exporter; one test profiles a real exported policy when torch is here.
No timing assertions: only that each variant was timed and the statistics are consistent.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

onnx = pytest.importorskip("onnx")

from edge_digr.cli import main  # noqa: E402
from edge_digr.core.errors import UserError  # noqa: E402
from edge_digr.core.manifest import for_task, read_onnx_manifest  # noqa: E402
from edge_digr.runtime.profiler import (LatencyStats, ProfileConfig, Variant, derive_forward_graph, measure,  # noqa: E402
                                        parse_ort_profile, profile, ratios)
from runtime_fixtures import contract_onnx, exported_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

FAST = ProfileConfig(iterations=6, warmup=1, rounds=2, perturbation_iterations=1, layer_iterations=2,
                     progress=False)


def tiny_fused(path: Path) -> Path:
    """A contract-shaped minigrid-fetch graph whose saliency branch the head output does not need.

    Its manifest names a checkpoint that is not there, with a hash no file has.
    """
    return contract_onnx(path, "minigrid-fetch",
                         manifest=for_task("minigrid-fetch", source="tiny.pt", source_sha256="0" * 64))


@pytest.fixture
def tiny(tmp_path):
    return tiny_fused(tmp_path / "tiny.onnx")


def test_latency_stats_percentiles_and_throughput():
    s = LatencyStats.of([float(t) for t in range(1, 101)], frames=4)
    assert (s.calls, s.min_ms, s.max_ms) == (100, 1.0, 100.0)
    assert s.p50_ms == pytest.approx(50.5) and s.p90_ms == pytest.approx(90.1) and s.p99_ms == pytest.approx(99.01)
    assert s.per_frame_ms == pytest.approx(50.5 / 4)
    assert s.throughput_fps == pytest.approx(1e3 * 4 / 50.5)
    with pytest.raises(ValueError):
        LatencyStats.of([], 1)


def test_measure_interleaves_and_counts_every_call():
    order = []
    variants = [Variant("a", "", lambda: order.append("a"), 1, 4, 1),
                Variant("b", "", lambda: order.append("b"), 2, 2, 0)]
    results = measure(variants, rounds=2, progress=False)
    assert order == ["a", "a", "a", "b", "a", "a", "b"]  # warm-up, then round 1 (a a b), round 2 (a a b)
    assert results["a"].stats.calls == 4 and results["b"].stats.calls == 2 and results["b"].stats.frames == 2
    assert len(results["a"].windows) == 2 and all(t0 <= t1 for t0, t1 in results["a"].windows)


def test_ratios_are_per_frame_median_ratios():
    def fake(name, p50, frames):
        return type("R", (), {"stats": LatencyStats.of([p50], frames)})()

    r = ratios({"fused": fake("fused", 8.0, 8), "forward": fake("forward", 4.0, 8),
                "perturbation": fake("perturbation", 300.0, 1), "torch_eager": fake("torch_eager", 40.0, 8)})
    assert r == {"torch_eager_over_fused": 5.0, "fused_over_forward": 2.0,
                 "perturbation_over_fused_per_frame": 300.0}


def test_forward_graph_is_the_head_subgraph_with_identical_logits(tiny, tmp_path):
    import onnxruntime as ort

    fwd = derive_forward_graph(tiny, tmp_path / "fwd.onnx")
    model = onnx.load(str(fwd))
    assert [o.name for o in model.graph.output] == ["logits"]
    ops = {n.op_type for n in model.graph.node}
    assert "ReduceMax" not in ops and "Abs" not in ops and "MatMul" in ops
    manifest = read_onnx_manifest(fwd)
    assert manifest.output_names == ["logits"] and manifest.extra["graph"] == "forward-only"
    feed = {"obs": np.random.default_rng(1).random((3, 3, 40, 40), np.float32) * 255,
            "mission": np.eye(8, dtype=np.float32)[:3]}
    full = ort.InferenceSession(str(tiny), providers=["CPUExecutionProvider"]).run(["logits"], feed)[0]
    head = ort.InferenceSession(str(fwd), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_array_equal(full, head)


def test_profile_report_on_onnx_runtime(tiny):
    report = profile(tiny, FAST)
    assert set(report["variants"]) == {"fused", "forward", "perturbation"}
    assert report["skipped"] == {}  # the torch baseline is the desktop side's (benchmarks/profile_torch.py)
    fused = report["variants"]["fused"]
    assert fused["calls"] == 6 and len(fused["samples_ms"]) == 6 and fused["frames"] == 1
    assert fused["min_ms"] <= fused["p50_ms"] <= fused["p90_ms"] <= fused["p99_ms"] <= fused["max_ms"]
    assert report["variants"]["perturbation"]["frames"] == 1
    assert set(report["ratios"]) == {"fused_over_forward", "perturbation_over_fused_per_frame"}
    assert report["task"] == "minigrid-fetch" and report["backend"] == "onnxruntime"
    assert "no host↔device copies" in report["copies"]["note"]
    layer_ops = {row["op"] for row in report["layers"]["fused"]}
    assert {"Abs", "ReduceMax"} <= layer_ops
    assert "ReduceMax" not in {row["op"] for row in report["layers"]["forward"]}
    assert sum(row["share"] for row in report["layers"]["fused"]) == pytest.approx(1.0)
    ops = {row["op"]: row["median_ms"] for row in report["layer_ops"]["fused"]}
    assert ops["Abs"] == pytest.approx(sum(r["median_ms"] for r in report["layers"]["fused"] if r["op"] == "Abs"))
    assert set(report["ratios_min"]) == set(report["ratios"])
    assert report["device"] == {"jetson": False} or report["device"]["jetson"]
    json.dumps(report)  # JSON-able


def test_ort_profile_events_give_the_median_per_node():
    events = [{"cat": "Node", "name": "conv_kernel_time", "dur": 9000, "args": {"op_name": "Conv"}},  # first run
              {"cat": "Node", "name": "conv_kernel_time", "dur": 200, "args": {"op_name": "Conv"}},
              {"cat": "Node", "name": "conv_kernel_time", "dur": 100, "args": {"op_name": "Conv"}},
              {"cat": "Node", "name": "conv_fence_before", "dur": 5, "args": {}},
              {"cat": "Session", "name": "model_run", "dur": 999},
              {"cat": "Node", "name": "relu_kernel_time", "dur": 100, "args": {"op_name": "Relu"}}]
    rows = parse_ort_profile(events)
    assert rows == [{"layer": "conv", "op": "Conv", "median_ms": 0.2, "share": pytest.approx(2 / 3)},
                    {"layer": "relu", "op": "Relu", "median_ms": 0.1, "share": pytest.approx(1 / 3)}]


def test_cli_writes_json_and_cdf_plot(tiny, tmp_path):
    pytest.importorskip("matplotlib")
    out, plot = tmp_path / "p.json", tmp_path / "p.png"
    result = CliRunner().invoke(main, ["profile", "--engine", str(tiny), "--iterations", "5", "--warmup", "1",
                                       "--rounds", "1", "--perturbation-frames", "1", "--layer-iterations", "1",
                                       "--batch", "2", "--json", str(out), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "fused_over_forward" in result.output
    report = json.loads(out.read_text())
    assert report["batch"] == 2 and report["variants"]["fused"]["frames"] == 2
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--engine", "missing.onnx"], "does not exist"),
    (["--engine", "model.txt"], "unknown model type"),
    (["--engine", "{tiny}", "--iterations", "0"], "not in the range x>=1"),
])
def test_cli_errors_are_one_line(tiny, tmp_path, args, message):
    (tmp_path / "model.txt").write_text("x")
    args = [a.format(tiny=tiny) for a in args]
    proc = subprocess.run([sys.executable, "-c", "from edge_digr.cli import main; main()", "profile", *args],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def _profile_torch():
    """benchmarks/profile_torch.py, where the PyTorch baseline lives (the runtime never imports torch)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("profile_torch", ROOT / "benchmarks" / "profile_torch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_with_torch_baseline_on_an_exported_policy(tmp_path):
    pytest.importorskip("torch")
    fused = exported_onnx(tmp_path, "minigrid-fetch")
    baseline = _profile_torch().torch_baseline(fused, iterations=FAST.iterations, warmup=FAST.warmup)
    report = profile(fused, FAST, baselines={"torch_eager": baseline})  # the checkpoint is found next to the graph
    assert set(report["variants"]) == {"fused", "forward", "perturbation", "torch_eager"}
    assert set(report["ratios"]) == {"torch_eager_over_fused", "fused_over_forward",
                                     "perturbation_over_fused_per_frame"}
    assert report["skipped"] == {}


def test_torch_baseline_refuses_another_checkpoint_and_skips_a_missing_one(tiny):
    baseline = _profile_torch().torch_baseline(tiny, checkpoint=tiny)
    manifest = read_onnx_manifest(tiny)
    with pytest.raises(UserError, match="is not the checkpoint"):
        baseline(manifest, {})
    assert "no checkpoint" in _profile_torch().torch_baseline(tiny)(manifest, {})


def test_plot_without_matplotlib_fails_before_the_run_and_names_the_extra(tiny, tmp_path, monkeypatch):
    from edge_digr.runtime import profiler

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(profiler, "profile", lambda *a, **k: pytest.fail("profiled without a way to plot"))
    result = CliRunner().invoke(main, ["profile", "--engine", str(tiny), "--plot", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "edge-digr[profile]" in result.output
    with pytest.raises(UserError, match=r"edge-digr\[profile\]"):
        profiler.plot_cdf({"variants": {}}, tmp_path / "x.png")


def test_deployment_modules_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import edge_digr.runtime.profiler, edge_digr.runtime.jetson, edge_digr.runtime.tegrastats\n"
            "import edge_digr.runtime.bundle, edge_digr.runtime.deploy_commands\n"
            "from edge_digr.cli import main\n"
            "main(['profile', '--help'])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "--perturbation-frames" in proc.stdout


def test_profile_runs_without_torch(tiny, tmp_path):
    code = ("import sys, json; sys.modules['torch'] = None\n"
            "from edge_digr.runtime.profiler import ProfileConfig, profile\n"
            f"r = profile({str(tiny)!r}, ProfileConfig(iterations=2, warmup=0, rounds=1, perturbation_iterations=1,"
            " layer_iterations=0, progress=False))\n"
            "print(json.dumps({'variants': sorted(r['variants']), 'skipped': r['skipped']}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"variants": ["forward", "fused", "perturbation"], "skipped": {}}


def test_forward_graph_of_an_exported_policy_has_no_gradient_nodes(tmp_path):
    pytest.importorskip("torch")
    import onnxruntime as ort

    fused = exported_onnx(tmp_path, "minigrid-fetch")
    fwd = derive_forward_graph(fused, tmp_path / "fwd.onnx")
    names = [n.name for n in onnx.load(str(fwd)).graph.node]
    assert names and not [n for n in names if "/vjp/" in n]  # the exporter's gradient-path prefix
    assert len(names) < len(onnx.load(str(fused)).graph.node)
    feed = {"obs": np.random.default_rng(2).random((4, 3, 40, 40), np.float32) * 255,
            "mission": np.eye(8, dtype=np.float32)[[0, 3, 5, 7]]}
    full = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"]).run(["logits"], feed)[0]
    head = ort.InferenceSession(str(fwd), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_array_equal(full, head)
