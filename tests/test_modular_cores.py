"""RIMs and BRIMs cores: selection, top-down flow, resets, replay and gradients (paper eq. 4-9, docs/cores.md)."""

from __future__ import annotations

import pytest
import torch

from brims_rl.cores import check_core, make_core
from brims_rl.errors import UserError

IN = 10
SMALL = dict(num_modules=5, top_k=3, module_size=8, input_key_size=8, input_value_size=8, comm_key_size=4,
             comm_value_size=4)
# (core, options): both cells, and BRIMs with both top-down layouts (each higher module a slot, or the whole layer)
VARIANTS = [
    pytest.param(name, {"cell": cell, **({"top_down_slots": slots} if slots else {})},
                 id=f"{name}-{cell}" + (f"-{slots}" if slots else ""))
    for name, cell, slots in [("rims", "lstm", None), ("rims", "gru", None), ("brims", "lstm", "modules"),
                              ("brims", "gru", "modules"), ("brims", "lstm", "layer"), ("brims", "gru", "layer")]
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest.py)


def core(name: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    return make_core(name, IN, **{**SMALL, **options})


def random_state(c, batch: int) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn_like(s) for s in c.initial_state(batch))


def layer_states(c, state) -> list[tuple[torch.Tensor, ...]]:
    """Split the flat state tuple into (h, c) or (h,) per layer."""
    out, i = [], 0
    for layer in c.layers:
        width = 2 if layer.cell == "lstm" else 1
        out.append(state[i : i + width])
        i += width
    return out


def no_starts(T: int, B: int) -> torch.Tensor:
    return torch.zeros(T, B, dtype=torch.bool)


@pytest.mark.parametrize("name,options", VARIANTS)
def test_exactly_top_k_modules_change_and_the_rest_keep_h_and_c_bitwise(name, options):
    c = core(name, **options)
    B = 6
    state = random_state(c, B)
    for _ in range(5):
        _, new = c(torch.randn(1, B, IN), state, no_starts(1, B))
        for layer, before, after in zip(c.layers, layer_states(c, state), layer_states(c, new)):
            changed = (after[0] != before[0]).any(-1)  # [B, n]
            assert (changed.sum(1) == layer.top_k).all()
            for old, now in zip(before, after):
                assert torch.equal(now[~changed], old[~changed])
            if options["cell"] == "lstm":  # active modules' cells moved too
                assert (after[1] != before[1]).any(-1)[changed].all()
        state = new


@pytest.mark.parametrize("slots", ["modules", "layer"])
def test_top_down_makes_the_lower_layer_depend_on_the_higher_layer_at_t_minus_1(slots):
    x, B = torch.randn(1, 4, IN), 4
    for top_down in (True, False):
        c = core("brims", top_down=top_down, top_down_slots=slots)
        state = random_state(c, B)
        bumped = (state[0], state[1], state[2] + torch.randn_like(state[2]), state[3])
        _, a = c(x, state, no_starts(1, B))
        _, b = c(x, bumped, no_starts(1, B))
        if top_down:
            assert not torch.equal(a[0], b[0])
        else:
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("name,options", VARIANTS)
def test_output_is_the_concatenation_of_all_module_states(name, options):
    c = core(name, **options)
    y, state = c(torch.randn(3, 2, IN), c.initial_state(2), no_starts(3, 2))
    hs = [s[0].flatten(1) for s in layer_states(c, state)]
    assert y.shape == (3, 2, c.output_size) and c.output_size == sum(h.shape[1] for h in hs)
    assert torch.equal(y[-1], torch.cat(hs, -1))


@pytest.mark.parametrize("name,options", VARIANTS)
def test_sequence_call_equals_step_by_step_with_resets(name, options):
    check_core(core(name, **options), IN, batch_size=3, steps=12)


