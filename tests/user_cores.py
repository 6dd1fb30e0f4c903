"""Cores that each break one rule of the core contract (tests/test_user_cores.py), importable as user cores."""

from __future__ import annotations

import torch
import torch.nn as nn


class Elman(nn.Module):
    """A correct core to break: h_t = tanh(W x_t + U h_{t-1}), reset at episode starts."""

    def __init__(self, input_size: int, hidden_size: int = 8) -> None:
        super().__init__()
        self.w, self.u = nn.Linear(input_size, hidden_size), nn.Linear(hidden_size, hidden_size, bias=False)
        self.output_size = hidden_size

    def initial_state(self, batch_size, device=None):
        return (torch.zeros(batch_size, self.output_size, device=device),)

    def reset(self, h, starts):
        return torch.where(starts.unsqueeze(-1), torch.zeros_like(h), h)

    def forward(self, x, state, episode_starts):
        (h,) = state
        outputs = []
        for t in range(x.shape[0]):
            h = torch.tanh(self.w(x[t]) + self.u(self.reset(h, episode_starts[t])))
            outputs.append(h)
        return torch.stack(outputs), (h,)


class IgnoresStarts(Elman):
    def reset(self, h, starts):
        return h


class ResetsEveryRow(Elman):
    def reset(self, h, starts):
        return torch.zeros_like(h) if bool(starts.any()) else h


class NonZeroInitialState(Elman):
    def initial_state(self, batch_size, device=None):
        return (torch.ones(batch_size, self.output_size, device=device),)


class TimeFirstState(Elman):
    def initial_state(self, batch_size, device=None):
        return (torch.zeros(1, batch_size, self.output_size, device=device),)

    def forward(self, x, state, episode_starts):
        y, (h,) = super().forward(x, (state[0][0],), episode_starts)
        return y, (h.unsqueeze(0),)


class ResetsAfterReading(Elman):
    """Reads x[t] with the old state, then zeroes the state: the reset comes one input too late."""

    def forward(self, x, state, episode_starts):
        (h,) = state
        outputs = []
        for t in range(x.shape[0]):
            h = self.reset(torch.tanh(self.w(x[t]) + self.u(h)), episode_starts[t])
            outputs.append(h)
        return torch.stack(outputs), (h,)


class ResetLetsGradientThrough(Elman):
    """Zeroes the value at a start but keeps the gradient path to the old state (h - h.detach() is 0)."""

    def reset(self, h, starts):
        return torch.where(starts.unsqueeze(-1), h - h.detach(), h)


class StateInOtherDtype(Elman):
    def initial_state(self, batch_size, device=None):
        return (torch.zeros(batch_size, self.output_size, device=device, dtype=torch.float64),)


class StateIgnoresDevice(Elman):
    def initial_state(self, batch_size, device=None):
        return (torch.zeros(batch_size, self.output_size),)


class StateChangesDtype(Elman):
    def forward(self, x, state, episode_starts):
        y, (h,) = super().forward(x, state, episode_starts)
        return y, (h.double(),)


class WrongOutputSize(Elman):
    def forward(self, x, state, episode_starts):
        y, new = super().forward(x, state, episode_starts)
        return y[..., :-1], new


class StringOutputSize(Elman):
    def __init__(self, input_size: int) -> None:
        super().__init__(input_size)
        self.output_size = "8"


class SequenceDiffers(Elman):
    """Uses the sequence length in its maths: a whole sequence is not T one-step calls."""

    def forward(self, x, state, episode_starts):
        y, new = super().forward(x, state, episode_starts)
        return y * x.shape[0], new


def make_ignores_starts(input_size: int) -> nn.Module:
    return IgnoresStarts(input_size)


def make_not_a_module(input_size: int) -> object:
    return object()


elman = Elman


def make_fails_inside(input_size: int, hidden_size: int = 4) -> nn.Module:
    """A factory whose own body raises TypeError: a bug in the user's code, not an option it does not take."""
    return Elman(input_size, hidden_size + "1")
