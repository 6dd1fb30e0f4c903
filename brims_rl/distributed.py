"""Data-parallel context: one process per rank under torchrun, or a plain single process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, device_hint: str) -> "DistContext":
        """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), else single process."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        use_nccl = device_hint != "cpu" and torch.cuda.is_available()
        if use_nccl:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_nccl else "gloo")
        return cls(rank=rank, world_size=world_size, local_rank=local_rank)

    def broadcast_parameters(self, module: nn.Module) -> None:
        """Give every rank rank 0's weights."""
        if self.enabled:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def average_gradients(self, module: nn.Module) -> None:
        """Average gradients over ranks in one flat all-reduce. Parameters without a gradient on this rank (e.g.
        modules top-k left inactive) count as zeros, so every rank always joins the same collective."""
        if not self.enabled:
            return
        params = list(module.parameters())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def all_sum(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item())

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
