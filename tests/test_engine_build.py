"""`edge-digr build`: the builder's pure logic without TensorRT (argument checking, version branching,
profile shapes, precision flags, sidecar), the calibration cache and batches, and the TensorRT paths
themselves where tensorrt imports."""
import importlib.util
import json
import types
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_digr.cli import main
from edge_digr.core.errors import UserError
from edge_digr.core.manifest import Manifest, read_sidecar, write_sidecar
from edge_digr.runtime.engine_build import (BatchProfile, BuildOptions, check_options, parse_batch,
                                            precision_flags, profile_shapes, sidecar_manifest)
from edge_digr.runtime.trt_backend import network_flags, parse_cache_header, platform_support

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
needs_trt = pytest.mark.skipif(not HAS_TRT, reason="tensorrt is not installed (it runs on the Jetson/GPU only)")

INPUTS = [{"name": "obs", "shape": [-1, 3, 40, 40], "dtype": "float32"},
          {"name": "mission", "shape": [-1, 8], "dtype": "float32"}]


def _manifest(precision="fp32"):
    return Manifest(task="minigrid-fetch", inputs=INPUTS,
                    outputs=[{"name": "logits", "shape": [-1, 7]}, {"name": "saliency", "shape": [-1, 40, 40]}],
                    action={"kind": "discrete", "n": 7, "names": [str(i) for i in range(7)]},
                    saliency_target="log_softmax_greedy", precision=precision, source="student.pt",
                    extra={"role": "student"})


def _opts(tmp_path, **kw):
    return BuildOptions(onnx=tmp_path / "student.onnx", out=tmp_path / "student.plan", **kw)


# ------------------------------------------------------------------------------------------- --batch
@pytest.mark.parametrize("text, want", [("1", (1, 1, 1)), ("1,4,8", (1, 4, 8)), (" 2, 2 ,2", (2, 2, 2))])
def test_parse_batch(text, want):
    b = parse_batch(text)
    assert (b.min, b.opt, b.max) == want


@pytest.mark.parametrize("text", ["", "0", "1,2", "4,2,8", "1,4,2", "a,b,c", "1.5", "-1,1,1", "1,2,3,4"])
def test_parse_batch_refuses(text):
    with pytest.raises(UserError, match="--batch"):
        parse_batch(text)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 64), min_size=3, max_size=3))
def test_parse_batch_accepts_exactly_ordered_positive_triples(triple):
    text = ",".join(map(str, triple))
    if 1 <= triple[0] <= triple[1] <= triple[2]:
        assert parse_batch(text) == BatchProfile(*triple)
    else:
        with pytest.raises(UserError):
            parse_batch(text)


# ------------------------------------------------------------------------------------ option checking
def test_check_options_modes(tmp_path):
    fp32, qdq = _manifest(), _manifest("int8")
    assert check_options(_opts(tmp_path), fp32) == ""
    assert check_options(_opts(tmp_path, precision="fp16"), fp32) == ""
    assert check_options(_opts(tmp_path, precision="int8"), qdq) == "qdq"
    cache = tmp_path / "calib.cache"
    assert check_options(_opts(tmp_path, precision="int8", calib_cache=cache, calib_data=tmp_path / "f.npz"),
                         fp32) == "calibrate"
    cache.write_bytes(b"TRT-8502-EntropyCalibration2\nobs: 3c010a14\n")
    assert check_options(_opts(tmp_path, precision="int8", calib_cache=cache), fp32) == "calibrate"


def test_calibration_batch_must_fit_a_fixed_batch_input(tmp_path):
    fixed = _manifest()
    fixed.inputs = [{"name": "obs", "shape": [1, 3, 40, 40], "dtype": "float32"}]
    opts = dict(precision="int8", calib_cache=tmp_path / "c.cache", calib_data=tmp_path / "f.npz")
    with pytest.raises(UserError, match="fixed batch of 1; pass --calib-batch 1"):
        check_options(_opts(tmp_path, **opts), fixed)  # the default calibration batch is 8
    assert check_options(_opts(tmp_path, calib_batch=1, **opts), fixed) == "calibrate"


