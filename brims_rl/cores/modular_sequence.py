"""The training path of RIMs/BRIMs: a whole sequence as one autograd operation with its own backward.

`ModularCore.step_by_step` (modular.py) is the plain computation: the paper's equations one time step at a time,
differentiated by autograd. Over a PPO minibatch that means T steps of ~50 small ops forward and ~100 backward, each
with its autograd node, and every weight gradient accumulated T times. This module computes the same function and
the same gradients with the work that does not depend on the recurrent state taken out of the time loop, as cuDNN
does for its RNNs:

- before the loop, with autograd: the layer-0 input's keys and its contribution to every module's gates, for all
  steps at once (`ModularLayer.precompute_input`), and the weights fused into the layout the steps use
  (`sequence_weights`: recurrent gates and queries in one matrix, key scales folded in, narrow slots read through
  `W_v @ W_ih` folded once per call);
- in the loop, forward: only what needs the previous state, with each step's intermediates kept;
- in the loop, backward (`_backward_step`, derived by hand): the gradient of the state, and per step the gradient of
  each matmul's output ("rows"), nothing else;
- after the loop: every weight gradient as one batched GEMM over all T x B rows (`_weight_gradients`), and autograd
  carries the gradients of the fused weights and precomputed inputs back to the parameters.

Both loops run in chunks of `chunk` steps. With `compile`, each chunk is one torch.compile'd graph (forward and
backward each), so a step costs a few fused kernels instead of a few hundred dispatches. Episode resets, top-k
selection, recorded decisions (`preferred`) and inactive modules (kept bit for bit) follow modular.py exactly;
`tests/test_modular_sequence.py` checks outputs, final state and every gradient against `step_by_step` in float64.

Tensors are module-first per layer ([n, B, ...]) as in modular.py.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import Tensor
from torch._higher_order_ops.scan import scan
from torch.autograd.function import once_differentiable

from brims_rl.cores.attention import scores, weighted, weighted_by_slot
from brims_rl.cores.compile import call_compiled
from brims_rl.cores.selection import select_top_k


# ---- the static description of a core's step (hashable: compiled graphs are shared by equal plans) ----------------
@dataclass(frozen=True)
class GroupPlan:
    """One group of module slots a layer reads: the layer below at t, or (top-down) the layer above at t-1."""

    source: str  # "lower" | "higher"
    slots: int  # S: slots in the group
    width: int  # a slot's width
    folded: bool  # read through W_v @ W_ih folded per call (narrow slots), else through values then W_ih
    whole_layer: bool  # "higher" only: the whole higher layer is one slot (top_down_slots="layer")


@dataclass(frozen=True)
class LayerPlan:
    modules: int
    size: int
    cell: str
    heads: int
    key_size: int
    value_size: int
    top_k: int
    tie_tolerance: float
    reads_input: bool  # layer 0: the input is one slot, precomputed for all steps
    groups: tuple[GroupPlan, ...]
    communication: bool
    comm_heads: int
    comm_key_size: int
    comm_value_size: int

    @property
    def gates(self) -> int:
        return (4 if self.cell == "lstm" else 3) * self.size

    @property
    def unfolded(self) -> bool:
        return any(not g.folded for g in self.groups)


@dataclass(frozen=True)
class SequencePlan:
    layers: tuple[LayerPlan, ...]


class LayerWeights(NamedTuple):
    """A layer's weights in the layout the steps use (built with autograd, once per call)."""

    hq_weight: Tensor  # [n, H, gates + heads * key]: recurrent gate inputs | queries (key scale folded in)
    hq_bias: Tensor  # [n, 1, gates + heads * key]
    b_ih: Tensor | None  # [n, 1, gates] (GRU)
    keys: tuple[Tensor, ...]  # per group [width, heads * key]
    reads: tuple[Tensor, ...]  # per group: folded [n, heads * width, gates] or values [width, heads * value]
    w_ih: Tensor | None  # [n, heads * value, gates] (only with an unfolded group)
    comm_weight: Tensor | None  # [n, H, queries + keys + values + H] (query scale folded in)
    comm_bias: Tensor | None
    comm_out: Tensor | None  # [n, comm_heads * comm_value, H]


def _flatten(weights: Sequence[LayerWeights]) -> list[Tensor]:
    flat: list[Tensor] = []
    for w in weights:
        for value in w:
            if isinstance(value, tuple):
                flat.extend(value)
            elif value is not None:
                flat.append(value)
    return flat


