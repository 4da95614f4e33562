"""ONNX-level helpers for fused graphs (torch-free): find the backward nodes, fold constants, merge Slice and
Reshape chains, split shared weights.

The backward-node naming ("/vjp/...") is the core's contract (`edge_digr.core.fused_graph`), read by
INT8 quantization too.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import numpy as np
import onnx
from onnx import numpy_helper

from edge_digr.core.fused_graph import BACKWARD_SCOPE


_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                     "Bernoulli"}


def _evaluate(node: onnx.NodeProto, consts: Dict[str, np.ndarray], opsets: List[onnx.OperatorSetIdProto]
              ) -> List[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    names = [i for i in node.input if i]
    graph = onnx.helper.make_graph(
        [node], "fold", [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(consts[n].dtype),
                                                            consts[n].shape) for n in names],
        [onnx.helper.make_empty_tensor_value_info(o) for o in node.output])
    model = onnx.helper.make_model(graph, opset_imports=opsets)
    return ReferenceEvaluator(model).run(None, {n: consts[n] for n in names})


def fold_constants(model: onnx.ModelProto) -> int:
    """Turn Constant nodes into initializers and evaluate nodes whose inputs are all constant.

    The exporter leaves shape arithmetic on constants (e.g. the -1 handling of `expand`) as nodes; TensorRT
    8.5 documents ConstantOfShape for FP32 only and wants Slice/Squeeze axes as initializers, so the
    graph is handed over with these already evaluated. Returns the number of nodes removed.
    """
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    kept: List[onnx.NodeProto] = []
    for node in graph.node:
        foldable = (node.op_type not in _NONDETERMINISTIC and not set(node.output) & outputs
                    and all(i in consts for i in node.input if i)
                    and (node.op_type == "Constant" or any(node.input)))
        if node.op_type == "Constant" and node.attribute[0].name != "value":
            foldable = False  # sparse/string constants stay as they are
        if not foldable:
            kept.append(node)
            continue
        if node.op_type == "Constant":
            values = [numpy_helper.to_array(node.attribute[0].t)]
        else:
            values = _evaluate(node, consts, list(model.opset_import))
        for name, value in zip(node.output, values):
            value = np.asarray(value)
            consts[name] = value
            graph.initializer.append(numpy_helper.from_array(value, name))
    removed = len(graph.node) - len(kept)
    del graph.node[:]
    graph.node.extend(kept)
    _drop_unused_initializers(graph)
    return removed


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def _merge_chains(model: onnx.ModelProto, op_type: str,
                  merge: Callable[[onnx.NodeProto, onnx.NodeProto, Dict[str, np.ndarray]], Optional[List[str]]]) -> int:
    """Fold each `op_type` node whose only reader is another `op_type` node (through its data input) into that
    reader. `merge(inner, outer, consts)` returns the reader's new inputs, adding any new constants to
    `consts`, or None to keep both. Returns the number of nodes removed."""
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    known = set(consts)
    readers: Dict[str, List[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    removed: List[onnx.NodeProto] = []
    for inner in graph.node:
        users = readers.get(inner.output[0], [])
        if (inner.op_type != op_type or inner.output[0] in outputs or len(users) != 1
                or users[0].op_type != op_type or list(users[0].input).index(inner.output[0]) != 0):
            continue
        inputs = merge(inner, users[0], consts)
        if inputs is None:
            continue
        del users[0].input[:]
        users[0].input.extend(inputs)
        readers.setdefault(inner.input[0], []).append(users[0])
        removed.append(inner)
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in consts.items()
                             if name not in known)
    for node in removed:
        graph.node.remove(node)
    _drop_unused_initializers(graph)
    return len(removed)


def merge_reshapes(model: onnx.ModelProto) -> int:
    """Drop a Reshape whose only reader is a Reshape to a constant shape without 0 entries (a 0 would copy a
    dimension of the dropped Reshape's output). The VJP's layout changes (K axis in and out of the batch
    axis, phase interleaves) leave such chains; each is a node that ONNX Runtime dispatches on every call.
    Returns the number of Reshapes removed."""
    def merge(inner: onnx.NodeProto, outer: onnx.NodeProto, consts: Dict[str, np.ndarray]) -> Optional[List[str]]:
        shape = consts.get(outer.input[1])
        return None if shape is None or 0 in shape else [inner.input[0], outer.input[1]]
    return _merge_chains(model, "Reshape", merge)


def merge_slices(model: onnx.ModelProto) -> int:
    """Merge a Slice whose only reader is another Slice on other axes into one Slice (constant parameters).

    The exporter writes the crop of a transposed convolution, `y[:, :, a:b, c:d]`, as one Slice per axis,
    and ONNX Runtime copies the tensor once per Slice; one Slice over both axes copies it once (TensorRT
    takes a multi-axis Slice with initializer parameters, as it takes the single ones). Returns the number
    of Slices removed.
    """
    def params(node: onnx.NodeProto, consts: Dict[str, np.ndarray]) -> Optional[List[np.ndarray]]:
        names = list(node.input[1:]) + [""] * (5 - len(node.input))
        if not all(n in consts for n in names[:3]) or (names[3] and names[3] not in consts):
            return None
        starts, ends, axes = (consts[n] for n in names[:3])
        return [starts, ends, axes, consts[names[3]] if names[3] else np.ones_like(starts)]

    def merge(inner: onnx.NodeProto, outer: onnx.NodeProto, consts: Dict[str, np.ndarray]) -> Optional[List[str]]:
        a, b = params(inner, consts), params(outer, consts)
        if a is None or b is None or set(a[2].tolist()) & set(b[2].tolist()):
            return None
        names = [f"{outer.name}/{part}" for part in ("starts", "ends", "axes", "steps")]
        for name, x, y in zip(names, a, b):
            consts[name] = np.concatenate([x, y])
        return [inner.input[0], *names]
    return _merge_chains(model, "Slice", merge)


def separate_backward_weights(model: onnx.ModelProto) -> List[str]:
    """Give backward nodes their own copy of every initializer they share with forward nodes.

    ONNX Runtime's per-channel quantization picks one channel axis per initializer; a weight read by
    both the forward Gemm/Conv and the backward MatMul/ConvTranspose (whose channel axes differ) breaks
    it. Returns the names of the copies. Done on the ONNX graph because the exporter deduplicates
    equal-valued initializers, which would merge copies made on the torch side.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    backward = [n for n in graph.node if n.name.startswith(BACKWARD_SCOPE)]
    forward_uses = {x for n in graph.node if not n.name.startswith(BACKWARD_SCOPE) for x in n.input}
    copies: List[str] = []
    for node in backward:
        for i, name in enumerate(node.input):
            if name in inits and name in forward_uses:
                copy = f"{name}.vjp"
                if copy not in inits:
                    tensor = onnx.TensorProto()
                    tensor.CopyFrom(inits[name])
                    tensor.name = copy
                    graph.initializer.append(tensor)
                    inits[copy] = tensor
                    copies.append(copy)
                node.input[i] = copy
    return copies
