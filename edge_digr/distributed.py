"""`distill` under torchrun: one process per CPU share or GPU, each on its share of every global batch.

torchrun is detected by the variables it sets (RANK, WORLD_SIZE, LOCAL_RANK); without them everything here
is a no-op and distill runs as one process. Process group: gloo on CPU, nccl on CUDA; the student is
wrapped in DistributedDataParallel, which averages the gradients over the processes.

DIGR's penalty differentiates the input gradient (autograd.grad with create_graph=True) before the final
backward: DDP's reducer handles that double backward in the configuration used here (default options:
no find_unused_parameters, no static_graph), which we checked against one process's gradient (equal to
4e-9 with gloo on CPU); tests/test_scale.py checks whole runs. Should a configuration (another backend,
those options) break it, the fallback is what the reducer does by hand: all_reduce each .grad after
backward, divide by the world size.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, List, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from edge_digr.core.errors import UserError


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Distributed":
        """The torchrun process this is (RANK, WORLD_SIZE, LOCAL_RANK), or a single process."""
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and shows progress."""
        return self.rank == 0

    def start(self, device: torch.device, batch_size: int) -> None:
        if not self.active:
            return
        if batch_size % self.world_size:
            raise UserError(f"the batch of {batch_size} frames does not split over {self.world_size} processes; "
                            "use a --nproc-per-node that divides it")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def stop(self, wait: bool = True) -> None:
        if self.active and dist.is_initialized():
            if wait:
                dist.barrier()  # no rank leaves before rank 0 has written the checkpoint
            dist.destroy_process_group()

    def wrap(self, policy: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """What to train through: `policy` itself, or under torchrun DDP around it (which starts every rank
        from rank 0's weights and averages the gradients in backward)."""
        if not self.active:
            return policy
        ddp = DistributedDataParallel(policy, device_ids=[device.index] if device.type == "cuda" else None)
        ddp.cfg = policy.cfg  # the penalty reads the policy's config (continuous or not) through the wrapper
        return ddp

    def weight(self, local: int, global_n: int) -> float:
        """The factor on a rank's mean loss over its `local` frames that makes DDP's average over ranks the
        mean over the global batch of `global_n` frames (1 in one process)."""
        return local * self.world_size / global_n

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (e.g. DAgger frames collected once, on rank 0)."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def batches(self, order: np.ndarray, batch_size: int) -> List[Tuple[np.ndarray, np.ndarray]]:
        """(this rank's frame indices, the global batch's) for each global batch of `order`.

        The global batches are the single process's: `order` cut every `batch_size`. A DistributedSampler
        over `order` (no shuffle: `order` is already the epoch's permutation) hands rank r the positions
        r, r + W, r + 2W, ...; taking them batch_size / W at a time gives rank r exactly the r-th
        interleaved share of each global batch. The sampler's padding (repeats that even the ranks out)
        is dropped, since a repeated frame would weigh twice in the mean."""
        n = len(order)
        if not self.active:
            return [(order[i:i + batch_size], order[i:i + batch_size]) for i in range(0, n, batch_size)]
        sampler = DistributedSampler(order, num_replicas=self.world_size, rank=self.rank, shuffle=False)
        positions = np.asarray(list(sampler), dtype=np.int64)[:len(range(self.rank, n, self.world_size))]
        local = batch_size // self.world_size
        return [(order[positions[k * local:(k + 1) * local]], order[k * batch_size:(k + 1) * batch_size])
                for k in range(math.ceil(n / batch_size))]
