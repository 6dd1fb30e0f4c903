"""Top-k selections recorded while acting and honoured by PPO's replay, until the update's first optimizer step.

A replay computes the same steps in other shapes (and, on a GPU, other kernels), so its null-attention scores can
differ from the rollout's by rounding. Where two modules are that close, a selection could flip and PPO's ratio would
no longer be 1. The core records its selections while acting; the replay resolves every near tie (within
`tie_tolerance`) as recorded, and lets a real score difference decide otherwise. Once an optimizer step has changed
the weights the record no longer describes them, and PPO leaves it out.
"""

from __future__ import annotations

import copy

import pytest
import torch

from brims_rl.agent import Agent
from brims_rl.cores import make_core
from brims_rl.cores.modular import DEFAULT_TIE_TOLERANCE, select_top_k
from brims_rl.learner import Learner
from brims_rl.ppo import ppo_update
from brims_rl.rollout import Collector
from scripted_env import ScriptedVecEnv
from test_ppo import small_config

TOL = DEFAULT_TIE_TOLERANCE


def selected(scores: list[float], k: int, preferred: list[int] | None = None, tolerance: float = TOL) -> list[int]:
    """Indices of the active modules for one env."""
    s = torch.tensor(scores, dtype=torch.float32).unsqueeze(1)
    pref = None
    if preferred is not None:
        pref = torch.zeros_like(s, dtype=torch.bool)
        pref[preferred] = True
    return select_top_k(s, k, pref, tolerance)[:, 0].nonzero().flatten().tolist()


def test_selection_takes_the_least_null_attention_and_breaks_ties_by_index():
    assert selected([0.3, 0.1, 0.2, 0.4], 2) == [1, 2]
    assert selected([0.25, 0.25, 0.25, 0.25], 2) == [0, 1]


def test_a_recorded_selection_wins_a_near_tie_and_loses_a_real_difference():
    near = [0.2, 0.2 + TOL / 4, 0.9, 0.9]
    assert selected(near, 1) == [0]
    assert selected(near, 1, preferred=[1]) == [1]  # within the tolerance: as recorded
    assert selected(near, 1, preferred=[1], tolerance=0.0) == [0]  # no tolerance: scores only
    far = [0.2, 0.2 + 2 * TOL, 0.9, 0.9]
    assert selected(far, 1, preferred=[1]) == [0]  # a real difference: the module's own score
    assert selected([0.25] * 4, 2, preferred=[2, 3]) == [2, 3]  # an exact tie broken the other way while acting


def test_selection_is_always_exactly_top_k_whatever_is_preferred():
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(6, 500, generator=gen) * 1e-5  # mostly near ties
    for count in range(7):  # 0 to 6 preferred modules per env
        preferred = torch.zeros(6, 500, dtype=torch.bool)
        preferred[torch.rand(6, 500, generator=gen).argsort(0)[:count], torch.arange(500)] = True
        assert (select_top_k(scores, 4, preferred, TOL).sum(0) == 4).all()


def near_tied_queries(core: torch.nn.Module, scale: float, gen: torch.Generator) -> None:
    """Queries so small that every module's null attention is within ~scale of every other's: near ties at every
    step, broken by whichever rounding the queries happen to have."""
    with torch.no_grad():
        for layer in core.layers:
            layer.query.copy_(torch.randn(layer.query.shape, generator=gen) * scale)
            layer.query_bias.copy_(torch.randn(layer.query_bias.shape, generator=gen) * scale)


@pytest.mark.parametrize("name", ["rims", "brims"])
def test_acting_records_exactly_top_k_decisions_per_layer(name):
    torch.manual_seed(0)
    core = make_core(name, 16)
    T, B = 7, 5
    with torch.no_grad():
        core(torch.randn(T, B, 16), core.initial_state(B), torch.zeros(T, B, dtype=torch.bool))
    decisions = core.last_decisions
    assert decisions.shape == (T, B, core.decision_size) and decisions.dtype == torch.bool
    for d, layer in zip(decisions.split([l.num_modules for l in core.layers], -1), core.layers):
        assert (d.sum(-1) == layer.top_k).all()


