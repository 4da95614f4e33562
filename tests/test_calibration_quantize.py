"""INT8 QDQ quantization of a fused logits+saliency graph, and `edge-digr calibrate` end to end.

The fused graph here is built by hand with onnx.helper (torch-free, tiny): forward Conv-ReLU-Gemm-ReLU-Gemm
and its vector-Jacobian product under the "/vjp/" scope, as the exporter lays it out. `toy_fused` is also
used by tests/test_selftest.py.
"""
import json

import numpy as np
import pytest
from click.testing import CliRunner

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edge_digr.calibration.fidelity import collect_outputs, compare_outputs  # noqa: E402
from edge_digr.core.frames import Frames, save_frames  # noqa: E402
from edge_digr.calibration.quantize import (QuantizeConfig, forward_weighted_nodes, is_quantized,  # noqa: E402
                                          quantize_qdq)
from edge_digr.cli import main  # noqa: E402
from edge_digr.core.errors import UserError  # noqa: E402
from edge_digr.core.fileio import sha256_file  # noqa: E402
from edge_digr.core.manifest import METADATA_KEY, Manifest, read_onnx_manifest  # noqa: E402
from edge_digr.runtime.runners import OnnxRuntimeRunner  # noqa: E402


def toy_fused(path, c=3, hw=8, actions=3, hidden=16, seed=0, shared_weights=False, manifest=True):
    """A fused graph: obs (N,c,hw,hw) -> logits (N,A) and saliency |d log pi(a*|x) / d obs| max over c."""
    rng = np.random.default_rng(seed)
    k = 4 * (hw - 2) ** 2
    w = {"W1": rng.normal(0, 0.5, (4, c, 3, 3)), "B1": rng.normal(0, 0.1, 4),
         "W2": rng.normal(0, k ** -0.5, (hidden, k)), "B2": rng.normal(0, 0.1, hidden),
         "W3": rng.normal(0, hidden ** -0.5, (actions, hidden)), "B3": np.zeros(actions)}
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in w.items()]
    # The exporter gives the backward its own weight copies (separate_backward_weights) unless told not to.
    back = {n: n if shared_weights else n + "_vjp" for n in ("W1", "W2", "W3")}
    if not shared_weights:
        inits += [numpy_helper.from_array(w[n].astype(np.float32), n + "_vjp") for n in ("W1", "W2", "W3")]
    inits += [numpy_helper.from_array(np.array(v, dtype=t), n) for n, v, t in [
        ("inv255", 1 / 255, np.float32), ("zero", 0, np.float32), ("onehot_values", [0, 1], np.float32),
        ("depth", actions, np.int64), ("grad_shape", [-1, 4, hw - 2, hw - 2], np.int64)]]
    node = helper.make_node
    nodes = [
        node("Mul", ["obs", "inv255"], ["x"], name="/trunk/scale"),
        node("Conv", ["x", "W1", "B1"], ["z1"], name="/trunk/conv"),
        node("Relu", ["z1"], ["r1"], name="/trunk/relu1"),
        node("Flatten", ["r1"], ["f"], name="/trunk/flatten"),
        node("Gemm", ["f", "W2", "B2"], ["z2"], transB=1, name="/trunk/fc"),
        node("Relu", ["z2"], ["r2"], name="/trunk/relu2"),
        node("Gemm", ["r2", "W3", "B3"], ["logits"], transB=1, name="/head"),
        # d log softmax(l)[a*] / dl = onehot(a*) - softmax(l)
        node("Softmax", ["logits"], ["p"], axis=1, name="/vjp/softmax"),
        node("ArgMax", ["logits"], ["greedy"], axis=1, keepdims=0, name="/vjp/argmax"),
        node("OneHot", ["greedy", "depth", "onehot_values"], ["onehot"], axis=-1, name="/vjp/onehot"),
        node("Sub", ["onehot", "p"], ["g"], name="/vjp/dlogits"),
        node("MatMul", ["g", back["W3"]], ["dr2"], name="/vjp/head"),
        node("Greater", ["z2", "zero"], ["m2b"], name="/vjp/relu2/gt"),
        node("Cast", ["m2b"], ["m2"], to=TensorProto.FLOAT, name="/vjp/relu2/cast"),
        node("Mul", ["dr2", "m2"], ["dz2"], name="/vjp/relu2"),
        node("MatMul", ["dz2", back["W2"]], ["df"], name="/vjp/fc"),
        node("Reshape", ["df", "grad_shape"], ["dr1"], name="/vjp/flatten"),
        node("Greater", ["z1", "zero"], ["m1b"], name="/vjp/relu1/gt"),
        node("Cast", ["m1b"], ["m1"], to=TensorProto.FLOAT, name="/vjp/relu1/cast"),
        node("Mul", ["dr1", "m1"], ["dz1"], name="/vjp/relu1"),
        node("ConvTranspose", ["dz1", back["W1"]], ["dx"], name="/vjp/conv"),
        node("Mul", ["dx", "inv255"], ["dobs"], name="/vjp/scale"),
        node("Abs", ["dobs"], ["adobs"], name="/vjp/abs"),
        node("ReduceMax", ["adobs"], ["saliency"], axes=[1], keepdims=0, name="/vjp/reduce"),
    ]
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["N", c, hw, hw])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", actions]),
         helper.make_tensor_value_info("saliency", TensorProto.FLOAT, ["N", hw, hw])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if manifest:
        man = Manifest(task="toy", inputs=[{"name": "obs", "shape": [-1, c, hw, hw], "dtype": "float32"}],
                       outputs=[{"name": "logits", "shape": [-1, actions]},
                                {"name": "saliency", "shape": [-1, hw, hw]}],
                       action={"kind": "discrete", "n": actions, "names": [f"a{i}" for i in range(actions)],
                               "low": None, "high": None},
                       saliency_target="log_softmax_greedy")
        model.metadata_props.add(key=METADATA_KEY, value=man.to_json())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def toy_frames(n=120, c=3, hw=8, seed=0):
    return Frames({"obs": np.random.default_rng(seed).uniform(0, 255, (n, c, hw, hw)).astype(np.float32)})