def _unflatten(plan: SequencePlan, flat: Sequence[Tensor]) -> list[LayerWeights]:
    it = iter(flat)
    layers = []
    for p in plan.layers:
        hq_weight, hq_bias = next(it), next(it)
        b_ih = next(it) if p.cell == "gru" else None
        keys = tuple(next(it) for _ in p.groups)
        reads = tuple(next(it) for _ in p.groups)
        w_ih = next(it) if p.unfolded else None
        comm = (next(it), next(it), next(it)) if p.communication else (None, None, None)
        layers.append(LayerWeights(hq_weight, hq_bias, b_ih, keys, reads, w_ih, *comm))
    return layers


def reset_states(start: Tensor, hs: Sequence[Tensor], cs: Sequence[Tensor | None]):
    """Zero the rows (batch dim 1 of module-first [n, B, H] states) where `start` [B] is set."""
    mask = start.view(1, -1, 1)
    return ([torch.where(mask, 0.0, h) for h in hs], [None if c is None else torch.where(mask, 0.0, c) for c in cs])


_plans: dict[SequencePlan, SequencePlan] = {}


def intern_plan(plan: SequencePlan) -> SequencePlan:
    """One object per distinct plan, so that cores of the same configuration share their compiled graphs."""
    return _plans.setdefault(plan, plan)


# What a step keeps only for the weight gradients after the loop: the backward loop does not read it, so it is left
# out of that loop's inputs (a reversed scan copies its inputs in reverse order first).
AFTER_LOOP = frozenset({"mixes", "mix_values", "h_bar", "read"})


def _in_loop(saved: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in layer.items() if key not in AFTER_LOOP} for layer in saved]


# ---- one time step, forward --------------------------------------------------------------------------------------
def _layer_forward(p: LayerPlan, w: LayerWeights, h: Tensor, c: Tensor | None, x_key: Tensor | None,
                   x_gate: Tensor | None, slot_groups: Sequence[Tensor], preferred: Tensor | None):
    """One layer, one step, from the (already reset) state h, c [n, B, H]. Returns h, c after the step and what the
    backward needs (a dict of tensors)."""
    n, B, H = h.shape
    nh, dk, dv, G = p.heads, p.key_size, p.value_size, p.gates
    hq = torch.baddbmm(w.hq_bias, h, w.hq_weight)
    gh, q = hq.split([G, nh * dk], -1)
    q4 = q.reshape(n, B, nh, dk)

    # input attention over [null, input?, slot groups]: the null slot has logit 0 and value 0
    logits = [q.new_zeros(n, B, nh, 1)]
    if p.reads_input:
        logits.append((q4 * x_key).sum(-1, keepdim=True))
    keys = []
    for g, slots, key_weight in zip(p.groups, slot_groups, w.keys):
        k = torch.matmul(slots, key_weight)  # [S, B, heads * key]
        keys.append(k)
        logits.append(scores(q4, k.view(g.slots, B, nh, dk)))
    probs = torch.cat(logits, -1).softmax(-1)
    active = select_top_k(probs[..., 0].mean(-1), p.top_k, preferred, p.tie_tolerance)
    a = active.unsqueeze(-1)

    # what each module reads, through its W_ih: gi [n, B, gates]
    gi = gh if p.cell == "lstm" else w.b_ih
    col = 1
    if p.reads_input:
        gi = gi + (probs[..., 1:2] * x_gate).sum(2)
        col = 2
    mixes, values, mix_values = [], [], None
    for g, slots, read in zip(p.groups, slot_groups, w.reads):
        pg = probs[..., col:col + g.slots]
        col += g.slots
        if g.folded:  # (sum_s p_s h_s) @ (W_v @ W_ih)
            mix = weighted(pg, slots.unsqueeze(2)).reshape(n, B, nh * g.width)
            gi = gi + torch.bmm(mix, read)
            mixes.append(mix)
        else:  # (sum_s p_s (h_s @ W_v)) @ W_ih
            v = torch.matmul(slots, read)  # [S, B, heads * value]
            values.append(v)
            part = weighted(pg, v.view(g.slots, B, nh, dv))
            mix_values = part if mix_values is None else mix_values + part
    saved: dict[str, Any] = {"q": q4, "probs": probs, "active": active, "keys": keys, "mixes": mixes,
                             "values": values}
    if mix_values is not None:
        mix_values = mix_values.reshape(n, B, nh * dv)
        gi = gi + torch.bmm(mix_values, w.w_ih)
        saved["mix_values"] = mix_values
    if p.cell == "lstm":
        ifo = gi[..., :3 * H].sigmoid()
        g_ = gi[..., 3 * H:].tanh()
        i, f, o = ifo.chunk(3, -1)
        c_new = f * c + i * g_
        h_new = o * c_new.tanh()
        c_out = torch.where(a, c_new, c)
        saved["gates"] = torch.cat([ifo, g_], -1)
    else:
        rz = (gi[..., :2 * H] + gh[..., :2 * H]).sigmoid()
        r, z = rz.chunk(2, -1)
        gh_n = gh[..., 2 * H:]
        cand = (gi[..., 2 * H:] + r * gh_n).tanh()
        h_new = cand + z * (h - cand)
        c_out = None
        saved["gates"] = torch.cat([rz, cand, gh_n], -1)

    if p.communication:
        ch, cdk, cdv = p.comm_heads, p.comm_key_size, p.comm_value_size
        h_bar = torch.where(a, h_new, h)
        proj = torch.baddbmm(w.comm_bias, h_bar, w.comm_weight)
        qc, kc, vc, gate = proj.split([ch * cdk, ch * cdk, ch * cdv, H], -1)
        comm_probs = scores(qc.reshape(n, B, ch, cdk), kc.reshape(n, B, ch, cdk)).softmax(-1)
        read = weighted(comm_probs, vc.reshape(n, B, ch, cdv)).reshape(n, B, ch * cdv)
        out = torch.bmm(read, w.comm_out)
        h_new = h_bar + gate.sigmoid() * out
        saved.update(h_bar=h_bar, proj=proj, comm_probs=comm_probs, read=read, out=out)
    return torch.where(a, h_new, h), c_out, saved


