"""Left-right mirrored training frames, for games that are mirror-symmetric (TrainSpec.mirror_actions).

A frame flipped left-right, with each action replaced by its mirror image (Breakout: RIGHT <-> LEFT), is
another valid example. Training on both doubles the frames a pixel policy sees; it is what let the
Breakout learner generalise instead of memorising (docs/RESULTS.md, "Breakout: an expert the frames
explain"). The DAgger learner (edge_digr.imitation) and distillation (edge_digr.distill) both use it.
"""
from __future__ import annotations

from typing import Sequence

import torch


def flip_rows(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """`x` (N, ..., W) with the rows where `flip` (N,) holds mirrored left-right (along the last axis)."""
    return torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


def mirrored_actions(mirror: Sequence[int], device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """`mirror` as an index tensor: entry a is the action that a becomes in the mirrored frame."""
    table = torch.tensor(tuple(mirror), dtype=torch.long, device=device)
    if sorted(table.tolist()) != list(range(len(table))):
        raise ValueError(f"mirror_actions must be a permutation of the actions, got {tuple(mirror)}")
    return table


def mirrored_logits(logits: torch.Tensor, mirror: torch.Tensor) -> torch.Tensor:
    """(N, A) logits of the mirrored frame: action mirror[a] gets the score that a had."""
    return logits[:, torch.argsort(mirror)]
