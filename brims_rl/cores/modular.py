"""RIMs and BRIMs cores (paper eq. 4-9): recurrent layers made of modules that talk through attention.

A `ModularCore` is a stack of layers; RIMs is one layer, BRIMs several. Each time step runs the layers bottom-up, and
each layer does:

1. Input attention (eq. 4-5, 8): every module queries a null slot (zeros) and its sources: the input x_t (layer 0) or
   the modules of layer l-1 at t, plus, with `top_down`, layer l+1 at t-1: each of its modules as its own slot through
   one shared projection (`top_down_slots="modules"`, the paper's text) or the whole layer as ONE slot with its own
   projection of the concatenated module states (`top_down_slots="layer"`, the authors' code).
2. Selection: the `top_k` modules that put the least attention (averaged over heads) on the null slot are active;
   ties go to the lower module index (stable sort). The mask is hard. A replay may pass the selections recorded
   while acting (`decisions`): a recorded module then wins any near tie, within `tie_tolerance` (see select_top_k).
3. Dynamics (eq. 6): every module steps its own LSTM/GRU on what it read; all modules in one batched matmul.
4. Communication (eq. 7, 9): active modules read all modules of their layer (multi-head) and add it through a gate.

Inactive modules keep h and c bit for bit (torch.where), so no gradient reaches a candidate update they skipped.
The output y_t concatenates every layer's module states, bottom layer first.

Internally states are module-first ([n, B, H]) so per-module weights ([n, in, out]) apply with one bmm.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_post_hook

from brims_rl.cores.compile import COMPILE_MODES, call_compiled
from brims_rl.cores.resets import segment_bounds, zero_where

CELLS = {"lstm": 4, "gru": 3}  # cell -> number of gate blocks
# Null-attention scores lie in [0, 1]; a replay in other kernels moves them by a few float32 roundings (eps 1.2e-7)
# per op. 1e-5 (~84 eps) is far above that and far below any gap that reflects a real difference between modules.
DEFAULT_TIE_TOLERANCE = 1e-5
TOP_DOWN_SLOTS = ("modules", "layer")  # how a lower layer reads the layer above it (see the module docstring)
# "layer" since 2026-11-30 (docs/results.md, "Which top-down layout"); configs stored without the option were trained
# with "modules" and load as such (config.STORED_DEFAULTS).
DEFAULT_TOP_DOWN_SLOTS = "layer"


def select_top_k(null_attention: Tensor, top_k: int, preferred: Tensor | None = None,
                 tolerance: float = 0.0) -> Tensor:
    """The active mask [n, B] bool: the `top_k` modules with the least null attention [n, B] (ties: lower index).

    `preferred` [n, B] bool marks the modules selected when this step was first computed (the rollout). A preferred
    module's score counts as `tolerance` lower, so wherever the replay's scores differ from the rollout's by less than
    tolerance / 2 (rounding in other kernels, batch shapes or fused graphs) the replay selects exactly what the rollout
    did, and wherever a score differs by more than the tolerance the module's own score decides. The record is only
    meaningful with the weights that made it: PPO passes it until the update's first optimizer step, never after.
    """
    score = null_attention if preferred is None else null_attention - tolerance * preferred
    order = score.argsort(dim=0, stable=True)[:top_k]  # [top_k, B]
    return torch.zeros_like(null_attention, dtype=torch.bool).scatter_(0, order, True)


_optimizer_steps = 0  # torch optimizer steps taken in this process (ModularLayer.fused's cache key)


def _count_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


# Fires after every torch.optim optimizer's step(), on any device and kernel (fused, foreach, for-loop), and also
# when the gradients came from a replayed CUDA graph (no Python forward): the step itself runs in Python.
register_optimizer_step_post_hook(_count_optimizer_step)


def _capturing() -> bool:
    """Whether a CUDA graph is being captured (then nothing may read device values back to the host)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _uniform(*shape: int, fan_in: int) -> nn.Parameter:
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


def _orthogonal(n: int, rows: int, cols: int) -> nn.Parameter:
    weight = torch.empty(n, rows, cols)
    for k in range(n):  # each module gets its own orthogonal matrix (CleanRL's LSTM init)
        nn.init.orthogonal_(weight[k])
    return nn.Parameter(weight)