def _slot_groups(p: LayerPlan, l: int, new_hs: Sequence[Tensor], hs: Sequence[Tensor]) -> list[Tensor]:
    """The slots layer l reads: layer l-1 after this step, layer l+1 before it (one slot per module [n, B, H], or
    the whole layer as one slot [1, B, n * H], module 0 first). States may have leading dimensions ([T, n, B, H]:
    every step's slots at once)."""
    groups = []
    for g in p.groups:
        if g.source == "lower":
            groups.append(new_hs[l - 1])
        elif g.whole_layer:
            above = hs[l + 1]
            B = above.shape[-2]
            groups.append(above.transpose(-3, -2).reshape(*above.shape[:-3], 1, B, -1))
        else:
            groups.append(hs[l + 1])
    return groups


def _forward_step(plan: SequencePlan, weights: Sequence[LayerWeights], x_key: Tensor, x_gate: Tensor,
                  start: Tensor, preferred: Sequence[Tensor] | None, hs: list[Tensor], cs: list[Tensor | None]):
    """Every layer, bottom-up, one step; the state is reset first where `start` [B] is set."""
    hs, cs = reset_states(start, hs, cs)
    new_hs, new_cs, saved = list(hs), list(cs), []
    for l, (p, w) in enumerate(zip(plan.layers, weights)):
        new_hs[l], new_cs[l], s = _layer_forward(
            p, w, hs[l], cs[l], x_key if p.reads_input else None, x_gate if p.reads_input else None,
            _slot_groups(p, l, new_hs, hs), None if preferred is None else preferred[l])
        saved.append(s)
    return new_hs, new_cs, saved


# The time loops take and give nested lists/tuples/dicts of tensors without None (what scan accepts): the c states
# are kept as a compact list of the LSTM layers' only, and optional entries are left out rather than set to None.
def _compact(cs: Sequence[Tensor | None]) -> list[Tensor]:
    return [c for c in cs if c is not None]


def _expand(plan: SequencePlan, cs: Sequence[Tensor]) -> list[Tensor | None]:
    it = iter(cs)
    return [next(it) if p.cell == "lstm" else None for p in plan.layers]


def _forward_scan_step(plan: SequencePlan, weights: Sequence[LayerWeights], carry, xs):
    """`_forward_step` in scan form: carry (hs, cs) -> next carry, and per step (hs, cs, saved) as outputs."""
    hs, cs = carry
    x_key, x_gate, start = xs[:3]
    preferred = xs[3] if len(xs) > 3 else None
    hs, cs, saved = _forward_step(plan, weights, x_key, x_gate, start, preferred, hs, _expand(plan, cs))
    cs = _compact(cs)
    return (hs, cs), ([h.clone() for h in hs], [c.clone() for c in cs], saved)


