"""TensorRT runner: build-target checks everywhere; engine round trips only where tensorrt + pycuda import."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from edge_digr.core.errors import UserError
from edge_digr.core.manifest import for_task, write_sidecar
from edge_digr.runtime import open_runner
from edge_digr.runtime.trt_backend import check_build_target
from runtime_fixtures import contract_onnx

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("pycuda") is not None
needs_trt = pytest.mark.skipif(not HAVE_TRT, reason="tensorrt and pycuda do not import here (no NVIDIA GPU "
                                                    "stack); these run on the Jetson / a CUDA machine")


def _manifest(**extra):
    m = for_task("atari-breakout")
    m.extra.update(extra)
    return m


def test_engine_from_another_tensorrt_version_is_refused_with_rebuild_hint():
    with pytest.raises(UserError, match=r"TensorRT 8\.5\.2.*this is TensorRT 10\.3\.0.*edge-digr build"):
        check_build_target(_manifest(tensorrt="8.5.2.2"), "10.3.0", "Orin", "m.plan")


def test_engine_for_another_gpu_is_refused_with_rebuild_hint():
    with pytest.raises(UserError, match=r"GPU 'NVIDIA GeForce RTX 3090'.*'Orin'.*edge-digr build"):
        check_build_target(_manifest(tensorrt="10.3.0", device="NVIDIA GeForce RTX 3090"), "10.3.1", "Orin", "m.plan")


def test_matching_or_unrecorded_build_target_passes():
    check_build_target(_manifest(tensorrt="10.3.0.26", device="Orin"), "10.3.0", "Orin", "m.plan")
    check_build_target(_manifest(), "8.5.2", "Xavier", "m.plan")  # older sidecars record neither


def test_truncated_plan_is_refused_before_tensorrt_loads(tmp_path):
    from edge_digr.core.fileio import sha256_file

    plan = tmp_path / "m.plan"
    plan.write_bytes(b"engine bytes " * 100)
    write_sidecar(plan, _manifest(plan_sha256=sha256_file(plan)))
    assert open_runner(plan).manifest.task == "atari-breakout"  # intact: accepted (TensorRT loads later)
    plan.write_bytes(plan.read_bytes()[:500])
    with pytest.raises(UserError, match="does not match the sha256.*edge-digr build"):
        open_runner(plan)


def _build_plan(onnx_path, plan_path, max_batch=4):
    from edge_digr.runtime.engine_build import BatchProfile, BuildOptions
    from edge_digr.runtime.trt_backend import build_engine

    build_engine(BuildOptions(onnx=onnx_path, out=plan_path, batch=BatchProfile(1, 1, max_batch)), log=lambda _: None)
    return plan_path


@needs_trt
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_tensorrt_runner_matches_onnxruntime(tmp_path, cuda_graph):
    onnx_path = contract_onnx(tmp_path / "a.onnx", "atari-breakout")
    plan = _build_plan(onnx_path, tmp_path / "a.plan")
    feed = {"obs": np.random.default_rng(0).uniform(0, 255, (2, 4, 84, 84)).astype(np.float32)}
    with open_runner(onnx_path, providers=["CPUExecutionProvider"]) as ort_runner:
        expected = ort_runner.infer(feed)
    with open_runner(plan, cuda_graph=cuda_graph) as runner:
        for _ in range(3):  # repeated calls reuse buffers (and replay the graph)
            out = runner.infer(feed)
        single = runner.infer({"obs": feed["obs"][:1]})  # batch change: new shapes and buffers
        assert len(runner.timings_ms) == 4
    for name in ("logits", "saliency"):
        np.testing.assert_allclose(out[name], expected[name], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(single["logits"], expected["logits"][:1], rtol=1e-3, atol=1e-3)


@needs_trt
def test_corrupt_plan_is_refused_with_rebuild_hint(tmp_path):
    plan = tmp_path / "bad.plan"
    plan.write_bytes(np.random.default_rng(0).bytes(4096))
    write_sidecar(plan, for_task("atari-breakout"))
    with pytest.raises(UserError, match="edge-digr build"):
        open_runner(plan).activate()
