"""Data-parallel context: one process per rank under torchrun, or a plain single process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn

from brims_rl.errors import UserError

T = TypeVar("T")


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
    def from_environment(cls) -> "DistContext":
        """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), else single process.

        With CUDA present the group speaks NCCL for GPU tensors and gloo for CPU tensors, so a run on either device
        works; without CUDA it is gloo only.
        """
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend="cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
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
            p.grad = flat[offset:offset + n].view_as(p)  # views into the one reduced buffer
            offset += n

    def from_main(self, work: Callable[[], T]) -> T:
        """Run `work` on rank 0 only and hand its result, or its UserError, to every rank."""
        if not self.enabled:
            return work()
        box: list[Any] = [None, None]
        if self.is_main:
            try:
                box[0] = work()
            except UserError as exc:
                box[1] = str(exc)
        dist.broadcast_object_list(box, src=0)
        if box[1] is not None:
            raise UserError(box[1])
        return box[0]

    def gather_to_main(self, items: list[T]) -> list[T]:
        """Every rank's items, concatenated on rank 0 (other ranks get theirs back)."""
        if not self.enabled:
            return items
        gathered: list[list[T]] = [[] for _ in range(self.world_size)]
        dist.all_gather_object(gathered, items)
        return [item for rank_items in gathered for item in rank_items] if self.is_main else items

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if `flag` is true on any rank."""
        t = torch.tensor([float(flag)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def max_weight_difference(self, module: nn.Module) -> float:
        """Largest absolute difference between any rank's parameters and rank 0's (0.0 when in sync)."""
        flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
        reference = flat.clone()
        dist.broadcast(reference, src=0)
        difference = (flat - reference).abs().max().reshape(1)
        dist.all_reduce(difference, op=dist.ReduceOp.MAX)
        return float(difference.item())

    def close(self) -> None:
        """After a successful run: wait for every rank, then leave the group."""
        if self.enabled and dist.is_initialized():
            dist.barrier()  # no rank tears the group down while another still talks to it
            dist.destroy_process_group()

    def abort(self) -> None:
        """After an error on this rank: leave at once (waiting for the others could hang)."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