@pytest.mark.parametrize("kw, precision, message", [
    (dict(precision="fp64"), "fp32", "--precision"),
    (dict(workspace_mb=0), "fp32", "--workspace"),
    (dict(precision="fp16"), "int8", "INT8 QDQ model"),
    (dict(precision="fp32", calib_cache=Path("c.cache")), "fp32", "only apply to --precision int8"),
    (dict(precision="int8", calib_cache=Path("c.cache")), "int8", "already carries its INT8 scales"),
    (dict(precision="int8"), "fp32", "needs --calib-cache"),
    (dict(precision="int8", calib_cache=Path("/nonexistent/c.cache")), "fp32", "--calib-data"),
])
def test_check_options_refuses(tmp_path, kw, precision, message):
    with pytest.raises(UserError, match=message):
        check_options(_opts(tmp_path, **kw), _manifest(precision))


def test_out_must_be_an_engine_suffix(tmp_path):
    with pytest.raises(UserError, match=".plan"):
        check_options(replace(_opts(tmp_path), out=tmp_path / "x.onnx"), _manifest())


# --------------------------------------------------------------------------------- version branching
def _fake_trt(version):
    flag = types.SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1)
    return types.SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=flag)


def test_network_flags_explicit_batch_on_8_and_none_on_10():
    assert network_flags(_fake_trt("8.5.2.2")) == 1  # 1 << EXPLICIT_BATCH
    assert network_flags(_fake_trt("10.3.0")) == 0  # always explicit batch; the flag is deprecated
    with pytest.raises(UserError, match="too old"):
        network_flags(_fake_trt("7.1.3"))


def test_platform_support_where_the_queries_are_gone():
    old = types.SimpleNamespace(platform_has_fast_fp16=False, platform_has_fast_int8=True)
    assert platform_support(old) == (False, True)
    assert platform_support(types.SimpleNamespace()) == (True, True)  # TensorRT >= 10.5 dropped them


def test_precision_flags_are_guarded_by_platform_support():
    assert precision_flags("fp32", False, False) == []
    assert precision_flags("fp16", True, False) == ["FP16"]
    assert precision_flags("int8", False, True) == ["INT8"]
    with pytest.raises(UserError, match="no fast FP16"):
        precision_flags("fp16", False, True)
    with pytest.raises(UserError, match="no fast INT8"):
        precision_flags("int8", True, False)


def test_profile_shapes():
    shapes = profile_shapes(INPUTS, BatchProfile(1, 4, 8))
    assert shapes["obs"] == ((1, 3, 40, 40), (4, 3, 40, 40), (8, 3, 40, 40))
    assert shapes["mission"] == ((1, 8), (4, 8), (8, 8))
    fixed = [{"name": "obs", "shape": [1, 3, 40, 40]}]
    assert profile_shapes(fixed, BatchProfile(1, 1, 1))["obs"][2] == (1, 3, 40, 40)
    with pytest.raises(UserError, match="fixed batch of 1"):
        profile_shapes(fixed, BatchProfile(1, 4, 8))
    with pytest.raises(UserError, match="dynamic non-batch"):
        profile_shapes([{"name": "obs", "shape": [-1, 3, -1, 40]}], BatchProfile(1, 1, 1))


