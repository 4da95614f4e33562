"""ONNX-level helpers for fused graphs (torch-free): find the backward nodes, split shared weights.

The backward-node naming ("/vjp/...") is the core's contract (`edge_digr.core.fused_graph`), read by
INT8 quantization too.
"""
from __future__ import annotations

from typing import Dict, List

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
    used = {i for n in graph.node for i in n.input} | outputs
    unused = [i for i in graph.initializer if i.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return removed


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