def _forward_loop(plan: SequencePlan, weights: Sequence[LayerWeights], x_keys: Tensor, x_gates: Tensor,
                  starts: Tensor, preferred: Sequence[Tensor] | None, hs: list[Tensor], cs: list[Tensor],
                  call_step: Callable[..., Any] | None = None):
    """The forward time loop from the states hs, cs (compact): per layer the states after every step [T, ...]
    (h, and c of the LSTM layers) and what the backward needs. Traced by torch.compile, one scan; else a Python
    loop, each step through `call_step(step_function, *args)` if given."""
    xs = (x_keys, x_gates, starts) + (() if preferred is None else (list(preferred),))
    if torch.compiler.is_compiling():  # one compiled loop (cores/compile.py): the body is compiled once
        return scan(functools.partial(_forward_scan_step, plan, weights), (hs, cs), _contiguous(xs))[1]
    steps = []
    carry = (hs, cs)
    for t in range(starts.shape[0]):
        if call_step is None:
            carry, out = _forward_scan_step(plan, weights, carry, _index(xs, t))
        else:
            carry, out = call_step(_forward_scan_step, plan, weights, carry, _index(xs, t))
        steps.append(out)
    return _stack(steps)


def _stack(items: list) -> Any:
    """Stack a list of equally structured (nested lists/tuples/dicts of tensors or None) along a new dim 0."""
    first = items[0]
    if isinstance(first, Tensor):
        return torch.stack(items)
    if first is None:
        return None
    if isinstance(first, dict):
        return {key: _stack([item[key] for item in items]) for key in first}
    return type(first)(_stack([item[i] for item in items]) for i in range(len(first)))