def _has_backward_nodes_api():
    try:
        from edge_digr.export import backward_nodes  # noqa: F401
    except (ImportError, AttributeError):
        return False
    return True


needs_backward_nodes = pytest.mark.skipif(not _has_backward_nodes_api(),
                                          reason="edge_digr.export.backward_nodes is not available")


def _initializer(model, name):
    return next((numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name), None)


def test_qdq_model_is_symmetric_int8_with_fp32_bias_and_an_int8_manifest(tmp_path):
    src = toy_fused(tmp_path / "toy.onnx")
    frames = toy_frames()
    result = quantize_qdq(src, frames, tmp_path / "toy.int8.onnx", QuantizeConfig(method="minmax"))
    assert result.per_channel and not result.notes and result.dequantize_nodes > 0
    model = onnx.load(str(tmp_path / "toy.int8.onnx"))
    assert is_quantized(model)
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero_point = _initializer(model, n.input[2])
            assert zero_point.dtype == np.int8 and not zero_point.any(), n.name  # TensorRT: symmetric int8
        if n.op_type in ("Conv", "Gemm"):
            assert n.input[2] in ("B1", "B2", "B3")  # biases stay fp32: no INT32 DequantizeLinear
    # per-channel weight scales on the conv (one per output channel)
    conv_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
               and _initializer(model, n.input[1]) is not None and _initializer(model, n.input[1]).size == 4]
    assert conv_dq
    # TensorRT's Q/DQ placement: inputs of weighted ops are quantized, their outputs are not, so the ReLU
    # masks the backward reads and the logits stay fp32
    producers = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in producers:
            assert producers[n.input[0]].op_type not in ("Conv", "Gemm", "MatMul", "ConvTranspose"), n.name
        if n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
            assert producers[n.input[0]].op_type == "DequantizeLinear", n.name
    assert {producers[n.input[0]].op_type for n in model.graph.node if n.op_type == "Greater"} == {"Conv", "Gemm"}
    # graph outputs stay fp32, and the saliency target reads those very logits (same action as reported)
    assert producers["logits"].op_type == "Gemm" and producers["saliency"].op_type == "ReduceMax"
    assert {n.op_type for n in model.graph.node if "logits" in n.input} == {"Softmax", "ArgMax"}
    man = read_onnx_manifest(tmp_path / "toy.int8.onnx")
    assert man.precision == "int8" and man.source == "toy.onnx" and man.source_sha256 == sha256_file(src)
    assert man.extra["quantization"]["per_channel"] is True


