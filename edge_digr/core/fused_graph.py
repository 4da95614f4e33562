"""The fused graph's naming contract, shared by the exporter (which writes it) and INT8 quantization (which
reads it): the exporter runs the VJP in a child module `vjp`, so every gradient-path node is named "/vjp/...".
"""
from __future__ import annotations

from typing import Any, List

BACKWARD_SCOPE = "/vjp/"


def backward_nodes(onnx_model: Any) -> List[str]:
    """Names of the nodes that compute the input gradient and the saliency (keep them in high precision).

    `onnx_model` is an `onnx.ModelProto` or a path; onnx is imported only to load a path.
    """
    if not hasattr(onnx_model, "graph"):
        import onnx

        onnx_model = onnx.load(str(onnx_model))
    return [n.name for n in onnx_model.graph.node if n.name.startswith(BACKWARD_SCOPE)]
