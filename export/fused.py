"""Write fused (head output + saliency) and forward-only ONNX graphs, with the manifest in metadata_props."""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import onnx
import torch
from torch import nn

from edge_digr.core.errors import UserError
from edge_digr.export import graph as onnx_graph
from edge_digr.export.vjp import build_vjp
from edge_digr.core.fileio import PathLike, sha256_file, write_bytes
from edge_digr.core.manifest import METADATA_KEY, Manifest, for_task

DEFAULT_OPSET = 17  # JetPack 5's TensorRT 8.5 parses up to opset 17; TensorRT 10 parses it too


def _is_continuous(module: nn.Module, continuous: Optional[bool]) -> bool:
    """A PixelPolicy says so in its config; any other module needs the `continuous` argument."""
    if continuous is not None:
        return continuous
    return bool(getattr(getattr(module, "cfg", None), "continuous", False))


def _input_names(module: nn.Module, n: int, names: Optional[Sequence[str]]) -> List[str]:
    if names is not None:
        if len(names) != n:
            raise UserError(f"{len(names)} input names for {n} example inputs")
        return list(names)
    cfg = getattr(module, "cfg", None)
    if getattr(cfg, "extra_dim", 0) and n == 2:
        return ["obs", cfg.extra_name]
    return ["obs"] + [f"input_{i}" for i in range(1, n)]


def _export(module: nn.Module, example_inputs: Tuple[torch.Tensor, ...], input_names: List[str],
            output_names: List[str], opset: int, dynamic_batch: bool) -> onnx.ModelProto:
    buffer = io.BytesIO()
    axes = {name: {0: "batch"} for name in input_names + output_names} if dynamic_batch else None
    with warnings.catch_warnings():
        # dynamo=False is deliberate: the TorchScript exporter needs no onnxscript, and it names nodes
        # by module scope ("/vjp/...") which the calibration relies on.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, example_inputs, buffer, input_names=input_names, output_names=output_names,
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    onnx_graph.fold_constants(model)
    onnx_graph.merge_slices(model)
    onnx_graph.merge_reshapes(model)
    # The exporter leaves reshaped outputs with symbolic dims; consumers (TensorRT profiles, the
    # runtime's buffers) want every non-batch dim concrete, and it is known from the example run.
    with torch.no_grad():
        outs = module(*example_inputs)
    for out, value in zip(model.graph.output, outs if isinstance(outs, tuple) else (outs,)):
        dims = out.type.tensor_type.shape.dim
        del dims[:]
        for i, size in enumerate(value.shape):
            dim = dims.add()
            if i == 0 and dynamic_batch:
                dim.dim_param = "batch"
            else:
                dim.dim_value = size
    return model


def _write(model: onnx.ModelProto, path: PathLike, manifest: Optional[Manifest]) -> None:
    if manifest is not None:
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, {METADATA_KEY: manifest.to_json()})
    onnx.checker.check_model(model)
    write_bytes(path, model.SerializeToString())


