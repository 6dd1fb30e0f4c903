"""A core of your own for brims-rl: a tiny Elman RNN, h_t = tanh(W x_t + U h_{t-1} + b).

Train it from the command line with this folder on the Python path:

    PYTHONPATH=docs/examples brims-rl train --env CueMemory-v0 --core my_core:make_elman --total-steps 50000
    PYTHONPATH=docs/examples brims-rl train --env CueMemory-v0 --core my_core:make_elman --set core.options.hidden_size=64

or from Python: `br.register_core("elman", make_elman)`, then `br.make_config(core="elman")`.

The core contract (brims_rl/cores/__init__.py; `br.check_core` tests it, and brims-rl checks every core that is not
built in before using it):
    core.output_size                                 an int
    core.initial_state(batch_size, device)           a tuple of zero tensors, each [B, ...]
    y, state = core(x, state, episode_starts)        x [T, B, input_size], episode_starts [T, B] bool, y [T, B, out]
`episode_starts[t, b]` zeroes row b's state before x[t, b] is consumed, and one call over T steps must equal T
one-step calls (PPO replays whole rollouts in one call; the rollout steps one at a time).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor


class ElmanCore(nn.Module):
    def __init__(self, input_size: int, hidden_size: int = 32) -> None:
        super().__init__()
        if hidden_size <= 0:
            raise ValueError("hidden_size must be positive")
        self.input = nn.Linear(input_size, hidden_size)  # W x_t + b, for all steps at once
        self.recurrent = nn.Linear(hidden_size, hidden_size, bias=False)  # U h_{t-1}
        self.output_size = hidden_size

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> tuple[Tensor, ...]:
        return (torch.zeros(batch_size, self.output_size, device=device),)

    def forward(self, x: Tensor, state: tuple[Tensor, ...], episode_starts: Tensor) -> tuple[Tensor, tuple[Tensor]]:
        (h,) = state
        inputs = self.input(x)
        outputs = []
        for t in range(x.shape[0]):
            h = torch.where(episode_starts[t].unsqueeze(-1), torch.zeros_like(h), h)  # a new episode: forget
            h = torch.tanh(inputs[t] + self.recurrent(h))
            outputs.append(h)
        return torch.stack(outputs), (h,)


def make_elman(input_size: int, hidden_size: int = 32) -> ElmanCore:
    """The factory brims-rl calls: factory(input_size, **core.options) -> nn.Module."""
    return ElmanCore(input_size, hidden_size)