# ---- one time step, backward -------------------------------------------------------------------------------------
def _layer_backward(p: LayerPlan, w: LayerWeights, s: dict[str, Any], h: Tensor, c: Tensor | None,
                    c_out: Tensor | None, x_key: Tensor | None, x_gate: Tensor | None,
                    slot_groups: Sequence[Tensor], dh: Tensor, dc: Tensor | None):
    """The gradients of one layer's step: of its (reset) input state h, c; of each slot group it read; of the
    input's key and gates (layer 0); and the rows of every weight gradient. `dh`, `dc`: the gradients of the
    step's outputs h, c. Derived by hand from `_layer_forward` (tests compare it with autograd)."""
    n, B, H = h.shape
    nh, dk, dv, G = p.heads, p.key_size, p.value_size, p.gates
    a = s["active"].unsqueeze(-1)
    probs = s["probs"]
    rows: dict[str, Any] = {}

    d_new = torch.where(a, dh, 0.0)
    dh_prev = torch.where(a, 0.0, dh)
    if p.communication:  # h_out = h_bar + sigmoid(gate) * (read @ comm_out), where active
        ch, cdk, cdv = p.comm_heads, p.comm_key_size, p.comm_value_size
        qc, kc, vc, gate = s["proj"].split([ch * cdk, ch * cdk, ch * cdv, H], -1)
        sg = gate.sigmoid()
        d_out = d_new * sg
        d_gate = d_new * s["out"] * sg * (1 - sg)
        d_read = torch.bmm(d_out, w.comm_out.transpose(1, 2)).view(n, B, ch, cdv)
        cp = s["comm_probs"]
        d_cp = scores(d_read, vc.reshape(n, B, ch, cdv))
        d_vc = weighted_by_slot(cp, d_read)
        d_logits = cp * (d_cp - (cp * d_cp).sum(-1, keepdim=True))
        d_qc = weighted(d_logits, kc.reshape(n, B, ch, cdk))
        d_kc = weighted_by_slot(d_logits, qc.reshape(n, B, ch, cdk))
        d_proj = torch.cat([d_qc.reshape(n, B, -1), d_kc.reshape(n, B, -1), d_vc.reshape(n, B, -1), d_gate], -1)
        rows.update(d_proj=d_proj, d_out=d_out)
        d_bar = d_new + torch.bmm(d_proj, w.comm_weight.transpose(1, 2))
        d_new = torch.where(a, d_bar, 0.0)  # h_bar = where(active, cell output, h)
        dh_prev = dh_prev + torch.where(a, 0.0, d_bar)

    gates = s["gates"]
    if p.cell == "lstm":
        i, f, o, g_ = gates.chunk(4, -1)
        dc_new = torch.where(a, dc, 0.0)
        dc_prev = torch.where(a, 0.0, dc)
        tc = c_out.tanh()  # c_out is the new c wherever it matters (active modules)
        dc_new = dc_new + d_new * o * (1 - tc * tc)
        dc_prev = dc_prev + dc_new * f
        d_gi = torch.cat([dc_new * g_ * i * (1 - i), dc_new * c * f * (1 - f), d_new * tc * o * (1 - o),
                          dc_new * i * (1 - g_ * g_)], -1)
        d_gh = d_gi
    else:
        r, z, cand, gh_n = gates.chunk(4, -1)
        dc_prev = None
        dh_prev = dh_prev + d_new * z
        d_n = d_new * (1 - z) * (1 - cand * cand)
        d_rz = torch.cat([d_n * gh_n * r * (1 - r), d_new * (h - cand) * z * (1 - z)], -1)
        d_gi = torch.cat([d_rz, d_n], -1)
        d_gh = torch.cat([d_rz, d_n * r], -1)
    rows["d_gi"] = d_gi

    # the attention weights p of what the modules read: gi += sum over slots of p * (slot's gates)
    d_probs = [probs.new_zeros(n, B, nh, 1)]
    if p.reads_input:
        d_probs.append((d_gi.unsqueeze(2) * x_gate).sum(-1, keepdim=True))
    d_mix_values = None
    if p.unfolded:
        d_mix_values = torch.bmm(d_gi, w.w_ih.transpose(1, 2)).view(n, B, nh, dv)
    d_slots, d_values = [], []
    col = 2 if p.reads_input else 1
    folded_i = unfolded_i = 0
    for g, slots, read in zip(p.groups, slot_groups, w.reads):
        pg = probs[..., col:col + g.slots]
        col += g.slots
        if g.folded:
            d_mix = torch.bmm(d_gi, read.transpose(1, 2)).view(n, B, nh, g.width)
            d_probs.append(scores(d_mix, slots.unsqueeze(2)))
            d_slots.append(weighted_by_slot(pg, d_mix).sum(2))
            folded_i += 1
        else:
            v = s["values"][unfolded_i].view(g.slots, B, nh, dv)
            d_probs.append(scores(d_mix_values, v))
            d_v = weighted_by_slot(pg, d_mix_values).reshape(g.slots, B, nh * dv)
            d_values.append(d_v)
            d_slots.append(torch.matmul(d_v, read.t()))
            unfolded_i += 1
    rows["d_values"] = d_values

    # softmax over the slots, then the logits q . k
    d_probs = torch.cat(d_probs, -1)
    d_logits = probs * (d_probs - (probs * d_probs).sum(-1, keepdim=True))
    q4 = s["q"]
    d_q = torch.zeros_like(q4)
    d_xkey = None
    col = 1
    if p.reads_input:
        d_lx = d_logits[..., 1:2]
        d_q = d_q + d_lx * x_key
        d_xkey = (d_lx * q4).sum(0)
        col = 2
    d_keys = []
    for gi_, (g, k, key_weight) in enumerate(zip(p.groups, s["keys"], w.keys)):
        dl = d_logits[..., col:col + g.slots]
        col += g.slots
        d_q = d_q + weighted(dl, k.view(g.slots, B, nh, dk))
        d_k = weighted_by_slot(dl, q4).reshape(g.slots, B, nh * dk)
        d_keys.append(d_k)
        d_slots[gi_] = d_slots[gi_] + torch.matmul(d_k, key_weight.t())
    rows["d_keys"] = d_keys

    d_hq = torch.cat([d_gh, d_q.reshape(n, B, nh * dk)], -1)
    rows["d_hq"] = d_hq
    dh_prev = dh_prev + torch.bmm(d_hq, w.hq_weight.transpose(1, 2))
    return dh_prev, dc_prev, d_slots, d_xkey, rows


