"""The RIMs/BRIMs training path (cores/modular_sequence.py: one operation over the sequence with a hand-written
backward) computes what the plain step-by-step computation (ModularCore.step_by_step, differentiated by autograd)
computes: outputs, final state, and the gradients of the input, the initial state and every weight, in float64."""

from __future__ import annotations

import pytest
import torch

from brims_rl.cores import make_core

IN = 10
SMALL = dict(num_modules=5, top_k=3, module_size=8, input_key_size=8, input_value_size=8, comm_key_size=4,
             comm_value_size=4, comm_heads=2)
VARIANTS = [
    pytest.param(name, {"cell": cell, "heads": heads, **({"top_down_slots": slots} if slots else {})},
                 id=f"{name}-{cell}-h{heads}" + (f"-{slots}" if slots else ""))
    for name, cell, slots, heads in [
        ("rims", "lstm", None, 1), ("rims", "gru", None, 2), ("brims", "lstm", "modules", 1),
        ("brims", "gru", "modules", 2), ("brims", "lstm", "layer", 2), ("brims", "gru", "layer", 1)]
] + [
    pytest.param("brims", dict(num_layers=3, num_modules=[5, 4, 3], top_k=[3, 2, 1], module_size=[4, 6, 12], heads=2,
                               input_value_size=8, top_down_slots="layer", cell=["lstm", "gru", "lstm"]),
                 id="brims-3-layers-mixed-cells"),
    pytest.param("brims", dict(num_layers=3, num_modules=[5, 4, 3], top_k=[3, 2, 1], module_size=[4, 6, 12],
                               input_value_size=8, top_down_slots="modules"), id="brims-3-layers-modules"),
    pytest.param("brims", dict(top_down=False, num_layers=3), id="brims-no-top-down"),
    pytest.param("rims", dict(communication=False), id="rims-no-communication"),
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest.py)


