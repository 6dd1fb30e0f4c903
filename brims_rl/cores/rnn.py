"""LSTM and GRU cores on torch's fused RNNs, with episode starts inside a sequence handled two exact ways.

- Padded (CPU): one fused call per layer over the whole minibatch. Before each step at which a row starts an
  episode, that row gets one extra "reset step"; rows with fewer starts are topped up at their end with "hold steps"
  to a common length. Two flag inputs mark these steps, and their input weights, appended to the layer's own, drive
  the gates to exactly 0 or 1 (`_flag_weights`): a reset step leaves the state exactly zero and passes no gradient
  back, a hold step keeps the state bit for bit. So one call computes what stepping with resets computes, and the
  extra steps add nothing to any gradient (the GRU's one exception cancels exactly in the maths; `_flag_weights`).
  The rows' real steps are gathered back into [T, B]; oneDNN runs the call as it runs `nn.LSTM`.
- Packed (CUDA): the sequence [T, B] is cut into episodes ("segments": a row from one start to the next). Every
  segment is an independent sequence for the RNN: the first segment of a row starts from the row's state, every
  later one from zeros, so packing all segments into one `PackedSequence` gives, in one fused call, exactly what
  stepping with resets gives (Sample Factory packs its rollouts the same way). Outputs are scattered back to
  [T, B]; the final state of each row is the final state of its last segment. cuDNN runs packed sequences natively;
  on the CPU torch runs them step by step outside oneDNN, hence the padded path there (docs/results.md, "Speed").
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


class EpisodePadding:
    """Where each step of a [T, B] sequence goes when every episode start after t = 0 is preceded by a reset step
    and every row is topped up with hold steps to the longest row's length (module docstring).

    Built from `episode_starts` [T, B] on the CPU. `length`: the padded length T'; `index`: for each step t * B + b of
    the flattened sequence, its row in the flattened padded one [T' * B]; `flags` [T' * B, 2]: 1 in column 0 at reset
    steps, in column 1 at hold steps; `real` [T' * B, 1]: 1 at the real steps; `last`: each row's last real step.
    """

    def __init__(self, episode_starts: Tensor):
        starts = episode_starts.detach().cpu().clone()
        T, B = starts.shape
        starts[0] = False  # a start at t = 0 is the initial state's reset, done before the call
        shift = starts.long().cumsum(0)  # reset steps inserted up to and including step t
        position = torch.arange(T).view(T, 1) + shift  # [T, B]: each real step's padded time
        lengths = T + shift[-1]
        self.length = int(lengths.max())
        columns = torch.arange(B)
        self.index = (position * B + columns).flatten()
        flags = torch.zeros(self.length, B, 2)
        flags[(position - 1)[starts], columns.expand(T, B)[starts], 0] = 1.0
        flags[..., 1] = (torch.arange(self.length).view(-1, 1) >= lengths.view(1, B)).float()
        self.flags = flags.view(self.length * B, 2)
        self.real = 1.0 - self.flags.sum(1, keepdim=True)
        self.last = (lengths - 1) * B + columns
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
        return self._padded(x, state, EpisodePadding(episode_starts))

    def _padded(self, x: Tensor, state: tuple[Tensor, ...], padding: EpisodePadding):
        """The whole sequence in one fused call per layer, episode starts as reset steps (module docstring)."""
        rnn, B, size = self.rnn, padding.B, padding.length * padding.B
        index = padding.index.to(x.device)
        flags, real = padding.flags.to(x), padding.real.to(x)
        layer_input = x.new_zeros(size, x.shape[-1]).index_copy(0, index, x.reshape(padding.T * B, -1))
        last = padding.last.to(x.device)
        finals: list[tuple[Tensor, ...]] = []
        for layer in range(rnn.num_layers):
            w_ih, w_hh, b_ih, b_hh = rnn.all_weights[layer]
            layer_state = tuple(s[:, layer].unsqueeze(0).contiguous() for s in state)
            weights = [torch.cat([w_ih, self._flag_weights(w_hh, b_ih, b_hh, layer_state[0])], 1), w_hh, b_ih, b_hh]
            flagged = torch.cat([layer_input, flags], 1).view(padding.length, B, -1)
            out, final = self._layer_call(flagged, layer_state, weights, last)
            finals.append(final)
            layer_input = out * real  # the next layer reads zeros at the extra steps
        y = out.index_select(0, index).view(padding.T, B, -1)
        return y, tuple(torch.stack(parts, 1) for parts in zip(*finals))

    @staticmethod
    def _flag_scale(w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, h0: Tensor) -> Tensor:
        """A flag weight that outweighs the rest of a gate's pre-activation at an extra step by over 1,000, beyond
        which a sigmoid is exactly 0 or 1 in float32 and float64. There the input is zero and |h| <= max(1, |h0|),
        so the rest is at most |b_ih| + |b_hh| + (row sum of |W_hh|) * max(1, |h0|)."""
        with torch.no_grad():
            largest_h = h0.abs().max().clamp(min=1.0)
            rest = b_ih.abs() + b_hh.abs() + w_hh.abs().sum(1) * largest_h
            return 2.0 * rest.max() + 1024.0

    @classmethod
    def _sigmoid_gate_flags(cls, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, h0: Tensor) -> Tensor:
        """[2 * H, 2]: flag weights for the first two (sigmoid) gates, LSTM's i, f and GRU's r, z: the first shut by
        both flags, the second shut by a reset and fully open on a hold."""
        big = cls._flag_scale(w_hh, b_ih, b_hh, h0)
        return torch.stack([-big, -big, -big, big]).view(2, 1, 2).expand(2, w_hh.shape[1], 2).reshape(-1, 2)

    def _flag_weights(self, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, h0: Tensor) -> Tensor:
        """[gates * H, 2]: the input weights of the reset and hold flags."""
        raise NotImplementedError

    def _layer_call(self, x: Tensor, state: tuple[Tensor, ...], weights: list[Tensor],
                    last: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """One layer's fused call over the padded [T', B, in + 2]: (outputs [T' * B, H], the layer's final state as
        [B, H] tensors, taken at each row's `last` real step)."""
        raise NotImplementedError

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

    def _flag_weights(self, w_hh, b_ih, b_hh, h0):
        # Gates i, f, g, o. Reset: i = f = 0, so c = 0 * c + 0 * g = 0 and h = o * tanh(0) = 0; every gate's
        # derivative is then 0, so nothing flows back. Hold: i = 0, f = 1, so c is kept exactly and again every gate's
        # derivative is 0; h = o * tanh(c) changes, so a row's final h is read at its last real step.
        i_f = self._sigmoid_gate_flags(w_hh, b_ih, b_hh, h0)
        return torch.cat([i_f, i_f.new_zeros(i_f.shape)])  # g and o untouched

    def _layer_call(self, x, state, weights, last):
        out, _, c = torch.lstm(x, state, weights, True, 1, 0.0, self.training, False, False)
        out = out.reshape(-1, out.shape[-1])
        return out, (out.index_select(0, last), c[0])


class GRUCore(_FusedRNNCore):
    """State (h,), [B, num_layers, hidden_size]."""

    rnn_type = nn.GRU
    num_state_tensors = 1

    def _to_rnn(self, state):
        return state[0].transpose(0, 1).contiguous()

    def _from_rnn(self, rnn_state):
        return (rnn_state.transpose(0, 1),)

    def _flag_weights(self, w_hh, b_ih, b_hh, h0):
        # Gates r, z, n; h' = (1 - z) * n + z * h with n = tanh(W_in x + b_in + r * (W_hn h + b_hn)). Both flags set
        # r = 0 and give n the weight -b_in; as x = 0 there, n = tanh(b_in - b_in) = 0. Reset: z = 0, so h' = 0 and no
        # gradient reaches h; hold: z = 1, so h' = h exactly and every gate's derivative is 0. At a reset step n's
        # pre-activation still has a gradient, which reaches b_in twice with opposite signs (once directly, once
        # through the flag weight -b_in), so b_in's gradient is unchanged up to rounding.
        hidden = w_hh.shape[1]
        r_z = self._sigmoid_gate_flags(w_hh, b_ih, b_hh, h0)
        return torch.cat([r_z, -b_ih[2 * hidden:].unsqueeze(1).expand(hidden, 2)])

    def _layer_call(self, x, state, weights, last):
        out, h = torch.gru(x, state[0], weights, True, 1, 0.0, self.training, False, False)
        return out.reshape(-1, out.shape[-1]), (h[0],)