def _backward_step(plan: SequencePlan, weights: Sequence[LayerWeights], saved: Sequence[dict[str, Any]],
                   hs_prev: Sequence[Tensor], cs_prev: Sequence[Tensor | None], hs: Sequence[Tensor],
                   cs: Sequence[Tensor | None], x_key: Tensor, x_gate: Tensor, start: Tensor,
                   dys: Sequence[Tensor], dhs: list[Tensor], dcs: list[Tensor | None]):
    """One step of every layer, top-down, in reverse. hs_prev/cs_prev: the states before the step (not reset);
    hs/cs: after it; dys: the gradient of the step's outputs; dhs/dcs: of the states after the step from later steps.
    Returns the gradients of the states before the step (through the reset), the input's key and gates, and rows."""
    hs_reset, cs_reset = reset_states(start, hs_prev, cs_prev)
    L = len(plan.layers)
    d_in = [dh + dy for dh, dy in zip(dhs, dys)]
    d_prev_h: list[Tensor | None] = [None] * L
    d_prev_c: list[Tensor | None] = [None] * L
    d_higher: list[Tensor | None] = [None] * L  # gradient of layer l's reset state at t-1 from layer l-1's reads
    rows_all: list[dict[str, Any]] = [{} for _ in range(L)]
    d_xkey = None
    for l in reversed(range(L)):
        p, w = plan.layers[l], weights[l]
        slot_groups = _slot_groups(p, l, hs, hs_reset)
        dh_prev, dc_prev, d_slots, dk, rows = _layer_backward(
            p, w, saved[l], hs_reset[l], cs_reset[l], cs[l], x_key if p.reads_input else None,
            x_gate if p.reads_input else None, slot_groups, d_in[l], dcs[l])
        rows_all[l] = rows
        if p.reads_input:
            d_xkey = dk
        d_prev_h[l], d_prev_c[l] = dh_prev, dc_prev
        for g, d_slot in zip(p.groups, d_slots):
            if g.source == "lower":
                d_in[l - 1] = d_in[l - 1] + d_slot
            else:
                if g.whole_layer:
                    d_slot = d_slot.view(d_slot.shape[1], plan.layers[l + 1].modules, -1).transpose(0, 1)
                d_higher[l + 1] = d_slot if d_higher[l + 1] is None else d_higher[l + 1] + d_slot
    d_prev_h = [d if extra is None else d + extra for d, extra in zip(d_prev_h, d_higher)]
    new_dhs, new_dcs = reset_states(start, d_prev_h, d_prev_c)  # no gradient crosses an episode start
    return new_dhs, new_dcs, d_xkey, rows_all


def _backward_scan_step(plan: SequencePlan, weights: Sequence[LayerWeights], carry, xs):
    """`_backward_step` in scan form: carry (dhs, dcs), per step (d_xkey, rows) as outputs."""
    dhs, dcs = carry
    saved, hs_prev, cs_prev, hs, cs, x_key, x_gate, start, dys = xs
    dhs, dcs, d_xkey, rows = _backward_step(
        plan, weights, saved, hs_prev, _expand(plan, cs_prev), hs, _expand(plan, cs), x_key, x_gate, start, dys,
        dhs, _expand(plan, dcs))
    return (dhs, _compact(dcs)), (d_xkey, rows)


def _backward_loop(plan: SequencePlan, weights: Sequence[LayerWeights], saved, hs_all: Sequence[Tensor],
                   cs_all: Sequence[Tensor], x_keys: Tensor, x_gates: Tensor, starts: Tensor,
                   dys: Sequence[Tensor], dhs: list[Tensor], dcs: list[Tensor],
                   call_step: Callable[..., Any] | None = None):
    """The backward time loop, last step first. hs_all/cs_all (compact): per layer the states [T + 1, ...] from
    the initial one to the last; saved and dys: stacked [T, ...]. Returns the gradients of the initial states and,
    stacked [T, ...], of the input's keys and gates and the rows of the weight gradients. Compiled or stepped as
    `_forward_loop`."""
    xs = (saved, [h[:-1] for h in hs_all], [c[:-1] for c in cs_all], [h[1:] for h in hs_all], [c[1:] for c in cs_all],
          x_keys, x_gates, starts, list(dys))
    if torch.compiler.is_compiling():
        step = functools.partial(_backward_scan_step, plan, weights)
        (dhs, dcs), stacked = scan(step, (dhs, dcs), _contiguous(xs), reverse=True)
        return dhs, dcs, stacked
    steps = [None] * starts.shape[0]
    carry = (dhs, dcs)
    for t in reversed(range(starts.shape[0])):
        if call_step is None:
            carry, steps[t] = _backward_scan_step(plan, weights, carry, _index(xs, t))
        else:
            carry, steps[t] = call_step(_backward_scan_step, plan, weights, carry, _index(xs, t))
    return carry[0], carry[1], _stack(steps)


def _contiguous(value: Any) -> Any:
    """Every tensor of a nested structure contiguous: a compiled loop would otherwise copy a strided input whole
    at every step to read one slice of it."""
    if isinstance(value, Tensor):
        return value.contiguous()
    if isinstance(value, dict):
        return {key: _contiguous(v) for key, v in value.items()}
    return type(value)(_contiguous(v) for v in value)


def _index(value: Any, t: int) -> Any:
    """Step t of equally structured (nested lists/tuples/dicts of [T, ...] tensors or None)."""
    if isinstance(value, Tensor):
        return value[t]
    if value is None:
        return None
    if isinstance(value, dict):
        return {key: _index(v, t) for key, v in value.items()}
    return type(value)(_index(v, t) for v in value)


