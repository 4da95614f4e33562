"""Model files for the runtime tests (not collected: no test_ prefix).

`contract_onnx` builds, with onnx.helper only, a small graph that follows the interface contract
(inputs obs[, extra], outputs logits|action and saliency, manifest in metadata_props) and whose outputs a
numpy reference reproduces — fast and independent of the exporter. `exported_onnx` goes through the real
path: a random-weight PixelPolicy → save_checkpoint → edge_digr.export.export_checkpoint (needs torch).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np

from edge_digr.core.manifest import METADATA_KEY, Manifest, for_task
from edge_digr.core.tasks import get_task


def _weights(task_name: str, seed: int) -> Dict[str, np.ndarray]:
    task = get_task(task_name)
    rng = np.random.default_rng(seed)
    pixels = int(np.prod(task.obs_shape))
    out = {"w_obs": rng.normal(0, 0.05, (pixels, task.action.n)).astype(np.float32)}
    if task.extra_inputs:
        out["w_extra"] = rng.normal(0, 1.0, (task.extra_inputs[0].shape[0], task.action.n)).astype(np.float32)
    return out


def reference_outputs(task_name: str, feed: Dict[str, np.ndarray], seed: int = 0) -> Dict[str, np.ndarray]:
    """What `contract_onnx(task_name, seed)` computes, in numpy."""
    task = get_task(task_name)
    w = _weights(task_name, seed)
    obs = feed["obs"].astype(np.float32)
    head = (obs.reshape(len(obs), -1) / 255.0) @ w["w_obs"]
    if task.extra_inputs:
        head = head + feed[task.extra_inputs[0].name] @ w["w_extra"]
    sal = np.abs(obs - 128.0).max(axis=1) / 255.0
    if task.action.continuous:
        return {"action": np.tanh(head), "saliency": np.repeat(sal[:, None], task.action.n, axis=1)}
    return {"logits": head, "saliency": sal}


def contract_onnx(path: Path, task_name: str, seed: int = 0, manifest: Optional[Manifest] = None) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    task = get_task(task_name)
    w = _weights(task_name, seed)
    c, h, wd = task.obs_shape
    n_act = task.action.n
    head_name = "action" if task.action.continuous else "logits"
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()] + [
        numpy_helper.from_array(np.array(1 / 255.0, np.float32), "inv255"),
        numpy_helper.from_array(np.array(128.0, np.float32), "mid"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Flatten", ["obs"], ["flat"], axis=1),
        helper.make_node("Mul", ["flat", "inv255"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "w_obs"], ["head_obs"]),
        helper.make_node("Sub", ["obs", "mid"], ["centred"]),
        helper.make_node("Abs", ["centred"], ["dist"]),
        helper.make_node("ReduceMax", ["dist"], ["dmax"], axes=[1], keepdims=0),
        helper.make_node("Mul", ["dmax", "inv255"], ["sal2d"]),
    ]
    inputs = [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["N", c, h, wd])]
    head = "head_obs"
    if task.extra_inputs:
        extra = task.extra_inputs[0]
        inputs.append(helper.make_tensor_value_info(extra.name, TensorProto.FLOAT, ["N", extra.shape[0]]))
        nodes += [helper.make_node("MatMul", [extra.name, "w_extra"], ["head_extra"]),
                  helper.make_node("Add", ["head_obs", "head_extra"], ["head_sum"])]
        head = "head_sum"
    if task.action.continuous:
        inits.append(numpy_helper.from_array(np.ones((1, n_act, 1, 1), np.float32), "ones_k"))
        nodes += [helper.make_node("Tanh", [head], [head_name]),
                  helper.make_node("Unsqueeze", ["sal2d", "axis1"], ["sal4d"]),
                  helper.make_node("Mul", ["sal4d", "ones_k"], ["saliency"])]
        sal_shape = ["N", n_act, h, wd]
    else:
        nodes += [helper.make_node("Identity", [head], [head_name]),
                  helper.make_node("Identity", ["sal2d"], ["saliency"])]
        sal_shape = ["N", h, wd]
    outputs = [helper.make_tensor_value_info(head_name, TensorProto.FLOAT, ["N", n_act]),
               helper.make_tensor_value_info("saliency", TensorProto.FLOAT, sal_shape)]
    graph = helper.make_graph(nodes, "contract", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    manifest = manifest or for_task(task_name, source="contract-fixture")
    helper.set_model_props(model, {METADATA_KEY: manifest.to_json()})
    onnx.save(model, str(path))
    return path


def exported_onnx(folder: Path, task_name: str, seed: int = 0, arch: str = "edge") -> Path:
    """A random-weight PixelPolicy exported through the real fused exporter."""
    import torch

    from edge_digr.checkpoint import save_checkpoint
    from edge_digr.export import export_checkpoint
    from edge_digr.policies import PixelPolicy, PolicyConfig

    torch.manual_seed(seed)
    policy = PixelPolicy(PolicyConfig.for_task(get_task(task_name), arch=arch))
    ckpt = folder / f"{task_name}.pt"
    save_checkpoint(ckpt, policy, task_name, role="student")
    out = folder / f"{task_name}.onnx"
    export_checkpoint(ckpt, out)
    return out
