"""Helpers shared by cores for episode-start handling."""

from __future__ import annotations

import torch
from torch import Tensor


def zero_where(starts: Tensor, *state: Tensor, batch_dim: int = 0) -> tuple[Tensor, ...]:
    """Zero the rows (along `batch_dim`) of every state tensor whose `starts[b]` is set; they pass no gradient back."""
    out = []
    for s in state:
        shape = [1] * s.dim()
        shape[batch_dim] = -1
        mask = starts.view(shape)
        out.append(torch.where(mask, torch.zeros((), dtype=s.dtype, device=s.device), s))
    return tuple(out)


def segment_bounds(episode_starts: Tensor) -> list[int]:
    """Time indices [0, t1, ..., T] that split a sequence wherever any row starts a new episode (t > 0)."""
    T = episode_starts.shape[0]
    if T == 1:
        return [0, 1]
    inner = episode_starts[1:].any(dim=1).nonzero().flatten().add(1).tolist()
    return [0, *inner, T]
