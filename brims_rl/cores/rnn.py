"""LSTM and GRU cores on torch's fused RNNs, with a fast path: a sequence is split only where an episode starts."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from brims_rl.cores.resets import segment_bounds, zero_where


class _FusedRNNCore(nn.Module):
    rnn_type: type[nn.RNNBase]
    num_state_tensors: int

    def __init__(self, input_size: int, hidden_size: int = 128, num_layers: int = 1):
        super().__init__()
        if hidden_size <= 0 or num_layers <= 0:
            raise ValueError("hidden_size and num_layers must be positive")
        self.rnn = self.rnn_type(input_size, hidden_size, num_layers=num_layers)
        self.output_size = hidden_size
        for name, param in self.rnn.named_parameters():  # CleanRL's init: orthogonal weights, zero biases
            if "bias" in name:
                nn.init.constant_(param, 0.0)
            else:
                nn.init.orthogonal_(param, 1.0)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> tuple[Tensor, ...]:
        shape = (batch_size, self.rnn.num_layers, self.rnn.hidden_size)
        return tuple(torch.zeros(shape, device=device) for _ in range(self.num_state_tensors))

    def forward(self, x: Tensor, state: tuple[Tensor, ...], episode_starts: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        outputs = []
        bounds = segment_bounds(episode_starts)
        for begin, end in zip(bounds[:-1], bounds[1:]):
            state = zero_where(episode_starts[begin], *state)
            y, rnn_state = self.rnn(x[begin:end], self._to_rnn(state))
            state = self._from_rnn(rnn_state)
            outputs.append(y)
        y = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        return y, state

    # torch RNNs keep state as [layers, B, H]; the contract is batch-first.
    def _to_rnn(self, state: tuple[Tensor, ...]):
        raise NotImplementedError

    def _from_rnn(self, rnn_state) -> tuple[Tensor, ...]:
        raise NotImplementedError


class LSTMCore(_FusedRNNCore):
    """State (h, c), each [B, num_layers, hidden_size]."""

    rnn_type = nn.LSTM
    num_state_tensors = 2

    def _to_rnn(self, state):
        h, c = state
        return h.transpose(0, 1).contiguous(), c.transpose(0, 1).contiguous()

    def _from_rnn(self, rnn_state):
        h, c = rnn_state
        return h.transpose(0, 1), c.transpose(0, 1)


class GRUCore(_FusedRNNCore):
    """State (h,), [B, num_layers, hidden_size]."""

    rnn_type = nn.GRU
    num_state_tensors = 1

    def _to_rnn(self, state):
        return state[0].transpose(0, 1).contiguous()

    def _from_rnn(self, rnn_state):
        return (rnn_state.transpose(0, 1),)