def test_int8_outputs_track_fp32_on_held_out_frames(tmp_path):
    src = toy_fused(tmp_path / "toy.onnx")
    calib, held = toy_frames(200).split(0.25)
    quantize_qdq(src, calib, tmp_path / "q.onnx", QuantizeConfig())
    ref = collect_outputs(OnnxRuntimeRunner(src), held)
    fid = compare_outputs(ref, collect_outputs(OnnxRuntimeRunner(tmp_path / "q.onnx"), held), continuous=False)
    assert fid.action_agreement >= 0.9 and fid.saliency_pearson >= 0.9
    assert 0 < fid.max_logit_error < 0.5  # quantized: not identical, but close


def test_shared_forward_backward_weights_fall_back_to_per_tensor(tmp_path):
    src = toy_fused(tmp_path / "shared.onnx", shared_weights=True)
    result = quantize_qdq(src, toy_frames(), tmp_path / "q.onnx", QuantizeConfig(per_channel=True))
    assert not result.per_channel and "per tensor" in result.notes[0]
    out = OnnxRuntimeRunner(tmp_path / "q.onnx").infer(toy_frames(4).arrays)
    assert np.isfinite(out["saliency"]).all()


@needs_backward_nodes
def test_keep_backward_leaves_the_gradient_path_unquantized(tmp_path):
    src = toy_fused(tmp_path / "toy.onnx")
    result = quantize_qdq(src, toy_frames(), tmp_path / "q.onnx", QuantizeConfig(keep_backward=True))
    model = onnx.load(str(tmp_path / "q.onnx"))
    producers = {o: n for n in model.graph.node for o in n.output}
    vjp = [n for n in model.graph.node if n.name.startswith("/vjp/")]
    assert result.excluded_nodes == len(vjp) > 0
    fp32_model = onnx.load(str(src))
    forward_inputs = {i for n in fp32_model.graph.node if not n.name.startswith("/vjp/") for i in n.input}
    backward_weights = {i.name for i in fp32_model.graph.initializer} - forward_inputs
    assert backward_weights >= {"W1_vjp", "W2_vjp", "W3_vjp"}

    def source(tensor):  # the tensor a DequantizeLinear <- QuantizeLinear pair carries
        q = producers[producers[tensor].input[0]]
        return q.input[0]

    for n in vjp:
        for i in n.input:
            if i in producers and producers[i].op_type == "DequantizeLinear":
                # Only what the forward pass shares with the backward (ReLU pre-activations, the 1/255
                # constant) is INT8, as it is in the forward; gradients and backward weights stay fp32.
                src = source(i)
                assert src not in backward_weights, n.name
                assert src not in producers or not producers[src].name.startswith("/vjp/"), n.name
    assert any(n.op_type == "DequantizeLinear" for n in model.graph.node)  # the forward is still INT8