def _prepare(module: nn.Module, example_inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
    if module.training:
        raise UserError("put the module in eval mode (module.eval()) before exporting it")
    inputs = tuple(torch.as_tensor(t, dtype=torch.float32).detach() for t in example_inputs)
    if not inputs or inputs[0].dim() != 4:
        raise UserError("the first example input must be the image obs, a (N, C, H, W) tensor")
    cfg = getattr(module, "cfg", None)
    if getattr(cfg, "extra_dim", 0) and len(inputs) != 2:
        raise UserError(f"this policy takes obs and {cfg.extra_name}: pass both as example inputs")
    return inputs


def export_fused(module: nn.Module, example_inputs: Sequence[torch.Tensor], path: PathLike,
                 opset: int = DEFAULT_OPSET, dynamic_batch: bool = True, raw_grad: bool = False,
                 input_names: Optional[Sequence[str]] = None, manifest: Optional[Manifest] = None,
                 separate_backward_weights: bool = False, continuous: Optional[bool] = None) -> onnx.ModelProto:
    """Write one ONNX graph returning the head output and the input-gradient saliency.

    Inputs are named `obs`[, extra name] (from a PixelPolicy's config, or `input_names`); outputs are
    `logits` (discrete) or `action` (continuous: `module.cfg.continuous` for a PixelPolicy, else the
    `continuous` argument), `saliency` (N, H, W) or (N, K, H, W), and with `raw_grad` the signed
    `input_grad` (N[, K], C, H, W). Gradient-path nodes carry the "/vjp/" name prefix;
    `separate_backward_weights` gives them their own weight initializers (for per-channel INT8).
    """
    inputs = _prepare(module, example_inputs)
    is_continuous = _is_continuous(module, continuous)
    fused = build_vjp(module, inputs, is_continuous, raw_grad=raw_grad).eval()
    outputs = ["action" if is_continuous else "logits", "saliency"] + (["input_grad"] if raw_grad else [])
    model = _export(fused, inputs, _input_names(module, len(inputs), input_names), outputs, opset,
                    dynamic_batch)
    if separate_backward_weights:
        onnx_graph.separate_backward_weights(model)
    _write(model, path, manifest)
    return model


def export_forward(module: nn.Module, example_inputs: Sequence[torch.Tensor], path: PathLike,
                   opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
                   input_names: Optional[Sequence[str]] = None, manifest: Optional[Manifest] = None,
                   continuous: Optional[bool] = None) -> onnx.ModelProto:
    """The forward-only graph of `module` (same input names and head output name, no saliency)."""
    inputs = _prepare(module, example_inputs)
    head = "action" if _is_continuous(module, continuous) else "logits"
    model = _export(module, inputs, _input_names(module, len(inputs), input_names), [head], opset, dynamic_batch)
    _write(model, path, manifest)
    return model


def example_inputs_for(task_name: str, batch: int = 1, seed: int = 0) -> Tuple[torch.Tensor, ...]:
    """Random inputs with a task's graph input shapes (raw 0-255 pixels; extra inputs in [0, 1))."""
    from edge_digr.core.tasks import get_task

    gen = torch.Generator().manual_seed(seed)
    task = get_task(task_name)
    obs = torch.rand((batch, *task.obs_shape), generator=gen) * 255.0
    extras = [torch.rand((batch, *spec.shape), generator=gen) for spec in task.extra_inputs]
    return (obs, *extras)


def export_checkpoint(ckpt_path: PathLike, out_path: PathLike, opset: int = DEFAULT_OPSET,
                      dynamic_batch: bool = True, raw_grad: bool = False, separate_backward_weights: bool = False,
                      forward_only: bool = False, task: Optional[str] = None) -> Manifest:
    """Export a policy checkpoint to a fused ONNX graph (or, `forward_only`, the forward graph) + manifest.

    `ckpt_path` is an edge-digr `.pt` (`save_checkpoint`) or an SB3 `.zip` (then `task` is required).
    """
    from edge_digr.checkpoint import load_checkpoint, load_sb3_zip, policy_task

    if forward_only and (raw_grad or separate_backward_weights):
        raise UserError("a forward-only graph has no gradient path: drop raw_grad/separate_backward_weights")
    task = policy_task(ckpt_path, task)
    if str(ckpt_path).endswith(".zip"):
        policy, role = load_sb3_zip(ckpt_path, task), "sb3"
    else:
        policy, config = load_checkpoint(ckpt_path)
        role = config.get("role", "")
    manifest = for_task(task, batch=-1 if dynamic_batch else 1, source=Path(ckpt_path).name,
                        source_sha256=sha256_file(ckpt_path))
    manifest.extra["role"] = role
    inputs = example_inputs_for(task)
    if forward_only:
        manifest.outputs = manifest.outputs[:1]
        export_forward(policy, inputs, out_path, opset=opset, dynamic_batch=dynamic_batch, manifest=manifest)
        return manifest
    if raw_grad:
        obs = manifest.inputs[0]["shape"]
        k = [manifest.action["n"]] if manifest.continuous else []
        manifest.outputs.append({"name": "input_grad", "shape": [obs[0], *k, *obs[1:]]})
    if separate_backward_weights:
        manifest.extra["separate_backward_weights"] = True
    export_fused(policy, inputs, out_path, opset=opset, dynamic_batch=dynamic_batch, raw_grad=raw_grad,
                 manifest=manifest, separate_backward_weights=separate_backward_weights)
    return manifest