@pytest.mark.parametrize("name,options", VARIANTS)
def test_a_reset_equals_a_fresh_start(name, options):
    c = core(name, **options)
    T, B, t0 = 10, 3, 6
    x = torch.randn(T, B, IN)
    starts = no_starts(T, B)
    starts[t0, 1] = True
    y, _ = c(x, random_state(c, B), starts)
    fresh, _ = c(x[t0:, 1:2], c.initial_state(1), no_starts(T - t0, 1))
    torch.testing.assert_close(y[t0:, 1:2], fresh, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(y[t0:, 0], y[t0:, 1])


@pytest.mark.parametrize("name", ["rims", "brims"])
def test_a_reset_cuts_gradients(name):
    c = core(name)
    T, B, t0 = 9, 2, 5
    x = torch.randn(T, B, IN, requires_grad=True)
    state = tuple(s.requires_grad_() for s in random_state(c, B))
    starts = no_starts(T, B)
    starts[t0] = True
    y, _ = c(x, state, starts)
    y[t0:].square().sum().backward()
    assert torch.equal(x.grad[:t0], torch.zeros_like(x.grad[:t0]))
    assert all(torch.equal(s.grad, torch.zeros_like(s)) for s in state)
    assert x.grad[t0:].abs().sum() > 0


@pytest.mark.parametrize("name,options", VARIANTS + [
    ("brims", dict(top_down=False, num_layers=3)), ("brims", dict(top_down_slots="layer", num_layers=3))])
def test_every_parameter_gets_a_gradient(name, options):
    c = core(name, **options)
    T, B = 40, 4
    y, _ = c(torch.randn(T, B, IN), c.initial_state(B), no_starts(T, B))
    (y * torch.randn_like(y)).sum().backward()
    for pname, p in c.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_rims_has_one_layer_and_brims_two_with_the_contract_state():
    rims, brims = make_core("rims", IN), make_core("brims", IN)
    assert [s.shape for s in rims.initial_state(3)] == [(3, 6, 32)] * 2
    assert [s.shape for s in brims.initial_state(3)] == [(3, 6, 32)] * 4
    assert rims.output_size == 6 * 32 and brims.output_size == 2 * 6 * 32
    assert len(make_core("brims", IN, num_layers=3).initial_state(1)) == 6
    gru = make_core("brims", IN, cell="gru")
    assert [s.shape for s in gru.initial_state(2)] == [(2, 6, 32)] * 2


@pytest.mark.parametrize("options", [
    dict(communication=False), dict(top_down=False), dict(communication=False, top_down=False),
    dict(num_layers=3, top_k=[3, 2, 1]), dict(heads=2, comm_heads=1),
    dict(top_down_slots="layer", num_layers=3, top_k=[3, 2, 1], module_size=[8, 6, 4]),
    dict(top_down_slots="layer", heads=2, comm_heads=1), dict(top_down_slots="layer", top_down=False),
])
def test_variants_run_and_keep_the_contract(options):
    c = core("brims", **options)
    y, state = c(torch.randn(4, 2, IN), c.initial_state(2), no_starts(4, 2))
    assert y.shape == (4, 2, c.output_size)
    assert all(s.shape == i.shape for s, i in zip(state, c.initial_state(2)))
    if options.get("communication") is False:
        assert not any("comm" in name for name, _ in c.named_parameters())


def test_per_layer_list_options():
    c = core("brims", num_modules=[6, 4], top_k=[4, 1], module_size=[8, 12], cell=["lstm", "gru"],
             heads=[1, 2], communication=[True, False])
    assert [s.shape for s in c.initial_state(2)] == [(2, 6, 8), (2, 6, 8), (2, 4, 12)]
    assert c.output_size == 6 * 8 + 4 * 12
    state = random_state(c, 2)
    _, new = c(torch.randn(1, 2, IN), state, no_starts(1, 2))
    assert ((new[2] != state[2]).any(-1).sum(1) == 1).all()


@pytest.mark.parametrize("name,options", [
    ("rims", dict(top_k=7)), ("rims", dict(num_modules=0)), ("rims", dict(module_size=-1)),
    ("rims", dict(cell="rnn")), ("rims", dict(heads=0)), ("rims", dict(communication="yes")),
    ("brims", dict(num_layers=0)), ("brims", dict(top_k=[4, 4, 4])), ("brims", dict(module_size=[8, 0])),
    ("brims", dict(top_down=1)), ("brims", dict(num_modules=[6, 3])), ("rims", dict(module_size=2.5)),
    ("brims", dict(top_down_slots="layers")), ("brims", dict(top_down_slots=["modules", "layer"])),
])
def test_bad_options_raise_value_error(name, options):
    with pytest.raises(ValueError):
        make_core(name, IN, **options)


def test_unknown_options_are_user_errors():
    with pytest.raises(UserError):
        make_core("rims", IN, top_down=True)  # RIMs has one layer
    with pytest.raises(UserError):
        make_core("rims", IN, top_down_slots="layer")
    with pytest.raises(UserError):
        make_core("brims", IN, dropout=0.1)


def test_diagnostics_accumulate_in_place_so_a_captured_graph_keeps_counting():
    """capturable_diagnostics: the buffers a CUDA graph would capture are the ones diagnostics() reads and zeroes."""
    c = core("brims")
    B = 3
    with torch.no_grad():
        c(torch.randn(4, B, IN), c.initial_state(B), no_starts(4, B))
    stats = c._activity._stats
    address = stats.data_ptr()
    assert stats[0].item() == 4 * B
    first = c.diagnostics()
    assert (stats == 0).all()  # zeroed in place, not replaced
    with torch.no_grad():
        c(torch.randn(2, B, IN), c.initial_state(B), no_starts(2, B))
    assert c._activity._stats is stats and stats.data_ptr() == address
    second = c.diagnostics()
    assert first.keys() == second.keys() and c.capturable_diagnostics
    for l, layer in enumerate(c.layers):
        assert sum(second[f"layer{l}/module{k}_active"] for k in range(layer.num_modules)) == pytest.approx(layer.top_k)


@pytest.mark.parametrize("top_down,slots", [(True, "modules"), (True, "layer"), (False, "modules")])
def test_diagnostics_while_acting(top_down, slots):
    c = core("brims", top_down=top_down, top_down_slots=slots, num_layers=3, num_modules=[5, 4, 3], top_k=[3, 1, 2])
    B = 4
    state = c.initial_state(B)
    with torch.no_grad():
        for _ in range(3):
            _, state = c(torch.randn(5, B, IN), state, torch.rand(5, B) < 0.2)
    c(torch.randn(2, B, IN), state, no_starts(2, B))  # with grad: not recorded
    stats = c.diagnostics()
    for l, layer in enumerate(c.layers):
        fractions = [stats[f"layer{l}/module{k}_active"] for k in range(layer.num_modules)]
        assert all(0.0 <= f <= 1.0 for f in fractions)
        assert sum(fractions) / layer.num_modules == pytest.approx(layer.top_k / layer.num_modules)
        key = f"layer{l}/attention_to_higher"
        if top_down and l + 1 < len(c.layers):
            assert 0.0 < stats[key] < 1.0
        else:
            assert key not in stats
    assert c.diagnostics() == {}
    c(torch.randn(2, B, IN), state, no_starts(2, B))
    assert c.diagnostics() == {}


@pytest.mark.parametrize("slots", ["modules", "layer"])
def test_selection_follows_null_attention_and_attention_to_higher_is_its_share_of_the_mass(slots):
    c = core("brims", heads=2, top_down_slots=slots)
    B = 3
    state = random_state(c, B)
    x = torch.randn(1, B, IN)
    layer = c.layers[0]
    captured = {}
    step = layer.step

    def spy(*args):
        out = step(*args)
        captured["probs"] = out[3]
        return out

    layer.step = spy
    with torch.no_grad():
        _, new = c(x, state, no_starts(1, B))
    probs = captured["probs"]  # [n, B, heads, null + input + higher modules]
    # null, input, then the higher layer: one slot per module, or one slot for the whole layer
    assert probs.shape[-1] == 1 + 1 + (c.layers[1].num_modules if slots == "modules" else 1)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    null = probs[..., 0].mean(-1).T  # [B, n]
    smallest = null.argsort(1)[:, : layer.top_k]
    changed = (new[0] != state[0]).any(-1)
    assert torch.equal(changed, torch.zeros_like(changed).scatter_(1, smallest, True))
    expected = probs[..., 2:].sum(-1).mean().item()
    assert c.diagnostics()["layer0/attention_to_higher"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("slots", ["modules", "layer"])
def test_top_down_slots_are_the_higher_modules_or_the_whole_higher_layer(slots):
    """modules: each higher module h1[k] (at t-1) is a slot; layer: concat(h1[0], ..., h1[n-1]) is one slot."""
    c = core("brims", num_layers=3, num_modules=[5, 4, 3], top_k=[3, 2, 1], module_size=[8, 6, 4],
             top_down_slots=slots)
    B = 2
    state = random_state(c, B)
    captured = []
    for layer in c.layers:
        step = layer.step

        def spy(*args, step=step):
            captured.append([s.clone() for s in args[4]])  # the slot groups: lower modules (l > 0), then higher
            return step(*args)

        layer.step = spy
    with torch.no_grad():
        _, new = c(torch.randn(1, B, IN), state, no_starts(1, B))
    before, after = [s[0] for s in layer_states(c, state)], [s[0] for s in layer_states(c, new)]  # [B, n, H]
    for l in (0, 1):
        higher = before[l + 1]
        expected = higher.transpose(0, 1) if slots == "modules" else higher.reshape(1, B, -1)
        assert torch.equal(captured[l][-1], expected)
        assert c.layers[l].kv_higher.shape[0] == expected.shape[-1]
    for l in (1, 2):  # bottom-up: the lower layer's modules at t, one slot each
        assert torch.equal(captured[l][0], after[l - 1].transpose(0, 1))
    assert [len(groups) for groups in captured] == [1, 2, 1]


def test_layer_slots_project_the_whole_higher_layer_with_their_own_weights():
    modules, layer = core("brims", top_down_slots="modules"), core("brims", top_down_slots="layer")
    n, H = SMALL["num_modules"], SMALL["module_size"]
    kv = SMALL["input_key_size"] + SMALL["input_value_size"]
    assert modules.layers[0].kv_higher.shape == (H, kv) and layer.layers[0].kv_higher.shape == (n * H, kv)
    assert modules.layers[1].kv_higher is None and layer.layers[1].kv_higher is None
    count = lambda c: sum(p.numel() for p in c.parameters())
    assert count(layer) - count(modules) == (n - 1) * H * kv
