"""Fused ONNX export of the task policies: contract names, dynamic batch, manifest, backward scope, refusals."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edge_digr.checkpoint import save_checkpoint
from edge_digr.export import (UnsupportedOpError, backward_nodes, export_checkpoint, export_forward,
                              export_fused)
from edge_digr.export.fused import example_inputs_for
from edge_digr.core.manifest import METADATA_KEY, read_onnx_manifest
from edge_digr.policies import PixelPolicy, PolicyConfig
from edge_digr.runtime.runners import session_options
from edge_digr.saliency import input_gradient, reduce_channels
from edge_digr.core.tasks import TASKS, get_task

REL_TOL = 1e-4


def policy_for(task: str, arch: str = "edge", seed: int = 0) -> PixelPolicy:
    torch.manual_seed(seed)
    return PixelPolicy(PolicyConfig.for_task(get_task(task), arch)).eval()


def run(path, inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("task", ["minigrid-fetch", "atari-breakout", "car-racing"])
def test_task_policy_batches_1_3_8_through_one_dynamic_graph(task: str, tmp_path) -> None:
    policy = policy_for(task)
    path = tmp_path / "fused.onnx"
    export_fused(policy, example_inputs_for(task), path, raw_grad=True)
    head = "action" if policy.cfg.continuous else "logits"
    for batch in (1, 3, 8):
        inputs = example_inputs_for(task, batch=batch, seed=batch)
        got = run(path, inputs)
        grad = input_gradient(policy, inputs)
        with torch.no_grad():
            np.testing.assert_allclose(got[head], policy(*inputs).numpy(), rtol=1e-4, atol=1e-5)
        ref = reduce_channels(grad).numpy()
        assert got["saliency"].shape == ref.shape
        assert rel_err(got["saliency"], ref) <= REL_TOL
        assert rel_err(got["input_grad"], grad.numpy()) <= REL_TOL


def test_graph_names_follow_the_contract(tmp_path) -> None:
    fetch = export_fused(policy_for("minigrid-fetch"), example_inputs_for("minigrid-fetch"), tmp_path / "a.onnx")
    race = export_fused(policy_for("car-racing"), example_inputs_for("car-racing"), tmp_path / "b.onnx")
    assert [i.name for i in fetch.graph.input if i.name in ("obs", "mission")] == ["obs", "mission"]
    assert [o.name for o in fetch.graph.output] == ["logits", "saliency"]
    assert [o.name for o in race.graph.output] == ["action", "saliency"]
    sal = race.graph.output[1].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in sal] == ["batch", 3, 96, 96]
    assert fetch.opset_import[0].version == 17


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("arch", ["teacher", "edge"])
def test_export_checkpoint_writes_manifest_for_every_task(task: str, arch: str, tmp_path) -> None:
    ckpt = tmp_path / f"{task}.pt"
    save_checkpoint(ckpt, policy_for(task, arch), task, "student")
    manifest = export_checkpoint(ckpt, tmp_path / "m.onnx")
    stored = read_onnx_manifest(tmp_path / "m.onnx")
    assert stored == manifest and stored.task == task and stored.source == ckpt.name
    assert len(stored.source_sha256) == 64
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == stored.input_names
    assert [o.name for o in session.get_outputs()] == stored.output_names


def test_backward_nodes_are_the_gradient_path(tmp_path) -> None:
    model = export_fused(policy_for("atari-breakout"), example_inputs_for("atari-breakout"), tmp_path / "f.onnx")
    names = set(backward_nodes(model))
    ops = {n.name: n.op_type for n in model.graph.node}
    assert {ops[n] for n in names} >= {"Conv", "MatMul", "Softmax", "ArgMax", "ReduceMax", "Abs"}
    forward = {ops[n] for n in ops if n not in names}
    assert "ConvTranspose" not in forward and "Softmax" not in forward
    # every ConvTranspose/MatMul in the graph is a backward node
    assert all(n in names for n, op in ops.items() if op in ("ConvTranspose", "MatMul"))
    assert backward_nodes(str(tmp_path / "f.onnx")) == sorted(names, key=list(ops).index)


def test_separate_backward_weights_shares_no_initializer(tmp_path) -> None:
    policy = policy_for("atari-breakout")
    inputs = example_inputs_for("atari-breakout", batch=2)
    shared = export_fused(policy, inputs, tmp_path / "shared.onnx")
    split = export_fused(policy, inputs, tmp_path / "split.onnx", separate_backward_weights=True)

    def crossing(model: onnx.ModelProto) -> set:
        inits = {i.name for i in model.graph.initializer}
        back = set(backward_nodes(model))
        users = {}
        for n in model.graph.node:
            for i in n.input:
                if i in inits:
                    users.setdefault(i, set()).add(n.name in back)
        return {i for i, kinds in users.items() if kinds == {True, False}}

    assert crossing(shared)  # the default shares conv/linear weights between the two paths
    assert not crossing(split)
    a, b = run(tmp_path / "shared.onnx", inputs), run(tmp_path / "split.onnx", inputs)
    np.testing.assert_array_equal(a["saliency"], b["saliency"])


@pytest.mark.parametrize("task, k, crops", [("atari-breakout", 1, 0), ("car-racing", 3, 1)])
def test_batch1_graph_form(task: str, k: int, crops: int, tmp_path) -> None:
    """Issue 17: each Linear weight is a single initializer, read by the forward Gemm and by K one-row backward
    MatMuls (one per saliency target), so a batch-1 session without prepacking reads one copy of it; crops are
    single Slices; the graph stays exact under the runner's session options at batch 1 and 3."""
    policy = policy_for(task, "teacher")
    model = export_fused(policy, example_inputs_for(task), tmp_path / "f.onnx")
    inits = {i.name for i in model.graph.initializer}
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    assert len(gemms) == 2  # the hidden layer and the head
    for gemm in gemms:
        readers = [n for n in model.graph.node if gemm.input[1] in n.input]
        assert gemm.input[1] in inits and sorted(n.op_type for n in readers) == ["Gemm"] + ["MatMul"] * k
    # the crop after each strided transposed convolution is one Slice over both spatial axes (merge_slices)
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    slices = [n for n in model.graph.node if n.op_type == "Slice"]
    assert len(slices) == crops and all(sorted(consts[n.input[3]]) == [2, 3] for n in slices)
    for batch in (1, 3):
        inputs = example_inputs_for(task, batch=batch, seed=batch)
        session = ort.InferenceSession(str(tmp_path / "f.onnx"), session_options(batch=batch),
                                       providers=["CPUExecutionProvider"])
        _, saliency = session.run(None, {"obs": inputs[0].numpy()})
        ref = reduce_channels(input_gradient(policy, inputs)).numpy()
        assert rel_err(saliency, ref) <= REL_TOL


