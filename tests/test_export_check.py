"""`edge-digr check`: TensorRT support tables with restrictions, parity against autograd, exit codes."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edge_digr.checkpoint import save_checkpoint
from edge_digr.cli import main
from edge_digr.export import export_checkpoint
from edge_digr.export.check import check_onnx
from edge_digr.export.trt_support import TARGETS, check_model
from edge_digr.core.manifest import METADATA_KEY, Manifest
from edge_digr.policies import PixelPolicy, PolicyConfig
from edge_digr.core.tasks import TASKS, get_task

FLOAT = TensorProto.FLOAT


def model_of(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def vi(name, dtype=FLOAT, shape=(1, 2, 4, 4)):
    return helper.make_tensor_value_info(name, dtype, shape)


def reasons(model, target):
    return [v.reason for v in check_model(model, target)]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_maxunpool_is_unsupported(target) -> None:
    node = helper.make_node("MaxUnpool", ["x", "i"], ["y"], name="unpool", kernel_shape=[2, 2])
    model = model_of([node], [vi("x"), vi("i", TensorProto.INT64)], [vi("y", shape=(1, 2, 8, 8))])
    assert any("unsupported" in r for r in reasons(model, target))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_onehot_is_supported_from_trt85(target) -> None:
    depth = numpy_helper.from_array(np.array(5, dtype=np.int64), "depth")
    values = numpy_helper.from_array(np.array([0, 1], dtype=np.float32), "values")
    node = helper.make_node("OneHot", ["idx", "depth", "values"], ["y"], name="onehot")
    model = model_of([node], [vi("idx", TensorProto.INT32, (3,))], [vi("y", shape=(3, 5))], [depth, values])
    assert reasons(model, target) == []


def test_reducemax_axes_must_be_an_initializer_in_trt10() -> None:
    shape = helper.make_node("Shape", ["x"], ["s"], name="shape", start=1, end=2)  # a computed axes tensor
    axes_node = helper.make_node("ReduceMax", ["x", "s"], ["y"], name="reduce", keepdims=0)
    computed = model_of([shape, axes_node], [vi("x")], [vi("y", shape=None)], opset=18)
    assert "`axes` must be an initializer" in reasons(computed, "trt10")
    assert any("opset 18 outside" in r for r in reasons(computed, "trt8.5"))
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    constant = model_of([helper.make_node("ReduceMax", ["x", "axes"], ["y"], name="reduce", keepdims=0)],
                        [vi("x")], [vi("y", shape=None)], [axes], opset=18)
    assert reasons(constant, "trt10") == []


def test_convtranspose_negative_prepadding_is_refused() -> None:
    w = numpy_helper.from_array(np.ones((2, 2, 3, 3), dtype=np.float32), "w")
    # stride 1, kernel 3 on 4x4 gives 6x6 un-padded; asking for 9x9 needs negative padding
    bad = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="deconv", output_shape=[9, 9])
    good = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="deconv", strides=[2, 2], pads=[1, 1, 1, 1],
                            output_padding=[1, 1])
    for target in TARGETS:
        assert any("negative pre-padding" in r for r in
                   reasons(model_of([bad], [vi("x")], [vi("y", shape=None)], [w]), target))
        assert reasons(model_of([good], [vi("x")], [vi("y", shape=None)], [w]), target) == []


def test_types_follow_the_documented_columns() -> None:
    node = helper.make_node("ArgMax", ["x"], ["y"], name="argmax", axis=1)
    model = model_of([node], [vi("x", TensorProto.INT32, (2, 5))], [vi("y", TensorProto.INT64, (2, 1))])
    assert any("type INT32 not supported" in r for r in reasons(model, "trt8.5"))
    assert reasons(model, "trt10") == []  # 10.x lists INT32 for ArgMax


def test_slice_axes_must_be_an_initializer_in_trt85() -> None:
    starts = numpy_helper.from_array(np.array([0], dtype=np.int64), "starts")
    ends = numpy_helper.from_array(np.array([1], dtype=np.int64), "ends")
    axes = helper.make_node("Shape", ["x"], ["axes"], name="shape", start=0, end=1)
    node = helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"], name="slice")
    model = model_of([axes, node], [vi("x")], [vi("y", shape=None)], [starts, ends])
    assert "`axes` must be an initializer" in reasons(model, "trt8.5")


def _student(tmp_path, task="atari-breakout", **kw):
    torch.manual_seed(0)
    policy = PixelPolicy(PolicyConfig.for_task(get_task(task), "edge")).eval()
    save_checkpoint(tmp_path / "student.pt", policy, task, "student")
    export_checkpoint(tmp_path / "student.pt", tmp_path / "student.onnx", **kw)
    return tmp_path / "student.onnx"


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_exported_task_graphs_pass_both_targets(task, target, tmp_path) -> None:
    report = check_onnx(_student(tmp_path, task), target=target)
    assert report.ok, report.lines()
    outputs = {p.output for p in report.parity}
    assert "saliency" in outputs and outputs & {"logits", "action"}
    assert all(p.max_rel <= 1e-4 for p in report.parity)


def test_parity_catches_a_wrong_gradient_path(tmp_path) -> None:
    path = _student(tmp_path, separate_backward_weights=True)
    model = onnx.load(str(path))
    init = next(i for i in model.graph.initializer if i.name.endswith(".vjp"))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, init.name))
    onnx.save(model, str(path))
    report = check_onnx(path)
    assert not report.ok
    failed = [v for v in report.violations if v.startswith("parity")]
    assert failed and all("saliency" in v for v in failed)  # the forward head is untouched


def test_parity_runs_on_the_given_frames(tmp_path) -> None:
    from edge_digr.core.errors import UserError
    from edge_digr.export.check import parity

    path = _student(tmp_path)
    frames = np.random.default_rng(1).integers(0, 40, (4, 4, 84, 84)).astype(np.uint8)  # dim, like Breakout
    np.savez(tmp_path / "frames.npz", obs=frames)
    report = check_onnx(path, data=tmp_path / "frames.npz")
    assert report.ok, report.lines()
    # The same graph on other frames gives other errors: the run took the file's frames, not random pixels.
    assert [p.max_abs for p in report.parity] != [p.max_abs for p in check_onnx(path).parity]
    np.savez(tmp_path / "two.npz", obs=frames[:2])
    with pytest.raises(UserError, match="fewer than the 3 frames"):
        parity(path, tmp_path / "student.pt", data=tmp_path / "two.npz")
    np.savez(tmp_path / "other.npz", frame=frames)
    with pytest.raises(UserError, match="lacks the array"):
        parity(path, tmp_path / "student.pt", data=tmp_path / "other.npz")


def test_missing_manifest_is_a_violation(tmp_path) -> None:
    path = _student(tmp_path)
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save(model, str(path))
    report = check_onnx(path, checkpoint=tmp_path / "student.pt")
    assert any("no edge-digr manifest" in v for v in report.violations)
    assert report.parity  # an explicit checkpoint still gets the parity run


def test_quantized_precision_reports_parity_without_enforcing_it(tmp_path) -> None:
    path = _student(tmp_path)
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    manifest = Manifest.from_json(props[METADATA_KEY])
    manifest.precision = "int8"
    helper.set_model_props(model, {METADATA_KEY: manifest.to_json()})
    onnx.save(model, str(path))
    report = check_onnx(path)
    assert report.ok and report.parity and any("int8" in n for n in report.notes)


def test_cli_exit_codes(tmp_path) -> None:
    runner = CliRunner()
    path = _student(tmp_path)
    ok = runner.invoke(main, ["check", str(path), "--target", "trt10"])
    assert ok.exit_code == 0, ok.output
    assert "parity saliency: max abs err" in ok.output and "OK: no violations" in ok.output

    other = tmp_path / "other"
    other.mkdir()
    save_checkpoint(other / "x.pt", PixelPolicy(PolicyConfig.for_task(get_task("atari-breakout"), "edge")),
                    "atari-breakout", "student")
    mismatch = runner.invoke(main, ["check", str(path), "--policy", str(other / "x.pt")])
    assert mismatch.exit_code == 1 and "FAILED: 1 violation(s)" in mismatch.output

    missing = runner.invoke(main, ["check", str(tmp_path / "nope.onnx")])
    assert missing.exit_code == 2 and missing.output.strip().startswith("error:")
    assert len(missing.output.strip().splitlines()) == 1

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    bad = runner.invoke(main, ["check", str(garbage)])
    assert bad.exit_code == 2 and "not a readable ONNX model" in bad.output


def test_cli_export_writes_a_checkable_graph(tmp_path) -> None:
    torch.manual_seed(0)
    policy = PixelPolicy(PolicyConfig.for_task(get_task("minigrid-fetch"), "edge")).eval()
    save_checkpoint(tmp_path / "s.pt", policy, "minigrid-fetch", "student")
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(tmp_path / "s.pt"), "--out", str(tmp_path / "s.onnx")])
    assert result.exit_code == 0, result.output
    assert "outputs logits, saliency" in result.output
    assert runner.invoke(main, ["check", str(tmp_path / "s.onnx")]).exit_code == 0
    bad = runner.invoke(main, ["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.onnx")])
    assert bad.exit_code == 2 and "does not exist" in bad.output


def test_sb3_zip_exports_and_checks(tmp_path) -> None:
    """An SB3 archive of edge-digr's extractor: exported with --task, parity found from the manifest."""
    import io
    import zipfile

    torch.manual_seed(0)
    policy = PixelPolicy(PolicyConfig.for_task(get_task("car-racing"))).eval()
    state = {("features_extractor." + k if k.startswith("trunk.") else k.replace("head.", "action_net.")): v
             for k, v in policy.state_dict().items()}
    blob = io.BytesIO()
    torch.save(state, blob)
    with zipfile.ZipFile(tmp_path / "ppo.zip", "w") as archive:
        archive.writestr("policy.pth", blob.getvalue())
    runner = CliRunner()
    no_task = runner.invoke(main, ["export", str(tmp_path / "ppo.zip"), "--out", str(tmp_path / "p.onnx")])
    assert no_task.exit_code == 2 and "--task" in no_task.output
    ok = runner.invoke(main, ["export", str(tmp_path / "ppo.zip"), "--task", "car-racing",
                              "--out", str(tmp_path / "p.onnx")])
    assert ok.exit_code == 0, ok.output
    report = check_onnx(tmp_path / "p.onnx")
    assert report.ok and {p.output for p in report.parity} == {"action", "saliency"}


def test_derived_graph_finds_the_checkpoint_through_its_source_onnx(tmp_path) -> None:
    """An INT8/FP16 copy names the fp32 ONNX as its source; check follows it to the checkpoint."""
    from edge_digr.core.fileio import sha256_file

    path = _student(tmp_path)
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    manifest = Manifest.from_json(props[METADATA_KEY])
    manifest.source, manifest.source_sha256, manifest.precision = path.name, sha256_file(path), "fp16"
    helper.set_model_props(model, {METADATA_KEY: manifest.to_json()})
    onnx.save(model, str(tmp_path / "derived.onnx"))
    report = check_onnx(tmp_path / "derived.onnx")
    assert report.ok and {p.output for p in report.parity} == {"logits", "saliency"}
    # an explicit checkpoint is verified against the checkpoint hash found through the chain
    assert check_onnx(tmp_path / "derived.onnx", checkpoint=tmp_path / "student.pt").ok