@pytest.mark.parametrize("name", ["rims", "brims"])
def test_replay_with_recorded_decisions_selects_as_the_rollout_did_despite_rounding_sized_differences(name):
    """Core B differs from core A only in query rounding (~1e-6, far under the tolerance): B's own selections differ
    from A's at most steps, but B replaying with A's recorded decisions selects exactly what A did."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    acting = make_core(name, 16)
    near_tied_queries(acting, 1e-6, gen)
    replaying = copy.deepcopy(acting)
    near_tied_queries(replaying, 1e-6, gen)
    T, B = 32, 16
    x = torch.randn(T, B, 16)
    starts = torch.zeros(T, B, dtype=torch.bool)
    starts[0] = starts[10, 3] = True
    state = acting.initial_state(B)
    with torch.no_grad():
        y_acting, _ = acting(x, state, starts)
        recorded = acting.last_decisions
        replaying(x, state, starts)
        own = replaying.last_decisions
        y_replay, _ = replaying(x, state, starts, decisions=recorded)
        honoured = replaying.last_decisions
    assert (own != recorded).any(-1).float().mean() > 0.25  # without the record, the ties go the other way often
    assert torch.equal(honoured, recorded)
    # same modules active everywhere: outputs differ only by the queries' rounding-sized effect on attention
    assert (y_replay - y_acting).abs().max() < 1e-3 * y_acting.abs().max()


def test_decisions_of_the_wrong_shape_are_refused():
    core = make_core("rims", 8)
    x, starts = torch.randn(3, 2, 8), torch.zeros(3, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="decisions must be bool"):
        core(x, core.initial_state(2), starts, decisions=torch.zeros(3, 2, 5, dtype=torch.bool))


@pytest.mark.parametrize("bad", [-1e-5, 1.0, float("nan"), True, "0.1"])
def test_bad_tie_tolerance_is_refused(bad):
    with pytest.raises(ValueError, match="tie_tolerance"):
        make_core("brims", 8, tie_tolerance=bad)


@pytest.mark.parametrize("name", ["rims", "brims"])
def test_ppo_replays_with_the_record_only_until_its_first_optimizer_step(name):
    """The record absorbs rounding against the rollout's weights: the first minibatch (weights as in the rollout)
    replays with its columns' decisions, every later one (weights changed) with none, so the scores decide."""
    torch.manual_seed(0)
    env = ScriptedVecEnv(num_envs=4)
    config = small_config(name)
    agent = Agent((5,), 3, config)
    agent.core.trace_modules()
    collector = Collector(env, agent, config.ppo.num_steps, torch.device("cpu"))
    collector.collect()
    r = collector.rollout
    trace = agent.core.module_trace()
    trace_active = torch.cat([layer["active"] for layer in trace], -1)[: r.rewards.shape[0]]
    assert torch.equal(r.decisions, trace_active)  # the rollout stored what the core did at every step

    replays = []

    def spy(module, args, kwargs):
        replays.append((args[0].shape[1], kwargs.get("decisions")))

    agent.core.trace_modules(False)
    agent.core.register_forward_pre_hook(spy, with_kwargs=True)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(4, generator=torch.Generator().manual_seed(0))
    stats = ppo_update(agent, torch.optim.Adam(agent.parameters(), lr=1e-3), r, config.ppo, generator)
    assert len(replays) == config.ppo.update_epochs * config.ppo.num_minibatches
    first_cols = order[:2]
    assert replays[0][0] == 2 and torch.equal(replays[0][1], r.decisions[:, first_cols])
    assert all(d is None for _, d in replays[1:])
    assert stats.first_approx_kl == 0.0


def collected(core: str) -> tuple:
    """(config, agent, collector) after one rollout of the small config on the scripted env, seed 0."""
    torch.manual_seed(0)
    config = small_config(core)
    agent = Agent((5,), 3, config)
    collector = Collector(ScriptedVecEnv(num_envs=4), agent, config.ppo.num_steps, torch.device("cpu"))
    collector.collect()
    return config, agent, collector


def test_a_skipped_first_step_keeps_the_record_for_the_next_minibatch():
    """Until an optimizer step has changed the weights, every minibatch still replays with the record."""
    config, agent, collector = collected("rims")
    replays = []
    agent.core.register_forward_pre_hook(lambda m, a, kw: replays.append(kw.get("decisions")), with_kwargs=True)
    calls = []

    def poison_first_backward():  # the first minibatch's gradients are non-finite: its step is skipped
        calls.append(1)
        if len(calls) == 1:
            next(agent.parameters()).grad.fill_(float("nan"))

    Learner(agent, torch.optim.Adam(agent.parameters(), lr=1e-3), config.ppo,
            average_gradients=poison_first_backward).update(collector.rollout, torch.Generator().manual_seed(0))
    assert replays[0] is not None and replays[1] is not None  # no step taken after the first minibatch
    assert all(d is None for d in replays[2:])


@pytest.mark.parametrize("name", ["rims", "brims"])
def test_a_record_of_no_preferred_module_is_no_record(name):
    """A captured minibatch graph keeps its decisions input; PPO zeroes it to leave the record out. All-False
    decisions must select and compute exactly as no decisions."""
    torch.manual_seed(0)
    core = make_core(name, 16)
    near_tied_queries(core, 1e-6, torch.Generator().manual_seed(1))
    T, B = 12, 6
    x, starts = torch.randn(T, B, 16), torch.zeros(T, B, dtype=torch.bool)
    state = core.initial_state(B)
    y_none, s_none = core(x, state, starts)
    y_zero, s_zero = core(x, state, starts, decisions=torch.zeros(T, B, core.decision_size, dtype=torch.bool))
    assert torch.equal(y_none, y_zero)
    assert all(torch.equal(a, b) for a, b in zip(s_none, s_zero))


def test_graphed_minibatch_input_copy_zeroes_left_out_decisions():
    from brims_rl.minibatch_graph import _copy

    static = torch.ones(3, 2, 4, dtype=torch.bool)
    _copy(static, None)
    assert not static.any()
    recorded = torch.rand(3, 2, 4) > 0.5
    _copy(static, recorded)
    assert torch.equal(static, recorded)


def test_graphed_update_on_cpu_is_the_eager_update():
    """perf.cuda_graph_update asks for a captured minibatch only on CUDA; elsewhere the update is unchanged."""
    config, agent, collector = collected("brims")
    twin = copy.deepcopy(agent)
    stats = [Learner(a, torch.optim.Adam(a.parameters(), lr=1e-3), config.ppo, cuda_graph=graph).update(
        collector.rollout, torch.Generator().manual_seed(0)) for a, graph in ((agent, False), (twin, True))]
    assert stats[0] == stats[1]
    assert all(torch.equal(p, q) for p, q in zip(agent.parameters(), twin.parameters()))