def test_export_forward_is_the_baseline_graph(tmp_path) -> None:
    policy = policy_for("minigrid-fetch")
    model = export_forward(policy, example_inputs_for("minigrid-fetch"), tmp_path / "fwd.onnx")
    assert [o.name for o in model.graph.output] == ["logits"]
    assert not backward_nodes(model)
    inputs = example_inputs_for("minigrid-fetch", batch=5)
    with torch.no_grad():
        np.testing.assert_allclose(run(tmp_path / "fwd.onnx", inputs)["logits"], policy(*inputs).numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_export_forward_only_checkpoint(tmp_path) -> None:
    save_checkpoint(tmp_path / "p.pt", policy_for("car-racing"), "car-racing", "student")
    manifest = export_checkpoint(tmp_path / "p.pt", tmp_path / "fwd.onnx", forward_only=True)
    assert manifest.output_names == ["action"]
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "fwd.onnx")).metadata_props}
    assert json.loads(props[METADATA_KEY])["outputs"] == [{"name": "action", "shape": [-1, 3]}]


class PooledNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, obs):
        return self.head(self.features(obs / 255.0).flatten(1))


def test_maxpool_is_refused_with_op_path_and_supported_list(tmp_path) -> None:
    with pytest.raises(UnsupportedOpError) as info:
        export_fused(PooledNet().eval(), (torch.rand(1, 3, 10, 10),), tmp_path / "x.onnx")
    message = str(info.value)
    assert "MaxPool2d" in message and "'features.2'" in message
    assert "supported on the path from obs: Conv2d" in message and "Linear" in message
    assert not (tmp_path / "x.onnx").exists()


def test_functional_op_refusal_names_the_enclosing_module(tmp_path) -> None:
    class Block(nn.Module):
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()
            self.head = nn.Linear(3 * 4 * 4, 2)

        def forward(self, obs):
            return self.head(self.block(obs).flatten(1))

    with pytest.raises(UnsupportedOpError, match=r"avg_pool2d at 'block"):
        export_fused(Net().eval(), (torch.rand(1, 3, 8, 8),), tmp_path / "x.onnx")


def test_export_refuses_training_mode(tmp_path) -> None:
    with pytest.raises(Exception, match="eval mode"):
        export_fused(policy_for("atari-breakout").train(), example_inputs_for("atari-breakout"), tmp_path / "x.onnx")


def test_cli_modules_import_without_torch() -> None:
    code = ("import sys; sys.modules['torch'] = None; import edge_digr.export.commands, edge_digr.export; "
            "from edge_digr.export import backward_nodes; import edge_digr.export.trt_support")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_inplace_change_the_graph_cannot_follow_is_refused(tmp_path) -> None:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.head = nn.Linear(2 * 5 * 5, 3)

        def forward(self, obs):
            h = self.conv(obs)
            h.mul_(2.0)  # fx keeps using `conv` for the flatten: the x2 would be missing from the gradient
            return self.head(h.flatten(1))

    with pytest.raises(UnsupportedOpError, match=r"Tensor\.mul_ .*in place"):
        export_fused(Net().eval(), (torch.rand(1, 2, 5, 5),), tmp_path / "x.onnx")


def test_static_batch_graph(tmp_path) -> None:
    policy = policy_for("car-racing")
    model = export_fused(policy, example_inputs_for("car-racing"), tmp_path / "s.onnx", dynamic_batch=False)
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 96, 96]
    inputs = example_inputs_for("car-racing", batch=1, seed=5)
    ref = reduce_channels(input_gradient(policy, inputs)).numpy()
    assert rel_err(run(tmp_path / "s.onnx", inputs)["saliency"], ref) <= REL_TOL


def test_policy_with_mission_needs_both_example_inputs(tmp_path) -> None:
    obs = example_inputs_for("minigrid-fetch")[0]
    with pytest.raises(Exception, match="obs and mission"):
        export_fused(policy_for("minigrid-fetch"), (obs,), tmp_path / "x.onnx")
