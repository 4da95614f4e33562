"""edge-digr: DIGR-distilled policies with fused logits + saliency inference.

This package must import without torch (the Jetson has none): torch-backed helpers are resolved lazily.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_policy", "deletion"]


def __getattr__(name: str):
    # Lazy so that `import edge_digr.runtime` never pulls torch in.
    if name == "load_policy":
        from edge_digr.checkpoint import load_policy

        return load_policy
    if name == "deletion":  # teacher-independent faithfulness of a policy's own maps (torch-free)
        from edge_digr.core.metrics import deletion

        return deletion
    raise AttributeError(f"module 'edge_digr' has no attribute {name!r}")
