"""Fused logits + saliency export: the VJP builder, ONNX export, and the TensorRT-compatibility check.

Names resolve lazily so that `edge_digr.export.commands` (the CLI) and `backward_nodes` import without
torch; `export_fused` and friends pull torch in on first use.
"""
from __future__ import annotations

from typing import Any

__all__ = ["export_fused", "export_forward", "export_checkpoint", "build_vjp", "backward_nodes",
           "UnsupportedOpError", "BACKWARD_SCOPE"]

_WHERE = {
    "export_fused": "edge_digr.export.fused",
    "export_forward": "edge_digr.export.fused",
    "export_checkpoint": "edge_digr.export.fused",
    "backward_nodes": "edge_digr.core.fused_graph",
    "BACKWARD_SCOPE": "edge_digr.core.fused_graph",
    "build_vjp": "edge_digr.export.vjp",
    "UnsupportedOpError": "edge_digr.export.vjp",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'edge_digr.export' has no attribute {name!r}")
