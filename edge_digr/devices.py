"""`--device auto|cpu|cuda` as a torch device (desktop side: the core that defines the option has no torch)."""
from __future__ import annotations

import torch

from edge_digr.core.errors import UserError
from edge_digr.core.params import DEVICES


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The torch device for `--device NAME`; under torchrun, CUDA device `local_rank` (one GPU per process)."""
    if name not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}, not {name!r}")
    cuda = torch.cuda.is_available()
    if name == "cuda" and not cuda:
        raise UserError("--device cuda: no CUDA device is available to torch here; use --device cpu or auto")
    if name == "cpu" or not cuda:
        return torch.device("cpu")
    return torch.device("cuda", local_rank)