def build(name: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    return make_core(name, IN, **{**SMALL, **options}).double()


def both_paths(core, x, state, starts, decisions=None):
    """(outputs, final state, grad of x, grads of the state, grads of every weight) of the sequence path (forward)
    and of step_by_step, for the same random weighting of every output."""
    generator = torch.Generator().manual_seed(1)
    y_weight = torch.randn(x.shape[0], x.shape[1], core.output_size, generator=generator, dtype=torch.float64)
    results = []
    for path in (core.forward, core.step_by_step):
        x_ = x.clone().requires_grad_()
        state_ = tuple(s.clone().requires_grad_() for s in state)
        core.zero_grad(set_to_none=True)
        y, final = path(x_, state_, starts, decisions)
        loss = (y * y_weight).sum() + sum((f * f.detach().sign()).sum() for f in final)
        loss.backward()
        results.append((y.detach(), [f.detach() for f in final], x_.grad, [s.grad for s in state_],
                        {name: p.grad for name, p in core.named_parameters()}))
    return results


def assert_same(fast, plain):
    """float64: the two paths agree to a few roundings of the largest value (the step order is the same, the
    grouping of the sums differs)."""
    (y_a, f_a, gx_a, gs_a, gw_a), (y_b, f_b, gx_b, gs_b, gw_b) = fast, plain
    eps = torch.finfo(torch.float64).eps

    def close(a, b, what):
        scale = max(1.0, b.abs().max().item())
        assert a.shape == b.shape, what
        torch.testing.assert_close(a, b, rtol=0, atol=1e4 * eps * scale, msg=what)

    close(y_a, y_b, "outputs")
    for i, (a, b) in enumerate(zip(f_a, f_b)):
        close(a, b, f"final state {i}")
    close(gx_a, gx_b, "gradient of the input")
    for i, (a, b) in enumerate(zip(gs_a, gs_b)):
        close(a, b, f"gradient of initial state {i}")
    assert gw_a.keys() == gw_b.keys()
    for name in gw_b:
        assert gw_a[name] is not None and gw_b[name] is not None, name
        close(gw_a[name], gw_b[name], f"gradient of {name}")


def random_state(core, batch: int):
    return tuple(torch.randn_like(s, dtype=torch.float64) for s in core.initial_state(batch))


def test_the_variants_cover_every_way_a_layer_reads_a_group_of_slots():
    """Lower and higher groups, each read through W_v @ W_ih folded (narrow slots) and through values (wide)."""
    kinds = set()
    for param in VARIANTS:
        name, options = param.values
        for layer_plan in build(name, **options)._plan.layers:
            kinds |= {(group.source, group.folded, group.whole_layer) for group in layer_plan.groups}
    assert {("lower", True, False), ("lower", False, False), ("higher", True, False), ("higher", False, False),
            ("higher", False, True)} <= kinds


@pytest.mark.parametrize("name,options", VARIANTS)
def test_the_sequence_path_computes_what_step_by_step_computes_with_resets(name, options):
    core = build(name, **options)
    T, B = 9, 4
    x = torch.randn(T, B, IN, dtype=torch.float64)
    starts = torch.zeros(T, B, dtype=torch.bool)
    starts[0, 1] = starts[3, 0] = starts[5, 2] = starts[5, 3] = starts[8, 0] = True
    assert_same(*both_paths(core, x, random_state(core, B), starts))


@pytest.mark.parametrize("T,B", [(1, 3), (6, 1), (1, 1)])
@pytest.mark.parametrize("name", ["rims", "brims"])
def test_one_step_and_one_row(name, T, B):
    core = build(name, top_down_slots="layer") if name == "brims" else build(name)
    x = torch.randn(T, B, IN, dtype=torch.float64)
    starts = torch.zeros(T, B, dtype=torch.bool)
    starts[T // 2, 0] = True
    assert_same(*both_paths(core, x, random_state(core, B), starts))


@pytest.mark.parametrize("name", ["rims", "brims"])
def test_all_tied_scores_select_the_lowest_indices_in_both_paths(name):
    """Queries of zero make every logit 0: every module ties, and the lowest `top_k` indices are active."""
    core = build(name)
    with torch.no_grad():
        for layer in core.layers:
            layer.query.zero_()
            layer.query_bias.zero_()
    T, B = 4, 3
    x = torch.randn(T, B, IN, dtype=torch.float64)
    state = random_state(core, B)
    starts = torch.zeros(T, B, dtype=torch.bool)
    assert_same(*both_paths(core, x, state, starts))
    with torch.no_grad():
        core(x, state, starts)
    for decisions, layer in zip(core.last_decisions.split(core.module_counts, -1), core.layers):
        expected = torch.arange(layer.num_modules) < layer.top_k
        assert torch.equal(decisions, expected.expand_as(decisions))


@pytest.mark.parametrize("name", ["rims", "brims"])
def test_recorded_decisions_are_followed_by_both_paths(name):
    """With a tolerance wider than any score gap, the recorded selection wins everywhere: both paths then select
    exactly the recorded modules (here: any valid top-k, unrelated to the scores)."""
    core = build(name, tie_tolerance=0.999)
    T, B = 6, 3
    x = torch.randn(T, B, IN, dtype=torch.float64)
    starts = torch.zeros(T, B, dtype=torch.bool)
    starts[2, 1] = True
    generator = torch.Generator().manual_seed(3)
    parts = []
    for layer in core.layers:  # a random top-k choice per step and row
        order = torch.rand(T, B, layer.num_modules, generator=generator).argsort(-1)
        parts.append(order < layer.top_k)
    decisions = torch.cat(parts, -1)
    state = random_state(core, B)
    assert_same(*both_paths(core, x, state, starts, decisions))
    with torch.no_grad():
        core(x, state, starts, decisions)
    assert torch.equal(core.last_decisions, decisions)


@pytest.mark.parametrize("name,options", VARIANTS[:6])
def test_the_sequence_path_keeps_inactive_modules_bit_for_bit(name, options):
    core = build(name, **options)
    T, B = 8, 3
    state = random_state(core, B)
    x = torch.randn(T, B, IN, dtype=torch.float64, requires_grad=True)
    y, _ = core(x, state, torch.zeros(T, B, dtype=torch.bool))
    assert y.requires_grad  # the sequence path ran
    hs = y.detach().view(T, B, -1)
    start = 0
    for l, layer in enumerate(core.layers):
        n, H = layer.num_modules, layer.module_size
        h = hs[..., start:start + n * H].reshape(T, B, n, H)
        start += n * H
        h0 = state[sum(2 if lay.cell == "lstm" else 1 for lay in core.layers[:l])]
        previous = torch.cat([h0.unsqueeze(0), h[:-1]])
        changed = (h != previous).any(-1)  # [T, B, n]
        assert (changed.sum(-1) == layer.top_k).all()
        assert torch.equal(h[~changed], previous[~changed])


def test_no_tensor_is_read_back_to_the_host(monkeypatch):
    """capturable_replay: forward and backward of the sequence path run without reading a tensor's values on the
    host (inside a captured CUDA graph that would fail), so they must not call item/tolist/bool/nonzero."""
    core = build("brims", top_down_slots="layer")
    T, B = 5, 2
    x = torch.randn(T, B, IN, dtype=torch.float64, requires_grad=True)
    starts = torch.zeros(T, B, dtype=torch.bool)
    starts[2, 0] = True
    state = random_state(core, B)

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was read back to the host")

    for method in ("item", "tolist", "__bool__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, method, refuse)
    y, final = core(x, state, starts)
    (y.sum() + sum(f.sum() for f in final)).backward()
    monkeypatch.undo()
    assert x.grad is not None and core.capturable_replay


def test_the_compiled_sequence_path_computes_what_step_by_step_computes():
    """With `compile`, forward and backward each run as one compiled loop over the sequence (cores/compile.py):
    the same outputs, final state and gradients as the plain computation, in float64. A GRU layer under an LSTM
    layer covers both cells, the whole-layer top-down slot and a folded lower group in one compile."""
    from brims_rl.cores import compile as core_compile

    failed_before = len(core_compile.fallbacks())
    options = dict(num_layers=2, module_size=[4, 8], cell=["lstm", "gru"], top_down_slots="layer", compile=True)
    core = build("brims", **options)
    assert any(g.folded for p in core._plan.layers for g in p.groups)
    T, B = 7, 3
    x = torch.randn(T, B, IN, dtype=torch.float64)
    starts = torch.zeros(T, B, dtype=torch.bool)
    starts[0, 1] = starts[4, 0] = True
    assert_same(*both_paths(core, x, random_state(core, B), starts))
    assert len(core_compile.fallbacks()) == failed_before  # it really ran compiled
