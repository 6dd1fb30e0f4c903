"""The small attention contractions of RIMs/BRIMs between module-first tensors, as broadcast products and sums.

At these sizes (a few slots, keys of 16-64) a batched GEMM costs more in dispatch and layout copies than it
computes; written as a product and a sum, torch.compile fuses each into the kernels around it.
"""

from __future__ import annotations

from torch import Tensor


def scores(q: Tensor, k: Tensor) -> Tensor:
    """q [n, B, heads, d], k [S, B, heads, d] -> [n, B, heads, S]: every query against every slot's key."""
    return (q.unsqueeze(3) * k.permute(1, 2, 0, 3)).sum(-1)


def weighted(p: Tensor, v: Tensor) -> Tensor:
    """p [n, B, heads, S], v [S, B, heads, d] -> [n, B, heads, d]: each query's weighted sum of the slots' values."""
    return (p.unsqueeze(-1) * v.permute(1, 2, 0, 3)).sum(3)


def weighted_by_slot(p: Tensor, x: Tensor) -> Tensor:
    """p [n, B, heads, S], x [n, B, heads, d] -> [S, B, heads, d]: for each slot, the sum over queries of p * x (the
    transpose of `weighted`, as its backward needs)."""
    return (p.unsqueeze(-1) * x.unsqueeze(3)).sum(0).permute(2, 0, 1, 3)
