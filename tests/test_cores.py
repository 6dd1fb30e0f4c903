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
    with pytest.raises(UserError, match="^core 'lstm' has no option 'hiden_size'; its options are: hidden_size, "
                                        "num_layers$"):
        make_core("lstm", INPUT, hiden_size=3)
    with pytest.raises(UserError, match="^bad options for core 'lstm': "):
        make_core("lstm", INPUT, hidden_size=1.5)


@pytest.mark.parametrize("scale", [1.0, 300.0])
@pytest.mark.parametrize("path", ["padded", "packed"])
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_lstm_and_gru_with_episode_starts_equal_the_step_loop(name, path, scale):
    """Both ways cores/rnn.py runs a sequence with starts inside it (reset and hold steps in one fused call, the
    CPU's; every episode packed into one call, CUDA's) give the step-by-step result, gradients included, in
    float64: outputs, final state and the gradients of input, state and weights. Scale 300 multiplies the weights,
    biases and initial state, so that the padded path's flag weights must outgrow large pre-activations."""
    from brims_rl.cores.rnn import EpisodePacking

    torch.manual_seed(0)
    core = make_core(name, 6, hidden_size=5, num_layers=2).double()
    with torch.no_grad():
        for p in core.parameters():
            p.add_(torch.randn_like(p)).mul_(scale)  # non-zero biases too
    T, B = 30, 5
    x = torch.randn(T, B, 6, dtype=torch.float64)
    starts = torch.rand(T, B) < 0.2
    starts[0, 1] = starts[T - 1, 2] = True
    starts[1:, 4] = False  # one row with no start inside: the most hold steps
    starts[5, 3] = starts[6, 3] = True  # back-to-back starts
    state = tuple(scale * torch.randn_like(s, dtype=torch.float64) for s in core.initial_state(B))
    weight = torch.randn(T, B, 5, dtype=torch.float64)

    def sequence(x_, state_):
        if path == "padded":
            return core(x_, state_, starts)
        keep = ~starts[0].view(B, 1, 1)  # forward() zeroes the rows starting at t = 0 before either path
        return core._packed(x_, tuple(torch.where(keep, s, 0.0) for s in state_), EpisodePacking(starts))

    def steps(x_, state_):
        outputs = []
        for t in range(T):
            y, state_ = core(x_[t:t + 1], state_, starts[t:t + 1])
            outputs.append(y)
        return torch.cat(outputs), state_

    results = []
    for run in (sequence, steps):
        core.zero_grad(set_to_none=True)
        x_ = x.clone().requires_grad_()
        state_ = tuple(s.clone().requires_grad_() for s in state)
        y, final = run(x_, state_)
        ((y * weight).sum() + sum((f * f).sum() for f in final)).backward()
        results.append([y, *final, x_.grad, *(s.grad for s in state_), *(p.grad for p in core.parameters())])
    eps = torch.finfo(torch.float64).eps
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e3 * eps * max(1.0, b.abs().max().item()))


def test_optional_features_are_asked_through_cores_features():
    """A core that offers none of the optional features works with every question asked about them; RIMs/BRIMs
    answer each as they declare."""
    from brims_rl.cores import features

    plain = make_core("lstm", 4)
    assert features.decision_size(plain) == 0 and features.last_decisions(plain) is None
    assert features.diagnostics(plain) == {} and not features.traces_modules(plain)
    assert features.capturable_policy_step(plain) and not features.capturable_replay(plain)
    brims = make_core("brims", 4, num_modules=3, top_k=2, module_size=4, input_key_size=4, input_value_size=4,
                      comm_key_size=2, comm_value_size=2)
    assert features.decision_size(brims) == 6 and features.traces_modules(brims)
    assert features.capturable_policy_step(brims) and features.capturable_replay(brims)
    with torch.no_grad():
        brims(torch.randn(3, 2, 4), brims.initial_state(2), torch.zeros(3, 2, dtype=torch.bool))
    assert features.last_decisions(brims).shape == (3, 2, 6)
    assert sum(value for key, value in features.diagnostics(brims).items() if key.startswith("layer0/module")) == \
        pytest.approx(2.0)
