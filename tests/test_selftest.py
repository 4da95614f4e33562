"""`edge-digr selftest`: parity judging per precision, and the command on ONNX Runtime models (the engine
side is any model the runtime opens, so the whole command runs here; with TensorRT it is a .plan)."""
import json

import pytest
from click.testing import CliRunner

from edge_digr.calibration.fidelity import Fidelity
from edge_digr.cli import main
from edge_digr.core.errors import UserError
from edge_digr.runtime.runners import OnnxRuntimeRunner
from edge_digr.calibration.selftest import TOLERANCES, engine_batch, judge, selftest

onnx = pytest.importorskip("onnx")
from test_calibration_quantize import toy_frames, toy_fused  # noqa: E402

from edge_digr.core.frames import save_frames  # noqa: E402
from edge_digr.calibration.quantize import quantize_qdq  # noqa: E402


def _fid(agree=1.0, r=1.0, iou=1.0, err=0.0):
    return Fidelity(frames=10, action_agreement=agree, saliency_pearson=r, saliency_pearson_min=r, top10_iou=iou,
                    max_logit_error=err, max_saliency_error=0.0)


def test_judge_applies_the_precision_tolerances():
    assert judge(_fid(), 5.0, "fp32").passed
    # an INT8-sized saliency deviation passes for int8 and fails for fp32
    assert judge(_fid(r=0.95, iou=0.8, err=0.2), 5.0, "int8").passed
    fp32 = judge(_fid(r=0.95, iou=0.8, err=0.2), 5.0, "fp32")
    assert not fp32.passed and {c.metric for c in fp32.checks if not c.passed} == {
        "saliency pearson", "top-10% IoU", "logit error (rel)"}
    # the logit error is relative to the reference logits' scale
    assert judge(_fid(err=0.05), 100.0, "fp16").passed and not judge(_fid(err=0.05), 1.0, "fp16").passed
    assert not judge(_fid(agree=0.9), 5.0, "int8").passed
    with pytest.raises(UserError, match="no selftest tolerances"):
        judge(_fid(), 1.0, "fp8")


def test_tolerances_tighten_with_precision():
    fp32, fp16, int8 = TOLERANCES["fp32"], TOLERANCES["fp16"], TOLERANCES["int8"]
    assert fp32.saliency_pearson > fp16.saliency_pearson > int8.saliency_pearson
    assert fp32.logit_error < fp16.logit_error < int8.logit_error


def test_selftest_same_model_passes_and_a_different_model_fails(tmp_path):
    toy_fused(tmp_path / "a.onnx", seed=0)
    toy_fused(tmp_path / "b.onnx", seed=1)
    frames = toy_frames(32)
    with OnnxRuntimeRunner(tmp_path / "a.onnx") as a, OnnxRuntimeRunner(tmp_path / "b.onnx") as b:
        same = selftest(a, a, frames, batch_size=8)
        other = selftest(b, a, frames, precision="fp32", batch_size=8)
    assert same.passed and same.fidelity.max_logit_error == 0.0 and same.precision == "fp32"
    assert not other.passed


def test_engine_batch_reads_the_profile():
    class M:
        extra = {"batch": [1, 4, 16]}
    assert engine_batch(M) == 16
    M.extra = {}
    assert engine_batch(M) == 1


def _models(tmp_path):
    toy_fused(tmp_path / "toy.onnx")
    save_frames(tmp_path / "frames.npz", toy_frames(150))
    calib, _ = toy_frames(150).split(0.2)
    quantize_qdq(tmp_path / "toy.onnx", calib, tmp_path / "toy.int8.onnx")


def test_selftest_command_int8_model_against_fp32(tmp_path):
    _models(tmp_path)
    res = CliRunner().invoke(main, ["selftest", "--engine", str(tmp_path / "toy.int8.onnx"), "--data",
                                    str(tmp_path / "frames.npz"), "--frames", "40", "--json", str(tmp_path / "st.json")])
    # --onnx defaults to the model the engine names as its source (toy.onnx, next to it)
    assert res.exit_code == 0, res.output
    assert "selftest passed" in res.output and "(int8)" in res.output
    report = json.loads((tmp_path / "st.json").read_text())
    assert report["passed"] and report["precision"] == "int8" and report["fidelity"]["frames"] == 40
    assert report["onnx"].endswith("toy.onnx")


def test_selftest_command_fails_with_exit_1_on_a_mismatch(tmp_path):
    toy_fused(tmp_path / "a.onnx", seed=0)
    toy_fused(tmp_path / "b.onnx", seed=1)
    res = CliRunner().invoke(main, ["selftest", "--engine", str(tmp_path / "b.onnx"), "--onnx",
                                    str(tmp_path / "a.onnx"), "--frames", "16"])
    assert res.exit_code == 1 and "FAIL" in res.output and "selftest FAILED" in res.output


def test_selftest_command_bad_input(tmp_path):
    toy_fused(tmp_path / "a.onnx")
    res = CliRunner().invoke(main, ["selftest", "--engine", str(tmp_path / "a.onnx")])
    assert res.exit_code == 2 and "does not name the ONNX" in res.output  # an fp32 export names no ONNX
    res = CliRunner().invoke(main, ["selftest", "--engine", str(tmp_path / "none.plan")])
    assert res.exit_code == 2 and res.output.startswith("error: ")


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None,
                    reason="checks the install hint shown where tensorrt is missing")
def test_selftest_of_a_plan_without_tensorrt_gives_the_install_hint(tmp_path):
    from edge_digr.core.manifest import read_onnx_manifest, write_sidecar

    toy_fused(tmp_path / "toy.onnx")
    (tmp_path / "toy.plan").write_bytes(b"not really a plan")
    manifest = read_onnx_manifest(tmp_path / "toy.onnx")
    manifest.source = "toy.onnx"
    write_sidecar(tmp_path / "toy.plan", manifest)
    res = CliRunner().invoke(main, ["selftest", "--engine", str(tmp_path / "toy.plan"), "--frames", "4"])
    assert res.exit_code == 2 and "pip install 'edge-digr[trt]'" in res.output
