"""Feed-forward baseline: no memory at all (an empty state)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor


class FeedForwardCore(nn.Module):
    def __init__(self, input_size: int, hidden_size: int = 128):
        super().__init__()
        if hidden_size <= 0:
            raise ValueError("hidden_size must be positive")
        self.layer = nn.Sequential(nn.Linear(input_size, hidden_size), nn.ReLU())
        self.output_size = hidden_size

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> tuple[Tensor, ...]:
        return ()

    def forward(self, x: Tensor, state: tuple[Tensor, ...], episode_starts: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        return self.layer(x), ()