# ---- after the loop: the weight gradients, one GEMM each over all T x B rows ----------------------------------
def _rows(x: Tensor) -> Tensor:
    """[T, n, B, X] per-step rows -> [n, T * B, X]: each module's rows together (a copy of contiguous blocks)."""
    return x.transpose(0, 1).reshape(x.shape[1], -1, x.shape[-1])


def _outer_sum(inputs: Tensor, grads: Tensor) -> Tensor:
    """The gradient of a per-module weight [n, I, J] from its input rows [n, R, I] and output-gradient rows
    [n, R, J]: one batched GEMM over all R = T x B rows."""
    return torch.bmm(inputs.transpose(1, 2), grads)


def _weight_gradients(plan: SequencePlan, saved: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]],
                      hs_reset: Sequence[Tensor], slot_stacks: Sequence[Sequence[Tensor]]) -> list[LayerWeights]:
    """hs_reset: per layer the states each step started from [T, n, B, H]; slot_stacks: per layer and group the
    slots read [T, S, B, width]. Returns the gradients in the layout of LayerWeights."""
    grads = []
    for p, s, r, h, slot_groups in zip(plan.layers, saved, rows, hs_reset, slot_stacks):
        d_hq, d_gi = _rows(r["d_hq"]), _rows(r["d_gi"])
        keys, reads = [], []
        folded_i = unfolded_i = 0
        for g, slots, d_k in zip(p.groups, slot_groups, r["d_keys"]):
            flat_slots = slots.reshape(-1, slots.shape[-1])  # shared projections: every slot's row is a row
            keys.append(flat_slots.t() @ d_k.reshape(-1, d_k.shape[-1]))
            if g.folded:
                reads.append(_outer_sum(_rows(s["mixes"][folded_i]), d_gi))
                folded_i += 1
            else:
                d_v = r["d_values"][unfolded_i]
                reads.append(flat_slots.t() @ d_v.reshape(-1, d_v.shape[-1]))
                unfolded_i += 1
        comm = (None, None, None)
        if p.communication:
            d_proj = _rows(r["d_proj"])
            comm = (_outer_sum(_rows(s["h_bar"]), d_proj), d_proj.sum(1, keepdim=True),
                    _outer_sum(_rows(s["read"]), _rows(r["d_out"])))
        grads.append(LayerWeights(
            hq_weight=_outer_sum(_rows(h), d_hq), hq_bias=d_hq.sum(1, keepdim=True),
            b_ih=d_gi.sum(1, keepdim=True) if p.cell == "gru" else None, keys=tuple(keys), reads=tuple(reads),
            w_ih=_outer_sum(_rows(s["mix_values"]), d_gi) if p.unfolded else None,
            comm_weight=comm[0], comm_bias=comm[1], comm_out=comm[2]))
    return grads


# ---- the operation -----------------------------------------------------------------------------------------------
class SequenceRunner:
    """Runs a plan's forward and backward time loops eagerly (`compile_mode` None) or compiled.

    Compiled on the CPU, each loop is one compiled scan over the sequence: the loop itself runs in compiled code.
    Compiled on CUDA, the loop stays in Python and each step is one compiled call: a compiled scan's loop test reads
    the step counter back to the host at every step, which a captured CUDA graph cannot do, while a Python loop of
    compiled steps can be captured whole (a PPO minibatch as one graph, `perf.cuda_graph_update`)."""

    def __init__(self, plan: SequencePlan, compile_mode: str | None):
        self.plan, self.compile_mode = plan, compile_mode

    def _compiled(self, device: torch.device) -> bool:
        return self.compile_mode is not None and device.type == "cpu"

    def _step(self, device: torch.device) -> Callable[..., Any] | None:
        """The per-step function a Python loop calls on `device` (None: the loop's own eager step)."""
        if self.compile_mode is None or device.type == "cpu":
            return None
        return functools.partial(call_compiled_step, self.compile_mode, device)

    def forward(self, weights, x_keys, x_gates, starts, preferred, hs, cs):
        """Per layer the states after each step [T, ...] (h, then c), and what the backward needs."""
        if self._compiled(starts.device):
            return call_compiled(_forward_loop, self.compile_mode, starts.device, self.plan, weights, x_keys,
                                 x_gates, starts, preferred, hs, cs)
        return _forward_loop(self.plan, weights, x_keys, x_gates, starts, preferred, hs, cs, self._step(starts.device))

    def backward(self, weights, saved, hs_all, cs_all, x_keys, x_gates, starts, dys, dhs, dcs):
        if self._compiled(starts.device):
            return call_compiled(_backward_loop, self.compile_mode, starts.device, self.plan, weights, saved, hs_all,
                                 cs_all, x_keys, x_gates, starts, dys, dhs, dcs)
        return _backward_loop(self.plan, weights, saved, hs_all, cs_all, x_keys, x_gates, starts, dys, dhs, dcs,
                              self._step(starts.device))