# ------------------------------------------------------------------------------------------- sidecar
def test_sidecar_is_the_onnx_manifest_plus_the_build(tmp_path):
    opts = _opts(tmp_path, precision="fp16", batch=BatchProfile(1, 2, 4), workspace_mb=256)
    side = sidecar_manifest(_manifest(), opts, "", "8.5.2.2", "Orin", (8, 7), "ab" * 32, "cd" * 32)
    write_sidecar(opts.out, side)
    back = read_sidecar(opts.out)
    assert back.precision == "fp16" and back.task == "minigrid-fetch" and back.inputs == INPUTS
    assert back.source == "student.onnx" and back.source_sha256 == "cd" * 32
    assert back.extra == {"role": "student", "tensorrt": "8.5.2.2", "device": "Orin", "compute_capability": "8.7",
                          "plan_sha256": "ab" * 32, "batch": [1, 2, 4], "workspace_mb": 256}
    assert json.loads((tmp_path / "student.plan.json").read_text())["format"] == "edge-digr/manifest@1"
    int8 = sidecar_manifest(_manifest("int8"), replace(opts, precision="int8"), "qdq", "10.3.0", "Orin", (8, 7),
                            "ab" * 32, "cd" * 32)
    assert int8.precision == "int8" and int8.extra["int8"] == "qdq"


# --------------------------------------------------------------------------------------------- CLI
@pytest.mark.skipif(HAS_TRT, reason="checks the install hint shown where tensorrt is missing")
def test_build_without_tensorrt_gives_the_install_hint(tmp_path):
    from test_calibration_quantize import toy_fused

    toy_fused(tmp_path / "toy.onnx")
    res = CliRunner().invoke(main, ["build", str(tmp_path / "toy.onnx"), "--out", str(tmp_path / "toy.plan")])
    assert res.exit_code == 2 and "pip install 'edge-digr[trt]'" in res.output and res.output.count("\n") == 1
    assert not (tmp_path / "toy.plan").exists()


@pytest.mark.parametrize("args, message", [
    (["--batch-range", "4,2,1"], "--batch-range"),
    (["--precision", "int8"], "needs --calib-cache"),
])
def test_build_refuses_bad_arguments_before_touching_tensorrt(tmp_path, args, message):
    from test_calibration_quantize import toy_fused

    toy_fused(tmp_path / "toy.onnx")
    res = CliRunner().invoke(main, ["build", str(tmp_path / "toy.onnx"), "--out", str(tmp_path / "t.plan"), *args])
    assert res.exit_code == 2 and message in res.output


def test_build_missing_onnx(tmp_path):
    res = CliRunner().invoke(main, ["build", str(tmp_path / "none.onnx"), "--out", str(tmp_path / "t.plan")])
    assert res.exit_code == 2 and res.output.startswith("error: ") and "does not exist" in res.output


# ------------------------------------------------------------------------------ TensorRT (device only)
@needs_trt
def test_build_and_calibrate_with_tensorrt(tmp_path):
    from test_calibration_quantize import toy_frames, toy_fused

    from edge_digr.core.frames import save_frames

    toy_fused(tmp_path / "toy.onnx")
    save_frames(tmp_path / "frames.npz", toy_frames(64))
    runner = CliRunner()
    for precision, extra in [("fp32", []), ("fp16", []),
                             ("int8", ["--calib-cache", str(tmp_path / "c.cache"), "--calib-data",
                                       str(tmp_path / "frames.npz")])]:
        plan = tmp_path / f"toy.{precision}.plan"
        res = runner.invoke(main, ["build", str(tmp_path / "toy.onnx"), "--precision", precision, "--out", str(plan),
                                   "--batch-range", "1,4,8", "--timing-cache", str(tmp_path / "timing.cache"), *extra])
        assert res.exit_code == 0, res.output
        side = read_sidecar(plan)
        assert side.precision == precision and side.extra["batch"] == [1, 4, 8]
        from edge_digr.core.fileio import sha256_file

        assert side.extra["plan_sha256"] == sha256_file(plan)
    assert parse_cache_header((tmp_path / "c.cache").read_bytes()).algorithm == "EntropyCalibration2"
    assert (tmp_path / "timing.cache").stat().st_size > 0
    # second INT8 build re-reads the cache: no frames needed
    res = runner.invoke(main, ["build", str(tmp_path / "toy.onnx"), "--precision", "int8", "--out",
                               str(tmp_path / "again.plan"), "--calib-cache", str(tmp_path / "c.cache")])
    assert res.exit_code == 0 and "from the calibration cache" in res.output