class _Source(NamedTuple):
    """How a layer reads one group of module slots (layer l-1's modules, or the top-down slots of layer l+1).

    A module reads sum_s p_s value(h_s), value(h) = h @ W_v, through its own W_ih. When a slot is narrower than a
    value (src < value), the same quantity is computed as (sum_s p_s h_s) @ (W_v @ W_ih), the product taken once per
    forward call: per step that is a smaller bmm, and a smaller weight gradient to accumulate over time.
    """

    key: Tensor  # [src, heads * key]
    value: Tensor | None  # [src, heads * value] (unfolded), or None
    folded: Tensor | None  # [n, heads * src, gates] = W_v @ W_ih per module and head (folded), or None


class _Fused(NamedTuple):
    """A layer's weights concatenated once per forward call so each step needs few ops; key scales folded in."""

    hq_weight: Tensor  # [n, H, gates + queries]: recurrent gate inputs and input-attention queries from h_{t-1}
    hq_bias: Tensor  # [n, 1, gates + queries]
    comm_weight: Tensor | None  # [n, H, queries + keys + values + gate]: communication projections of h_bar
    comm_bias: Tensor | None
    sources: tuple[_Source, ...]  # module-slot groups read each step: lower layer (l > 0), then higher (top-down)


class ModularLayer(nn.Module):
    """One RIMs layer: `num_modules` modules of `module_size`, `top_k` of them active per step.

    Queries are per-module projections of the module's own state (each module learns what it looks for, as in RIMs),
    fused with the recurrent gate weights into one bmm. Keys and values are shared projections of the source slots
    (a source slot is the input or a module of another layer); they have no bias, so the null slot's key and value
    are exactly zero and its logit is 0.
    """

    def __init__(self, lower_size: int, higher_size: int | None, num_modules: int, top_k: int, module_size: int,
                 cell: str, heads: int, input_key_size: int, input_value_size: int, communication: bool,
                 comm_heads: int, comm_key_size: int, comm_value_size: int, lower_is_input: bool = True,
                 tie_tolerance: float = 0.0):
        super().__init__()
        self.tie_tolerance = tie_tolerance  # how near a tie a recorded selection wins in a replay (select_top_k)
        self.lower_is_input = lower_is_input  # layer 0 reads x (precomputed for all steps); others read modules
        self.fold_values = True  # read narrow slots through W_v @ W_ih (see _Source); False: the literal order
        n, H = num_modules, module_size
        self.num_modules, self.top_k, self.module_size, self.cell = n, top_k, H, cell
        self.heads, self.key_size, self.value_size = heads, input_key_size, input_value_size
        self.communication = communication
        self.comm_heads, self.comm_key_size, self.comm_value_size = comm_heads, comm_key_size, comm_value_size
        gates = CELLS[cell] * H
        kv = heads * (input_key_size + input_value_size)

        # input attention: keys/values of the lower source (input or layer l-1) and of the higher layer (top-down)
        self.kv_lower = _uniform(lower_size, kv, fan_in=lower_size)
        self.kv_higher = _uniform(higher_size, kv, fan_in=higher_size) if higher_size else None
        self.query = _uniform(n, H, heads * input_key_size, fan_in=H)
        self.query_bias = _uniform(n, 1, heads * input_key_size, fan_in=H)
        # per-module cells; gate blocks: LSTM [i, f, o, g], GRU [r, z, n]
        self.w_ih = _orthogonal(n, heads * input_value_size, gates)
        self.w_hh = _orthogonal(n, H, gates)
        self.b_hh = nn.Parameter(torch.zeros(n, 1, gates))
        self.b_ih = nn.Parameter(torch.zeros(n, 1, gates)) if cell == "gru" else None  # GRU: r gates b_hh only
        # communication: per-module query/key/value/gate projections of h_bar and output projection
        if communication:
            width = comm_heads * (2 * comm_key_size + comm_value_size) + H
            self.comm = _uniform(n, H, width, fan_in=H)
            self.comm_bias = nn.Parameter(torch.zeros(n, 1, width))
            self.comm_out = _uniform(n, comm_heads * comm_value_size, H, fan_in=comm_heads * comm_value_size)
            scale = torch.ones(width)
            scale[: comm_heads * comm_key_size] = comm_key_size**-0.5
            self.register_buffer("comm_scale", scale, persistent=False)

    def fused(self) -> _Fused:
        # Acting: one forward call per env step; reuse while the weights are unchanged. Never while a CUDA graph is
        # captured: the graph must recompute the fused weights from the live parameters at every replay.
        # "Unchanged" is keyed on the process's optimizer step count (every torch optimizer step, whichever
        # kernel it runs: fused and foreach Adam do not bump a parameter's _version), plus each parameter's storage
        # and _version for edits outside an optimizer (load_state_dict, in-place changes under no_grad).
        if not torch.is_grad_enabled() and not _capturing():
            key = (_optimizer_steps, tuple((p.data_ptr(), p._version) for p in self.parameters()))
            cached = getattr(self, "_fused_cache", None)
            if cached is not None and cached[0] == key:
                return cached[1]
            fused = self._fuse()
            self._fused_cache = (key, fused)
            return fused
        self._fused_cache = None
        return self._fuse()

    def _fuse(self) -> _Fused:
        q_scale = self.key_size**-0.5
        hq_weight = torch.cat([self.w_hh, self.query * q_scale], -1)
        hq_bias = torch.cat([self.b_hh, self.query_bias * q_scale], -1)
        groups = ([] if self.lower_is_input else [self.kv_lower]) + ([] if self.kv_higher is None else [self.kv_higher])
        sources = tuple(self._source(w) for w in groups)
        if not self.communication:
            return _Fused(hq_weight, hq_bias, None, None, sources)
        return _Fused(hq_weight, hq_bias, self.comm * self.comm_scale, self.comm_bias * self.comm_scale, sources)

    def _source(self, kv_weight: Tensor) -> _Source:
        src, heads, dk, dv = kv_weight.shape[0], self.heads, self.key_size, self.value_size
        key, value = kv_weight.view(src, heads, dk + dv).split([dk, dv], -1)
        if src >= dv or not self.fold_values:
            return _Source(key.reshape(src, heads * dk), value.reshape(src, heads * dv), None)
        w_ih = self.w_ih.view(self.num_modules, heads, dv, -1)
        folded = torch.einsum("shv,nhvg->nhsg", value, w_ih).reshape(self.num_modules, heads * src, -1)
        return _Source(key.reshape(src, heads * dk), None, folded)

    def precompute_input(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Everything layer 0 needs from x [T, B, in], for all steps at once, as per-step lists.

        Keys [B, heads, key] and the input's contribution to every module's gates [n, B, heads, gates] (no heads
        dimension with one head): the input is one slot, so a module reads (attention weight) * value from it, and
        W_ih(value) can be computed ahead for every module.
        """
        T, B, _ = x.shape
        k, v = (x @ self.kv_lower).view(T, B, self.heads, -1).split([self.key_size, self.value_size], -1)
        w_ih = self.w_ih.view(self.num_modules, self.heads, self.value_size, -1)
        gates = torch.einsum("tbhd,nhdg->tnbhg", v, w_ih)
        if self.heads == 1:
            gates = gates.squeeze(3)
        return list(k.unbind(0)), list(gates.unbind(0))

    def step(self, w: _Fused, h: Tensor, c: Tensor | None, x_slot: tuple[Tensor, Tensor] | None,
             sources: Sequence[Tensor], preferred: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """One step. h, c: [n, B, H]; x_slot: the input's (key, gates) from `precompute_input`, or None;
        sources: the module slots [S, B, src] of each group in `w.sources` (lower layer, then higher);
        preferred: [n, B] bool, the selection recorded for this step while acting (see select_top_k), or None.

        Returns new h, new c, the active mask [n, B, 1] and input attention [n, B, heads, 1 + slots] (slot 0: null).
        """
        n, B, H = h.shape
        hq = torch.baddbmm(w.hq_bias, h, w.hq_weight)
        gh, q = hq.split([hq.shape[-1] - self.heads * self.key_size, self.heads * self.key_size], -1)
        q = q.view(n, B, self.heads, self.key_size)

        # input attention over [null, input?, module slots]; the null slot has logit 0 and value 0
        logits = []
        if x_slot is not None:
            logits.append((q * x_slot[0]).sum(-1, keepdim=True))
        for slots, source in zip(sources, w.sources):
            logits.append(_logits(q, (slots @ source.key).view(slots.shape[0], B, self.heads, self.key_size)))
        probs = F.pad(torch.cat(logits, -1) if len(logits) > 1 else logits[0], (1, 0)).softmax(-1)

        # selection: the top_k modules with the least attention on null (ties: lower index)
        active = select_top_k(probs[..., 0].mean(-1), self.top_k, preferred, self.tie_tolerance).unsqueeze(-1)

        # dynamics: every module's own cell, all modules at once; gi: what the modules read, through W_ih
        gi = gh if self.cell == "lstm" else self.b_ih  # LSTM: one sum of both parts; GRU keeps them apart
        if x_slot is not None:
            p = probs[..., 1:2]  # [n, B, heads, 1]
            gi = torch.addcmul(gi, p.squeeze(2), x_slot[1]) if self.heads == 1 else gi + (p * x_slot[1]).sum(2)
        start, values, value_probs = 2 if x_slot is not None else 1, [], []
        for slots, source in zip(sources, w.sources):
            p = probs[..., start : start + slots.shape[0]]
            start += slots.shape[0]
            if source.folded is not None:  # (sum_s p_s h_s) @ (W_v @ W_ih)
                gi = torch.baddbmm(gi, _mix(p, slots.unsqueeze(2)).flatten(2), source.folded)
            else:
                values.append((slots @ source.value).view(slots.shape[0], B, self.heads, self.value_size))
                value_probs.append(p)
        if values:  # (sum_s p_s W_v h_s) @ W_ih
            p, v = (value_probs[0], values[0]) if len(values) == 1 else (torch.cat(value_probs, -1), torch.cat(values))
            gi = torch.baddbmm(gi, _mix(p, v).flatten(2), self.w_ih)
        if self.cell == "lstm":
            i, f, o = gi[..., : 3 * H].sigmoid().chunk(3, -1)
            c_new = torch.addcmul(f * c, i, gi[..., 3 * H :].tanh())
            h_new = o * c_new.tanh()
            c = torch.where(active, c_new, c)
        else:
            r, z = (gi[..., : 2 * H] + gh[..., : 2 * H]).sigmoid().chunk(2, -1)
            cand = torch.addcmul(gi[..., 2 * H :], r, gh[..., 2 * H :]).tanh()
            h_new = torch.addcmul(cand, z, h - cand)

        if self.communication:
            h_new = self._communicate(w, torch.where(active, h_new, h))
        return torch.where(active, h_new, h), c, active, probs

    def _communicate(self, w: _Fused, h_bar: Tensor) -> Tensor:
        """h_bar + gate * attention of every module over all modules of the layer (masked by the caller)."""
        n, B, H = h_bar.shape
        heads, dk, dv = self.comm_heads, self.comm_key_size, self.comm_value_size
        proj = torch.baddbmm(w.comm_bias, h_bar, w.comm_weight)
        q, k, v, gate = proj.split([heads * dk, heads * dk, heads * dv, H], -1)
        q, k, v = q.view(n, B, heads, dk), k.view(n, B, heads, dk), v.view(n, B, heads, dv)
        read = _mix(_logits(q, k).softmax(-1), v).flatten(2)
        return torch.addcmul(h_bar, gate.sigmoid(), torch.bmm(read, self.comm_out))


def _step_all_layers(core: "ModularCore", weights: list[_Fused], x_key: Tensor, x_gate: Tensor, hs: list[Tensor],
                     cs: list[Tensor | None], preferred: list[Tensor] | None = None):
    """One time step of every layer of `core`: a plain function of the module, so that compiling it stores nothing
    in the module (deepcopy, pickle and load_state_dict behave as in eager mode)."""
    return core._step_layers(weights, x_key, x_gate, hs, cs, preferred)


def _step_compiled(core: "ModularCore", *args):
    """One time step of all layers through torch.compile in the core's compile mode (fuses its ~100 small ops;
    cores/compile.py: eager fallback if compiling fails)."""
    return call_compiled(_step_all_layers, core.compile_step, core, *args)


# Attention between module-first tensors; broadcast products beat einsum/bmm dispatch at these tiny sizes.
def _logits(q: Tensor, k: Tensor) -> Tensor:
    """q [n, B, heads, d] (pre-scaled), k [S, B, heads, d] -> [n, B, heads, S]."""
    return (q.unsqueeze(3) * k.permute(1, 2, 0, 3)).sum(-1)


def _mix(probs: Tensor, v: Tensor) -> Tensor:
    """probs [n, B, heads, S], v [S, B, heads, d] -> [n, B, heads, d]."""
    return (probs.unsqueeze(-1) * v.permute(1, 2, 0, 3)).sum(3)


def _per_layer(name: str, value: Any, num_layers: int) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != num_layers:
            raise ValueError(f"{name} has {len(value)} values for {num_layers} layers; give one value or {num_layers}")
        return list(value)
    return [value] * num_layers


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


class ModularCore(nn.Module):
    """BRIMs: `num_layers` modular layers with bottom-up and (with `top_down`) top-down attention (paper section 3).

    `top_down=False` gives hierarchical RIMs (the paper's H+A+M ablation); one layer gives RIMs. `top_down_slots`
    ("modules" or "layer") is how a lower layer reads the layer above (module docstring). Every option except
    `num_layers`, `top_down`, `top_down_slots` and `tie_tolerance` takes one value or a list with one value per layer
    (bottom first). State: per layer, bottom first, h and (LSTM) c, each [B, num_modules, module_size].

    Decisions: the core makes `decision_size` discrete choices per step (which modules are active, layer by layer,
    bottom first). With grad disabled (acting), each call leaves them in `last_decisions` [T, B, decision_size] bool;
    a replay of the same sequence passes them back as `decisions` and resolves every near tie as the rollout did
    (within `tie_tolerance`, see select_top_k), so kernels that round differently from the rollout's cannot flip a
    selection and PPO's first-minibatch ratio stays 1.
    With grad disabled, forward calls also accumulate statistics that `diagnostics()` returns and clears.
    `module_counts` lists the modules per layer, bottom first (for module views with `trace_modules`/`module_trace`).
    """

    def __init__(self, input_size: int, num_layers: int = 2, num_modules: int | Sequence[int] = 6,
                 top_k: int | Sequence[int] = 4, module_size: int | Sequence[int] = 32,
                 cell: str | Sequence[str] = "lstm", heads: int | Sequence[int] = 1,
                 input_key_size: int | Sequence[int] = 64, input_value_size: int | Sequence[int] = 64,
                 communication: bool | Sequence[bool] = True, comm_heads: int | Sequence[int] = 4,
                 comm_key_size: int | Sequence[int] = 16, comm_value_size: int | Sequence[int] = 16,
                 top_down: bool = True, top_down_slots: str = DEFAULT_TOP_DOWN_SLOTS,
                 tie_tolerance: float = DEFAULT_TIE_TOLERANCE, compile: bool | str = False):
        super().__init__()
        _check_positive("input_size", input_size)
        if isinstance(tie_tolerance, bool) or not isinstance(tie_tolerance, (int, float)) \
                or not 0 <= tie_tolerance < 1:
            raise ValueError(f"tie_tolerance must be a number in [0, 1), got {tie_tolerance!r}")
        if not (isinstance(compile, bool) or isinstance(compile, str) and compile in COMPILE_MODES):
            raise ValueError(f"compile must be true, false or one of {', '.join(COMPILE_MODES)}, got {compile!r}")
        _check_positive("num_layers", num_layers)
        _check_bool("top_down", top_down)
        if top_down_slots not in TOP_DOWN_SLOTS:
            raise ValueError(f"top_down_slots must be one of {', '.join(TOP_DOWN_SLOTS)}, got {top_down_slots!r}")
        L = num_layers
        opts = {name: _per_layer(name, value, L) for name, value in [
            ("num_modules", num_modules), ("top_k", top_k), ("module_size", module_size), ("cell", cell),
            ("heads", heads), ("input_key_size", input_key_size), ("input_value_size", input_value_size),
            ("communication", communication), ("comm_heads", comm_heads), ("comm_key_size", comm_key_size),
            ("comm_value_size", comm_value_size)]}
        for name, values in opts.items():
            for value in values:
                if name == "cell":
                    if value not in CELLS:
                        raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {value!r}")
                elif name == "communication":
                    _check_bool(name, value)
                else:
                    _check_positive(name, value)
        for n, k in zip(opts["num_modules"], opts["top_k"]):
            if k > n:
                raise ValueError(f"top_k ({k}) must not exceed num_modules ({n})")

        self.top_down, self.top_down_slots = top_down, top_down_slots
        sizes = [n * h for n, h in zip(opts["num_modules"], opts["module_size"])]
        self.layers = nn.ModuleList()
        for l in range(L):
            layer_opts = {name: values[l] for name, values in opts.items()}
            lower = input_size if l == 0 else opts["module_size"][l - 1]
            # top-down source width: one module ("modules": each is a slot) or the whole layer ("layer": one slot)
            higher = None
            if top_down and l + 1 < L:
                higher = sizes[l + 1] if top_down_slots == "layer" else opts["module_size"][l + 1]
            self.layers.append(ModularLayer(lower, higher, **layer_opts, lower_is_input=l == 0,
                                            tie_tolerance=float(tie_tolerance)))
        self.output_size = sum(sizes)
        self.module_counts: list[int] = list(opts["num_modules"])  # modules per layer, bottom first
        self.decision_size = sum(opts["num_modules"])  # active flags per step, layer by layer
        self.last_decisions: Tensor | None = None
        # the torch.compile mode each time step runs through (see _step_compiled), or None: eager
        self.compile_step = "default" if compile is True else (compile or None)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> tuple[Tensor, ...]:
        state = []
        for layer in self.layers:
            shape = (batch_size, layer.num_modules, layer.module_size)
            state += [torch.zeros(shape, device=device) for _ in range(2 if layer.cell == "lstm" else 1)]
        return tuple(state)

    def forward(self, x: Tensor, state: tuple[Tensor, ...], episode_starts: Tensor,
                decisions: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The core contract's call; `decisions` [T, B, decision_size] bool: the `last_decisions` of the acting
        calls that made this sequence, for a replay that must select the same modules (see the class docstring)."""
        T, B = x.shape[:2]
        layers = list(self.layers)
        L = len(layers)
        top_down = self.top_down and L > 1
        weights = [layer.fused() for layer in layers]
        x_keys, x_gates = layers[0].precompute_input(x)
        record = not torch.is_grad_enabled()
        if _capturing():  # finding the starts reads them back to the host: reset at every step instead (same result)
            resets = range(T)
        else:
            resets = set(segment_bounds(episode_starts)[:-1])
        preferred = self._split_decisions(decisions, T, B)

        hs, cs = self._unpack(state)
        outputs: list[list[Tensor]] = [[] for _ in layers]
        made: list[Tensor] = []  # this call's decisions, per step [B, decision_size]
        for t in range(T):
            if t in resets:
                hs, cs = self._reset(episode_starts[t], hs, cs)
            step = _step_all_layers if self.compile_step is None else _step_compiled
            hs, cs, actives, probs = step(self, weights, x_keys[t], x_gates[t], hs, cs,
                                          None if preferred is None else [p[t] for p in preferred])
            for l in range(L):
                outputs[l].append(hs[l])
                if record:
                    self._record(l, actives[l], probs[l], has_higher=top_down and l + 1 < L)
            if record:
                made.append(torch.cat([a[..., 0] for a in actives]).T)
        if record:
            self.last_decisions = torch.stack(made)
            stats = self._acting_stats(x.device)  # [samples, active count per module, to_higher per layer]
            stats[0].add_(T * B)
            stats[1 : 1 + self.decision_size].add_(self.last_decisions.sum((0, 1)))

        # [T, n, B, H] -> [T, B, n * H] per layer, bottom layer first
        y = torch.cat([torch.stack(out).transpose(1, 2).flatten(2) for out in outputs], -1)
        return y, self._pack(hs, cs)

    def _split_decisions(self, decisions: Tensor | None, T: int, B: int) -> list[Tensor] | None:
        """[T, B, decision_size] -> per layer [T, n, B] (module-first, as the steps use them)."""
        if decisions is None:
            return None
        if decisions.shape != (T, B, self.decision_size) or decisions.dtype != torch.bool:
            raise ValueError(f"decisions must be bool [{T}, {B}, {self.decision_size}], got {decisions.dtype} "
                             f"{list(decisions.shape)}")
        sizes = [layer.num_modules for layer in self.layers]
        return [d.permute(0, 2, 1) for d in decisions.split(sizes, -1)]

    def _step_layers(self, weights: list[_Fused], x_key: Tensor, x_gate: Tensor, hs: list[Tensor],
                     cs: list[Tensor | None], preferred: list[Tensor] | None = None):
        """One time step of every layer, bottom-up: layer l reads layer l-1 at t and layer l+1 at t-1.
        preferred: per layer the [n, B] selection recorded for this step while acting, or None."""
        layers = list(self.layers)
        L = len(layers)
        hs, cs = list(hs), list(cs)
        actives, probs = [], []
        for l, layer in enumerate(layers):
            x_slot = (x_key, x_gate) if l == 0 else None
            sources = [] if l == 0 else [hs[l - 1]]  # layer l-1 is already at t: one slot per module
            if self.top_down and l + 1 < L:  # layer l+1 is still at t-1
                if self.top_down_slots == "layer":  # [n, B, H] -> one slot [1, B, n * H], module 0 first
                    sources.append(hs[l + 1].transpose(0, 1).flatten(1).unsqueeze(0))
                else:
                    sources.append(hs[l + 1])
            hs[l], cs[l], active, prob = layer.step(weights[l], hs[l], cs[l], x_slot, sources,
                                                    None if preferred is None else preferred[l])
            actives.append(active)
            probs.append(prob)
        return hs, cs, actives, probs

    # state layout: the contract's batch-first tuple <-> module-first lists per layer
    def _unpack(self, state: tuple[Tensor, ...]) -> tuple[list[Tensor], list[Tensor | None]]:
        hs, cs, i = [], [], 0
        for layer in self.layers:
            hs.append(state[i].transpose(0, 1).contiguous())
            cs.append(state[i + 1].transpose(0, 1).contiguous() if layer.cell == "lstm" else None)
            i += 2 if layer.cell == "lstm" else 1
        return hs, cs

    def _pack(self, hs: list[Tensor], cs: list[Tensor | None]) -> tuple[Tensor, ...]:
        return tuple(s.transpose(0, 1) for h, c in zip(hs, cs) for s in ((h,) if c is None else (h, c)))

    @staticmethod
    def _reset(starts: Tensor, hs: list[Tensor], cs: list[Tensor | None]):
        """Zero the module-first states [n, B, H] of the envs whose episode starts."""
        hs = list(zero_where(starts, *hs, batch_dim=1))
        cs = [None if c is None else zero_where(starts, c, batch_dim=1)[0] for c in cs]
        return hs, cs

    # Diagnostics: device buffers that acting adds into in place, read as floats only in diagnostics(). In-place
    # adds into buffers allocated before a CUDA graph is captured keep counting at every replay of the graph, so a
    # captured policy step gathers them too (capturable_diagnostics).
    capturable_diagnostics = True
    capturable_replay = True  # forward runs without host synchronisation while a CUDA graph is captured
    # float64 [1 + decision_size + num_layers]: samples, each module's active count (layer by layer, as in the
    # decisions), each layer's summed attention on the layer above
    _stats: Tensor | None = None

    def _clear_diagnostics(self) -> None:
        if self._stats is not None:
            self._stats.zero_()

    def _acting_stats(self, device: torch.device) -> Tensor:
        if self._stats is None or self._stats.device != device:
            self._stats = torch.zeros(1 + self.decision_size + len(self.layers), dtype=torch.float64, device=device)
        return self._stats

    def _record(self, l: int, active: Tensor, probs: Tensor, has_higher: bool) -> None:
        to_higher = None
        if has_higher:
            lower_slots = 1 + (1 if l == 0 else self.layers[l - 1].num_modules)  # null + lower sources
            to_higher = probs[..., lower_slots:].sum(-1)  # [n, B, heads]: each module's attention on layer l+1
            self._acting_stats(probs.device)[1 + self.decision_size + l].add_(to_higher.sum())
        if self._trace is not None:
            self._trace[l].append((active[..., 0].T, None if to_higher is None else to_higher.mean(-1).T))

    # module trace: an optional per-step record for module views (evaluate's modules.png and video panel). It reads
    # what the (possibly compiled) step already returns, after the step, so it changes nothing about the step.
    _trace: list[list[tuple[Tensor, Tensor | None]]] | None = None

    def trace_modules(self, enabled: bool = True) -> None:
        """Start (or stop) recording, at every acting step (grad disabled), which modules of every layer are active
        and how much attention each module gives the higher layer; `module_trace()` returns the record."""
        self._trace = [[] for _ in self.layers] if enabled else None

    def module_trace(self) -> list[dict[str, Tensor | None]]:
        """Per layer, bottom first, the steps recorded since tracing started or since the last call (which clears
        them): "active" bool [T, B, num_modules] and "to_higher" float [T, B, num_modules] (the module's input
        attention on the higher layer's slots, averaged over heads; None for a layer without top-down input)."""
        if self._trace is None:
            raise RuntimeError("module tracing is off; call trace_modules() first")
        result = []
        for steps in self._trace:
            active = torch.stack([a for a, _ in steps]) if steps else torch.zeros(0, 0, 0, dtype=torch.bool)
            has_higher = bool(steps) and steps[0][1] is not None
            result.append({"active": active, "to_higher": torch.stack([h for _, h in steps]) if has_higher else None})
        self._trace = [[] for _ in self.layers]
        return result

    def diagnostics(self) -> dict[str, float]:
        """Per-module active fractions and, with top-down, the lower layers' attention share on the higher layer."""
        stats: dict[str, float] = {}
        if self._stats is None:
            return stats
        count, *rest = self._stats.tolist()
        if count:
            active, to_higher = rest[: self.decision_size], rest[self.decision_size :]
            top_down = self.top_down and len(self.layers) > 1
            start = 0
            for l, layer in enumerate(self.layers):
                for k in range(layer.num_modules):
                    stats[f"layer{l}/module{k}_active"] = active[start + k] / count
                start += layer.num_modules
                if top_down and l + 1 < len(self.layers):
                    share = to_higher[l] / (count * layer.heads * layer.num_modules)
                    stats[f"layer{l}/attention_to_higher"] = share
        self._clear_diagnostics()
        return stats


class RIMsCore(ModularCore):
    """RIMs (Goyal et al. 2019; paper section 2): one modular layer reading the input. State (h, c) or (h,)."""

    def __init__(self, input_size: int, num_modules: int = 6, top_k: int = 4, module_size: int = 32,
                 cell: str = "lstm", heads: int = 1, input_key_size: int = 64, input_value_size: int = 128,
                 communication: bool = True, comm_heads: int = 4, comm_key_size: int = 16, comm_value_size: int = 16,
                 tie_tolerance: float = DEFAULT_TIE_TOLERANCE, compile: bool | str = False):
        super().__init__(input_size, num_layers=1, num_modules=num_modules, top_k=top_k, module_size=module_size,
                         cell=cell, heads=heads, input_key_size=input_key_size, input_value_size=input_value_size,
                         communication=communication, comm_heads=comm_heads, comm_key_size=comm_key_size,
                         comm_value_size=comm_value_size, top_down=False, tie_tolerance=tie_tolerance,
                         compile=compile)
