"""RIMs and BRIMs cores (paper eq. 4-9): recurrent layers made of modules that talk through attention.

A `ModularCore` is a stack of layers; RIMs is one layer, BRIMs several. Each time step runs the layers bottom-up, and
each layer does:

1. Input attention (eq. 4-5, 8): every module queries a null slot (zeros) and its sources: the input x_t (layer 0) or
   the modules of layer l-1 at t, plus, with `top_down`, layer l+1 at t-1: each of its modules as its own slot through
   one shared projection (`top_down_slots="modules"`, the paper's text) or the whole layer as ONE slot with its own
   projection of the concatenated module states (`top_down_slots="layer"`, the authors' code).
2. Selection: the `top_k` modules that put the least attention (averaged over heads) on the null slot are active;
   ties go to the lower module index. The mask is hard. A replay may pass the selections recorded while acting
   (`decisions`): a recorded module then wins any near tie, within `tie_tolerance` (see selection.select_top_k).
3. Dynamics (eq. 6): every module steps its own LSTM/GRU on what it read; all modules in one batched matmul.
4. Communication (eq. 7, 9): active modules read all modules of their layer (multi-head) and add it through a gate.

Inactive modules keep h and c bit for bit (torch.where), so no gradient reaches a candidate update they skipped.
The output y_t concatenates every layer's module states, bottom layer first.

This file is the maths, written one step at a time (`ModularLayer.step`, `ModularCore.step_by_step`): acting runs
it, and it is the reference every faster path is tested against. Training (grad enabled) runs the same function
through modular_sequence.py, whose backward is written by hand with the state-independent work out of the time
loop. Internally states are module-first ([n, B, H]) so per-module weights ([n, in, out]) apply with one bmm.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from brims_rl.cores.attention import scores, weighted
from brims_rl.cores.compile import COMPILE_MODES, call_compiled
from brims_rl.cores.modular_sequence import (GroupPlan, LayerPlan, LayerWeights, SequencePlan, SequenceRunner,
                                             intern_plan, reset_states, run_sequence)
from brims_rl.cores.module_activity import ModuleActivity
from brims_rl.cores.selection import select_top_k

CELLS = {"lstm": 4, "gru": 3}  # cell -> number of gate blocks
# Null-attention scores lie in [0, 1]; a replay in other kernels moves them by a few float32 roundings (eps 1.2e-7)
# per op. 1e-5 (~84 eps) is far above that and far below any gap that reflects a real difference between modules.
DEFAULT_TIE_TOLERANCE = 1e-5
TOP_DOWN_SLOTS = ("modules", "layer")  # how a lower layer reads the layer above (see the module docstring)
# Configs stored without the option were trained with "modules" and load as such (config.STORED_DEFAULTS).
DEFAULT_TOP_DOWN_SLOTS = "layer"


def _uniform(*shape: int, fan_in: int) -> nn.Parameter:
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


def _orthogonal(n: int, rows: int, cols: int) -> nn.Parameter:
    weight = torch.empty(n, rows, cols)
    for k in range(n):  # each module gets its own orthogonal matrix (CleanRL's LSTM init)
        nn.init.orthogonal_(weight[k])
    return nn.Parameter(weight)


class ModularLayer(nn.Module):
    """One RIMs layer: `num_modules` modules of `module_size`, `top_k` of them active per step.

    Queries are per-module projections of the module's own state (each module learns what it looks for, as in RIMs).
    Keys and values are shared projections of the source slots (a source slot is the input or a module of another
    layer); they have no bias, so the null slot's key and value are exactly zero and its logit is 0.
    """

    def __init__(self, lower_size: int, higher_size: int | None, num_modules: int, top_k: int, module_size: int,
                 cell: str, heads: int, input_key_size: int, input_value_size: int, communication: bool,
                 comm_heads: int, comm_key_size: int, comm_value_size: int, lower_is_input: bool = True,
                 tie_tolerance: float = 0.0):
        super().__init__()
        self.tie_tolerance = tie_tolerance  # how near a tie a recorded selection wins in a replay (select_top_k)
        self.lower_is_input = lower_is_input  # layer 0 reads x (precomputed for all steps); others read modules
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

    def slot_weights(self) -> list[Tensor]:
        """The key|value projections of the module-slot groups this layer reads: layer l-1 (l > 0), then the layer
        above (top-down)."""
        return ([] if self.lower_is_input else [self.kv_lower]) + ([] if self.kv_higher is None else [self.kv_higher])

    def precompute_input(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Everything layer 0 needs from x [T, B, in], for all steps at once: keys [T, B, heads, key] and the input's
        contribution to every module's gates [T, n, B, heads, gates]. The input is one slot, so a module reads
        (attention weight) * value from it, and W_ih(value) can be computed ahead for every module."""
        T, B, _ = x.shape
        k, v = (x @ self.kv_lower).view(T, B, self.heads, -1).split([self.key_size, self.value_size], -1)
        w_ih = self.w_ih.view(self.num_modules, self.heads, self.value_size, -1)
        return k, torch.einsum("tbhd,nhdg->tnbhg", v, w_ih)

    def step(self, h: Tensor, c: Tensor | None, x_key: Tensor | None, x_gate: Tensor | None,
             sources: Sequence[Tensor], preferred: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """One step from the (already reset) state h, c [n, B, H]. x_key [B, heads, key] and x_gate [n, B, heads,
        gates]: the input's slot from `precompute_input` (layer 0), else None; sources: the module slots [S, B, src]
        of each group of `slot_weights()`; preferred: [n, B] bool, the selection recorded for this step while acting
        (see select_top_k), or None.

        Returns new h, new c, the active mask [n, B] and the input attention [n, B, heads, 1 + slots] (slot 0: null).
        """
        n, B, H = h.shape
        heads, dk, dv = self.heads, self.key_size, self.value_size
        gh = torch.baddbmm(self.b_hh, h, self.w_hh)
        q = (torch.baddbmm(self.query_bias, h, self.query) * dk**-0.5).view(n, B, heads, dk)

        # input attention over [null, input?, module slots]; the null slot has logit 0 and value 0
        logits, values = [], []
        if x_key is not None:
            logits.append((q * x_key).sum(-1, keepdim=True))
        for slots, weight in zip(sources, self.slot_weights()):
            k, v = (slots @ weight).view(slots.shape[0], B, heads, dk + dv).split([dk, dv], -1)
            logits.append(scores(q, k))
            values.append(v)
        probs = F.pad(torch.cat(logits, -1), (1, 0)).softmax(-1)
        active = select_top_k(probs[..., 0].mean(-1), self.top_k, preferred, self.tie_tolerance)
        a = active.unsqueeze(-1)

        # dynamics: every module's own cell, all modules at once; gi: what the modules read, through W_ih
        gi = gh if self.cell == "lstm" else self.b_ih  # LSTM: one sum of both parts; GRU keeps them apart
        if x_key is not None:
            gi = gi + (probs[..., 1:2] * x_gate).sum(2)
        if values:  # (sum_s p_s W_v h_s) @ W_ih
            read = weighted(probs[..., probs.shape[-1] - sum(v.shape[0] for v in values):], torch.cat(values))
            gi = gi + torch.bmm(read.flatten(2), self.w_ih)
        if self.cell == "lstm":
            i, f, o = gi[..., : 3 * H].sigmoid().chunk(3, -1)
            c_new = torch.addcmul(f * c, i, gi[..., 3 * H:].tanh())
            h_new = o * c_new.tanh()
            c = torch.where(a, c_new, c)
        else:
            r, z = (gi[..., : 2 * H] + gh[..., : 2 * H]).sigmoid().chunk(2, -1)
            cand = torch.addcmul(gi[..., 2 * H:], r, gh[..., 2 * H:]).tanh()
            h_new = torch.addcmul(cand, z, h - cand)

        if self.communication:
            h_new = self._communicate(torch.where(a, h_new, h))
        return torch.where(a, h_new, h), c, active, probs

    def _communicate(self, h_bar: Tensor) -> Tensor:
        """h_bar + gate * attention of every module over all modules of the layer (masked by the caller)."""
        n, B, H = h_bar.shape
        heads, dk, dv = self.comm_heads, self.comm_key_size, self.comm_value_size
        proj = torch.baddbmm(self.comm_bias, h_bar, self.comm)
        q, k, v, gate = proj.split([heads * dk, heads * dk, heads * dv, H], -1)
        q, k, v = q.view(n, B, heads, dk) * dk**-0.5, k.view(n, B, heads, dk), v.view(n, B, heads, dv)
        read = weighted(scores(q, k).softmax(-1), v).flatten(2)
        return torch.addcmul(h_bar, gate.sigmoid(), torch.bmm(read, self.comm_out))

    # ---- the sequence path's view of this layer (modular_sequence.py) ------------------------------------------
    def sequence_plan(self, groups: tuple[GroupPlan, ...]) -> LayerPlan:
        return LayerPlan(modules=self.num_modules, size=self.module_size, cell=self.cell, heads=self.heads,
                         key_size=self.key_size, value_size=self.value_size, top_k=self.top_k,
                         tie_tolerance=self.tie_tolerance, reads_input=self.lower_is_input, groups=groups,
                         communication=self.communication, comm_heads=self.comm_heads,
                         comm_key_size=self.comm_key_size, comm_value_size=self.comm_value_size)

    def sequence_weights(self, plan: LayerPlan) -> LayerWeights:
        """The weights in the layout the sequence path's steps use, built with autograd once per call: recurrent
        gates and queries in one matrix (key scale folded in), keys and values split per group, a group of narrow
        slots read through W_v @ W_ih (the product taken once per call)."""
        n, heads, dk, dv = self.num_modules, self.heads, self.key_size, self.value_size
        scale = dk**-0.5
        keys, reads = [], []
        w_ih = self.w_ih.view(n, heads, dv, -1)
        for group, weight in zip(plan.groups, self.slot_weights()):
            key, value = weight.view(group.width, heads, dk + dv).split([dk, dv], -1)
            keys.append(key.reshape(group.width, heads * dk).clone())  # no two inputs of a compiled loop alias
            if group.folded:
                reads.append(torch.einsum("shv,nhvg->nhsg", value, w_ih).reshape(n, heads * group.width, -1))
            else:
                reads.append(value.reshape(group.width, heads * dv).clone())
        comm = (None, None, None)
        if self.communication:
            width = self.comm.shape[-1]
            cdk = self.comm_heads * self.comm_key_size
            col_scale = torch.ones(width, dtype=self.comm.dtype, device=self.comm.device)
            col_scale[:cdk] = self.comm_key_size**-0.5
            comm = (self.comm * col_scale, self.comm_bias * col_scale, self.comm_out)
        return LayerWeights(hq_weight=torch.cat([self.w_hh, self.query * scale], -1),
                            hq_bias=torch.cat([self.b_hh, self.query_bias * scale], -1), b_ih=self.b_ih,
                            keys=tuple(keys), reads=tuple(reads), w_ih=self.w_ih if plan.unfolded else None,
                            comm_weight=comm[0], comm_bias=comm[1], comm_out=comm[2])


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
    `num_layers`, `top_down`, `top_down_slots`, `tie_tolerance` and `compile` takes one value or a list with one
    value per layer (bottom first). State: per layer, bottom first, h and (LSTM) c, each [B, num_modules,
    module_size].

    `forward` runs `step_by_step` when no gradient is needed (acting) and the sequence path (modular_sequence.py)
    when one is (training); both compute the same function.

    Decisions: the core makes `decision_size` discrete choices per step (which modules are active, layer by layer,
    bottom first). With grad disabled (acting), each call leaves them in `last_decisions` [T, B, decision_size] bool;
    a replay of the same sequence passes them back as `decisions` and resolves every near tie as the rollout did
    (within `tie_tolerance`, see select_top_k), so kernels that round differently from the rollout's cannot flip a
    selection and PPO's first-minibatch ratio stays 1.
    With grad disabled, forward calls also accumulate statistics that `diagnostics()` returns and clears, and, after
    `trace_modules()`, a per-step record for module views (module_activity.py). `module_counts` lists the modules
    per layer, bottom first.
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
        plans = []
        for l in range(L):
            layer_opts = {name: values[l] for name, values in opts.items()}
            lower = input_size if l == 0 else opts["module_size"][l - 1]
            dv = opts["input_value_size"][l]
            groups = []
            if l > 0:  # layer l-1's modules, one slot each
                groups.append(GroupPlan("lower", slots=opts["num_modules"][l - 1], width=lower, folded=lower < dv,
                                        whole_layer=False))
            # top-down source width: one module ("modules": each is a slot) or the whole layer ("layer": one slot)
            higher = None
            if top_down and l + 1 < L:
                whole = top_down_slots == "layer"
                higher = sizes[l + 1] if whole else opts["module_size"][l + 1]
                groups.append(GroupPlan("higher", slots=1 if whole else opts["num_modules"][l + 1], width=higher,
                                        folded=higher < dv, whole_layer=whole))
            layer = ModularLayer(lower, higher, **layer_opts, lower_is_input=l == 0,
                                 tie_tolerance=float(tie_tolerance))
            self.layers.append(layer)
            plans.append(layer.sequence_plan(tuple(groups)))
        self._plan = intern_plan(SequencePlan(tuple(plans)))
        self.output_size = sum(sizes)
        self.module_counts: list[int] = list(opts["num_modules"])  # modules per layer, bottom first
        self.decision_size = sum(opts["num_modules"])  # active flags per step, layer by layer
        self.last_decisions: Tensor | None = None
        # the torch.compile mode the steps run through (both paths; cores/compile.py), or None: eager
        self.compile_step = "default" if compile is True else (compile or None)
        self._activity = ModuleActivity(self.module_counts, list(opts["heads"]),
                                        [top_down and l + 1 < L for l in range(L)])

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
        if decisions is not None and (decisions.shape != (T, B, self.decision_size) or decisions.dtype != torch.bool):
            raise ValueError(f"decisions must be bool [{T}, {B}, {self.decision_size}], got {decisions.dtype} "
                             f"{list(decisions.shape)}")
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return self._sequence(x, state, episode_starts, decisions)
        return self.step_by_step(x, state, episode_starts, decisions)

    def step_by_step(self, x: Tensor, state: tuple[Tensor, ...], episode_starts: Tensor,
                     decisions: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The plain computation, one time step after the other (autograd differentiates it when grad is on).
        With grad disabled it also records decisions, diagnostics and the module trace."""
        T, B = x.shape[:2]
        layers = list(self.layers)
        x_keys, x_gates = layers[0].precompute_input(x)
        preferred = self._split_decisions(decisions, T, B)
        record = not torch.is_grad_enabled()
        hs, cs = self._unpack(state)
        outputs: list[list[Tensor]] = [[] for _ in layers]
        made: list[Tensor] = []  # this call's decisions, per step [B, decision_size]
        step = _step_all_layers if self.compile_step is None else _step_compiled
        for t in range(T):
            hs, cs, actives, probs = step(self, x_keys[t], x_gates[t], episode_starts[t],
                                          None if preferred is None else [p[t] for p in preferred], hs, cs)
            for l in range(len(layers)):
                outputs[l].append(hs[l])
            if record:
                made.append(self._activity.record_step(actives, probs))
        if record:
            self.last_decisions = torch.stack(made)
        # [T, n, B, H] -> [T, B, n * H] per layer, bottom layer first
        y = torch.cat([torch.stack(out).transpose(1, 2).flatten(2) for out in outputs], -1)
        return y, self._pack(hs, cs)

    def _sequence(self, x: Tensor, state: tuple[Tensor, ...], episode_starts: Tensor,
                  decisions: Tensor | None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The training path: the same function as step_by_step, with its own backward (modular_sequence.py)."""
        layers = list(self.layers)
        weights = [layer.sequence_weights(plan) for layer, plan in zip(layers, self._plan.layers)]
        x_keys, x_gates = layers[0].precompute_input(x)
        hs, cs = self._unpack(state)
        runner = SequenceRunner(self._plan, self.compile_step)
        ys, hs, cs = run_sequence(runner, weights, x_keys, x_gates, hs, cs, episode_starts, decisions)
        y = torch.cat([y.permute(0, 2, 1, 3).flatten(2) for y in ys], -1)
        return y, self._pack(hs, cs)

    def _split_decisions(self, decisions: Tensor | None, T: int, B: int) -> list[Tensor] | None:
        """[T, B, decision_size] -> per layer [T, n, B] (module-first, as the steps use them)."""
        if decisions is None:
            return None
        return [d.permute(0, 2, 1) for d in decisions.split(self.module_counts, -1)]

    def _step_layers(self, x_key: Tensor, x_gate: Tensor, hs: list[Tensor], cs: list[Tensor | None],
                     preferred: list[Tensor] | None = None):
        """One time step of every layer, bottom-up: layer l reads layer l-1 at t and layer l+1 at t-1.
        preferred: per layer the [n, B] selection recorded for this step while acting, or None."""
        layers = list(self.layers)
        L = len(layers)
        hs, cs = list(hs), list(cs)
        actives, probs = [], []
        for l, layer in enumerate(layers):
            sources = [] if l == 0 else [hs[l - 1]]  # layer l-1 is already at t: one slot per module
            if self.top_down and l + 1 < L:  # layer l+1 is still at t-1
                if self.top_down_slots == "layer":  # [n, B, H] -> one slot [1, B, n * H], module 0 first
                    sources.append(hs[l + 1].transpose(0, 1).flatten(1).unsqueeze(0))
                else:
                    sources.append(hs[l + 1])
            hs[l], cs[l], active, prob = layer.step(hs[l], cs[l], x_key if l == 0 else None,
                                                    x_gate if l == 0 else None, sources,
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

    # Optional core features (cores/__init__.py): acting statistics and the module trace, gathered by in-place adds
    # into buffers made before a CUDA graph capture (so a captured policy step keeps counting), and a replay without
    # host synchronisation (so a PPO minibatch can be one captured graph).
    capturable_diagnostics = True
    capturable_replay = True

    def diagnostics(self) -> dict[str, float]:
        """Per-module active fractions and, with top-down, the lower layers' attention share on the higher layer."""
        return self._activity.diagnostics()

    def trace_modules(self, enabled: bool = True) -> None:
        """Start (or stop) recording each acting step's active modules and attention on the higher layer."""
        self._activity.trace_modules(enabled)

    def module_trace(self) -> list[dict[str, Tensor | None]]:
        """Per layer, the steps recorded since tracing started or the last call: see ModuleActivity.module_trace."""
        return self._activity.module_trace()


def _step_all_layers(core: ModularCore, x_key: Tensor, x_gate: Tensor, start: Tensor,
                     preferred: list[Tensor] | None, hs: list[Tensor], cs: list[Tensor | None]):
    """One time step of every layer of `core`, the states reset first where `start` [B] is set: a plain function of
    the module, so that compiling it stores nothing in the module (deepcopy, pickle and load_state_dict behave as in
    eager mode)."""
    hs, cs = reset_states(start, hs, cs)
    return core._step_layers(x_key, x_gate, hs, cs, preferred)


def _step_compiled(core: ModularCore, *args):
    """One time step of all layers through torch.compile in the core's compile mode (fuses its ~100 small ops;
    cores/compile.py: eager fallback, announced once, if compiling fails)."""
    return call_compiled(_step_all_layers, core.compile_step, args[0].device, core, *args)


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