def test_refusals(tmp_path):
    src = toy_fused(tmp_path / "toy.onnx")
    quantize_qdq(src, toy_frames(), tmp_path / "q.onnx")
    with pytest.raises(UserError, match="already quantized"):
        quantize_qdq(tmp_path / "q.onnx", toy_frames(), tmp_path / "qq.onnx")
    bare = toy_fused(tmp_path / "bare.onnx", manifest=False)
    with pytest.raises(UserError, match="no edge-digr manifest"):
        quantize_qdq(bare, toy_frames(), tmp_path / "x.onnx")
    with pytest.raises(UserError, match="unknown calibration method"):
        quantize_qdq(src, toy_frames(), tmp_path / "x.onnx", QuantizeConfig(method="magic"))
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a readable ONNX"):
        quantize_qdq(tmp_path / "junk.onnx", toy_frames(), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def _calibrate(tmp_path, *extra):
    toy_fused(tmp_path / "toy.onnx")
    save_frames(tmp_path / "frames.npz", toy_frames(150))
    return CliRunner().invoke(main, ["calibrate", str(tmp_path / "toy.onnx"), "--data", str(tmp_path / "frames.npz"),
                                     "--out", str(tmp_path / "toy.int8.onnx"), *extra])


def test_calibrate_command_writes_model_report_and_table(tmp_path):
    res = _calibrate(tmp_path, "--keep-backward", "never", "--latency-runs", "5", "--holdout", "0.2")
    assert res.exit_code == 0, res.output
    assert "sal r" in res.output and "CPU latency" in res.output
    report = json.loads((tmp_path / "toy.int8.fidelity.json").read_text())
    assert report["calibration_frames"] == 120 and report["held_out_frames"] == 30
    assert len(report["attempts"]) == 1 and report["final"]["label"] == "int8"
    assert 0 <= report["final"]["action_agreement"] <= 1
    assert report["latency_ms"]["int8"]["calls"] == 5 and report["latency_ms"]["int8_over_fp32_p50"] > 0
    assert read_onnx_manifest(tmp_path / "toy.int8.onnx").precision == "int8"


@needs_backward_nodes
def test_calibrate_auto_keeps_backward_in_fp32_below_threshold(tmp_path):
    # A threshold no quantized saliency can reach forces the second attempt.
    res = _calibrate(tmp_path, "--saliency-threshold", "1.01", "--latency-runs", "0", "--fp32-layers", "none")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "toy.int8.fidelity.json").read_text())
    assert [a["quantization"]["keep_backward"] for a in report["attempts"]] == [False, True]
    assert report["final"]["label"] == "int8 (backward fp32)" and "warning" in res.output
    assert read_onnx_manifest(tmp_path / "toy.int8.onnx").extra["quantization"]["keep_backward"] is True


@needs_backward_nodes
def test_calibrate_auto_keeps_the_most_sensitive_forward_layer_in_fp32(tmp_path):
    res = _calibrate(tmp_path, "--saliency-threshold", "1.01", "--latency-runs", "0", "--max-fp32-layers", "1")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "toy.int8.fidelity.json").read_text())
    forward = forward_weighted_nodes(onnx.load(str(tmp_path / "toy.onnx")))
    trials = report["attempts"][2:]  # after int8 and backward-fp32: one trial per forward layer
    assert [t["quantization"]["fp32_layers"] for t in trials] == [[name] for name in forward]
    best = max(trials, key=lambda t: t["fidelity"]["saliency_pearson"])
    kept = best["quantization"]["fp32_layers"]
    if best["fidelity"]["saliency_pearson"] > report["attempts"][1]["fidelity"]["saliency_pearson"]:
        written = read_onnx_manifest(tmp_path / "toy.int8.onnx").extra["quantization"]
        assert written["fp32_layers"] == kept  # the written model is the best trial, not the last one tried
        assert report["final"]["label"] == f"int8 (backward, {kept[0]} fp32)"
        assert report["final"]["saliency_pearson"] == best["fidelity"]["saliency_pearson"]
        model = onnx.load(str(tmp_path / "toy.int8.onnx"))
        producers = {o: n.op_type for n in model.graph.node for o in n.output}
        node = next(n for n in model.graph.node if n.name == kept[0])
        assert all(producers.get(i) != "DequantizeLinear" for i in node.input)  # left unquantized
    else:  # no single layer helped: the backward-fp32 model is kept
        assert report["final"]["label"] == "int8 (backward fp32)"


def test_calibrate_unknown_fp32_layer_is_one_line_error(tmp_path):
    res = _calibrate(tmp_path, "--fp32-layers", "/model/nope/Conv", "--latency-runs", "0")
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert "--fp32-layers names no forward layer" in res.output and "choose from" in res.output


def test_calibrate_bad_input_is_one_line_error(tmp_path):
    toy_fused(tmp_path / "toy.onnx")
    res = CliRunner().invoke(main, ["calibrate", str(tmp_path / "toy.onnx"), "--data", str(tmp_path / "none.npz"),
                                    "--out", str(tmp_path / "o.onnx")])
    assert res.exit_code == 2 and res.output.startswith("error: ") and res.output.count("\n") == 1
    np.savez(tmp_path / "wrong.npz", obs=np.zeros((10, 3, 9, 9), np.float32))
    res = CliRunner().invoke(main, ["calibrate", str(tmp_path / "toy.onnx"), "--data", str(tmp_path / "wrong.npz"),
                                    "--out", str(tmp_path / "o.onnx")])
    assert res.exit_code == 2 and "has shape" in res.output