def call_compiled_step(mode: str, device: torch.device, step: Callable[..., Any], *args: Any) -> Any:
    """One step of a Python time loop through torch.compile (CUDA)."""
    return call_compiled(step, mode, device, *args)


class _ModularSequence(torch.autograd.Function):
    """(runner, starts, preferred, x_keys, x_gates, *hs, *cs, *weights) -> (*ys, *final hs, *final cs): the module
    doc's sequence path. hs: each layer's initial h [n, B, H]; cs: the LSTM layers' initial c; ys: each layer's h
    after every step [T, n, B, H]."""

    @staticmethod
    def forward(ctx, runner: SequenceRunner, starts: Tensor, preferred: Tensor | None, x_keys: Tensor,
                x_gates: Tensor, *tensors: Tensor):
        plan = runner.plan
        L = len(plan.layers)
        n_c = sum(p.cell == "lstm" for p in plan.layers)
        hs0, cs0, flat_weights = list(tensors[:L]), list(tensors[L:L + n_c]), tensors[L + n_c:]
        weights = _unflatten(plan, flat_weights)
        split = None
        if preferred is not None:  # [T, B, decisions] -> per layer [T, n, B]
            split = [d.permute(0, 2, 1).clone() for d in preferred.split([p.modules for p in plan.layers], -1)]
        ys, cs_seq, saved = runner.forward(weights, x_keys, x_gates, starts, split, hs0, cs0)
        ctx.runner, ctx.saved, ctx.weights, ctx.cs_seq = runner, saved, weights, cs_seq
        ctx.save_for_backward(starts, x_keys, x_gates, *hs0, *cs0, *ys)
        return (*ys, *(y[-1] for y in ys), *(c[-1] for c in cs_seq))

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Tensor):
        runner = ctx.runner
        plan = runner.plan
        L = len(plan.layers)
        n_c = sum(p.cell == "lstm" for p in plan.layers)
        starts, x_keys, x_gates, *rest = ctx.saved_tensors
        hs0, cs0, ys = rest[:L], rest[L:L + n_c], rest[L + n_c:]
        dys, d_final_h, d_final_c = list(grads[:L]), list(grads[L:2 * L]), list(grads[2 * L:])
        hs_all = [torch.cat([h0.unsqueeze(0), y]) for h0, y in zip(hs0, ys)]
        cs_all = [torch.cat([c0.unsqueeze(0), c]) for c0, c in zip(cs0, ctx.cs_seq)]
        d_h0, d_c0, (d_xkeys, rows) = runner.backward(
            ctx.weights, _in_loop(ctx.saved), hs_all, cs_all, x_keys, x_gates, starts, dys, d_final_h, d_final_c)
        keep = ~starts.view(starts.shape[0], 1, -1, 1)
        hs_reset = [torch.where(keep, h[:-1], 0.0) for h in hs_all]
        slots = [_slot_groups(p, l, ys, hs_reset) for l, p in enumerate(plan.layers)]  # every step's, [T, ...]
        grads_w = _weight_gradients(plan, ctx.saved, rows, hs_reset, slots)
        # the input's gates: gi += p_x * x_gate, so their gradient is p_x * d_gi, for all steps at once
        d_xgates = ctx.saved[0]["probs"][..., 1:2] * rows[0]["d_gi"].unsqueeze(3)
        return (None, None, None, d_xkeys, d_xgates, *d_h0, *d_c0, *_flatten(grads_w))


def run_sequence(runner: SequenceRunner, weights: Sequence[LayerWeights], x_keys: Tensor, x_gates: Tensor,
                 hs: Sequence[Tensor], cs: Sequence[Tensor | None], starts: Tensor, preferred: Tensor | None):
    """The whole sequence from the states hs, cs (None for GRU layers): per layer the outputs [T, n, B, H], the
    final h and the final c (None for GRU layers)."""
    L = len(hs)
    out = _ModularSequence.apply(runner, starts, preferred, x_keys, x_gates, *hs, *_compact(cs), *_flatten(weights))
    ys, finals_h = list(out[:L]), list(out[L:2 * L])
    return ys, finals_h, _expand(runner.plan, out[2 * L:])
