"""LSTM and GRU cores on torch's fused RNNs, with episode starts inside a sequence handled two exact ways.

- Packed (CUDA): the sequence [T, B] is cut into episodes ("segments": a row from one start to the next). Every
  segment is an independent sequence for the RNN: the first segment of a row starts from the row's state, every
  later one from zeros, so packing all segments into one `PackedSequence` gives, in one fused call, exactly what
  stepping with resets gives (Sample Factory packs its rollouts the same way). Outputs are scattered back to
  [T, B]; the final state of each row is the final state of its last segment.
- Split (CPU): one fused call per run of steps without a start, all rows together, zeroing the rows that start
  between calls. On the CPU torch runs packed sequences step by step outside oneDNN, which costs more than the
  extra calls (docs/results.md, "Speed").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence


class EpisodePacking:
    """Where each step of a [T, B] sequence goes when its episodes are packed as separate sequences.

    Built on the host from `episode_starts` [T, B]. `index`: for each row of the packed data, its position t * B + b
    in the flattened sequence; `batch_sizes`: the packed sequence's batch size at each step; per segment (longest
    first) `rows`, its row, and `first_of_row`, whether it starts at t = 0 (from the row's state); `last`: for each
    row, the segment that ends it.
    """

    def __init__(self, episode_starts: Tensor):
        starts = episode_starts.detach().cpu().numpy()
        T, B = starts.shape
        begins, rows = [], []
        for b in range(B):
            cuts = [0, *(np.flatnonzero(starts[1:, b]) + 1).tolist()]
            begins += cuts
            rows += [b] * len(cuts)
        begins, rows = np.asarray(begins), np.asarray(rows)
        ends = np.empty_like(begins)
        ends[:-1] = begins[1:]
        ends[np.r_[rows[1:] != rows[:-1], True]] = T  # a row's last segment ends at T
        lengths = ends - begins
        order = np.argsort(-lengths, kind="stable")  # PackedSequence wants the longest first
        begins, rows, lengths = begins[order], rows[order], lengths[order]
        steps = np.arange(lengths[0])
        alive = steps[:, None] < lengths[None, :]  # [max length, segments]
        self.index = torch.from_numpy(((begins[None, :] + steps[:, None]) * B + rows[None, :])[alive])
        self.batch_sizes = torch.from_numpy(alive.sum(1))
        self.first_of_row = torch.from_numpy(begins == 0)
        self.rows = torch.from_numpy(rows)
        ending = np.flatnonzero(begins + lengths == T)  # each row has exactly one segment that reaches T
        last = np.empty(B, dtype=np.int64)
        last[rows[ending]] = ending
        self.last = torch.from_numpy(last)
        self.T, self.B = T, B


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
        T, B = episode_starts.shape
        keep = ~episode_starts[0].view(B, 1, 1)
        state = tuple(torch.where(keep, s, 0.0) for s in state)  # a row starting at t = 0 starts from zeros
        if T == 1 or not bool(episode_starts[1:].any()):
            y, rnn_state = self.rnn(x, self._to_rnn(state))
            return y, self._from_rnn(rnn_state)
        if x.is_cuda:
            return self._packed(x, state, EpisodePacking(episode_starts))
        return self._split(x, state, episode_starts)

    def _split(self, x: Tensor, state: tuple[Tensor, ...], episode_starts: Tensor):
        """One fused call per run of steps in which no row starts an episode (module docstring)."""
        T, B = episode_starts.shape
        cuts = [0, *(episode_starts[1:].any(1).nonzero().flatten() + 1).tolist(), T]
        outputs = []
        for begin, end in zip(cuts[:-1], cuts[1:]):
            keep = ~episode_starts[begin].view(B, 1, 1)
            state = tuple(torch.where(keep, s, 0.0) for s in state)
            y, rnn_state = self.rnn(x[begin:end], self._to_rnn(state))
            state = self._from_rnn(rnn_state)
            outputs.append(y)
        return torch.cat(outputs), state

    def _packed(self, x: Tensor, state: tuple[Tensor, ...], packing: EpisodePacking):
        """Every episode segment as its own sequence, in one RNN call (module docstring)."""
        device = x.device
        index = packing.index.to(device)
        data = x.reshape(packing.T * packing.B, -1).index_select(0, index)
        # initial states per segment: the row's state for its first segment, zeros for the others
        rows, first = packing.rows.to(device), packing.first_of_row.to(device).view(-1, 1, 1)
        initial = tuple(torch.where(first, s.index_select(0, rows), 0.0) for s in state)
        out, rnn_state = self.rnn(PackedSequence(data, packing.batch_sizes), self._to_rnn(initial))
        y = out.data.new_zeros(packing.T * packing.B, out.data.shape[-1]).index_copy(0, index, out.data)
        final = tuple(s.index_select(0, packing.last.to(device)) for s in self._from_rnn(rnn_state))
        return y.view(packing.T, packing.B, -1), final

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
