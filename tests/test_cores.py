"""The core contract, checked for every registered core."""

from __future__ import annotations

import pytest
import torch

from brims_rl.cores import check_core, core_names, make_core
from brims_rl.errors import UserError

INPUT = 12


@pytest.mark.parametrize("name", sorted(core_names()))
def test_every_built_in_core_keeps_the_contract(name):
    torch.manual_seed(0)
    check_core(make_core(name, INPUT), INPUT, batch_size=3, steps=8)


@pytest.mark.parametrize("name", sorted(core_names()))
def test_reset_equals_fresh_start_and_cuts_gradients(name):
    torch.manual_seed(0)
    core = make_core(name, INPUT)
    T, B, cut = 6, 2, 3
    x = torch.randn(T, B, INPUT, requires_grad=True)
    starts = torch.zeros(T, B, dtype=torch.bool)
    starts[cut] = True
    state = tuple(torch.randn_like(s) for s in core.initial_state(B))
    y, _ = core(x, state, starts)
    fresh, _ = core(x[cut:], core.initial_state(B), torch.zeros(T - cut, B, dtype=torch.bool))
    torch.testing.assert_close(y[cut:], fresh, atol=1e-5, rtol=1e-5)

    y[cut:].sum().backward()
    assert x.grad[:cut].abs().max() == 0  # nothing after the reset depends on inputs before it
    assert x.grad[cut:].abs().max() > 0


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_recurrent_cores_remember(name):
    core = make_core(name, INPUT)
    x = torch.randn(4, 1, INPUT)
    no_reset = torch.zeros(4, 1, dtype=torch.bool)
    y1, _ = core(x, core.initial_state(1), no_reset)
    x2 = x.clone()
    x2[0] += 1.0
    y2, _ = core(x2, core.initial_state(1), no_reset)
    assert not torch.allclose(y1[-1], y2[-1])  # the last output depends on the first input


def test_unknown_core_and_bad_options_are_user_errors():
    with pytest.raises(UserError, match="unknown core 'transformer'"):
        make_core("transformer", INPUT)
    with pytest.raises(UserError, match="bad options"):
        make_core("lstm", INPUT, hiden_size=3)
