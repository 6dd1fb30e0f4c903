"""PPO maths: masked GAE against hand-computed values, exact replay (ratio 1), save/load parity."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from brims_rl import checkpoint
from brims_rl.agent import Agent
from brims_rl.config import Config, PPOConfig
from brims_rl.cores import core_names
from brims_rl.ppo import compute_gae, masked_mean, ppo_loss, ppo_update
from brims_rl.rollout import Collector, Rollout
from scripted_env import ScriptedVecEnv


def f32_tol(*magnitudes) -> float:
    """A few float32 ulps of the largest number involved: a tolerance that holds on any CPU."""
    largest = max(1.0, *(abs(x) for group in magnitudes for x in group))
    return 16 * torch.finfo(torch.float32).eps * largest


def make_rollout(rewards, values, next_value, terminated=(), truncated=(), ignored=()) -> Rollout:
    T = len(rewards)
    r = Rollout.allocate(T, 1, (1,), torch.float32, torch.device("cpu"))
    r.rewards[:, 0] = torch.tensor(rewards, dtype=torch.float32)
    r.values[:, 0] = torch.tensor(values, dtype=torch.float32)
    r.next_value = torch.tensor([next_value], dtype=torch.float32)
    for t in terminated:
        r.terminated[t, 0] = True
    for t in truncated:
        r.truncated[t, 0] = True
    for t in ignored:
        r.ignored[t, 0] = True
    return r


def test_gae_matches_hand_computation_with_termination_truncation_and_autoreset():
    g, lam = 0.9, 0.5
    # t=0,1: episode A, terminated at t=1. t=2: ignored autoreset step (its value V=9 is never used as bootstrap).
    # t=3,4: episode B, truncated at t=4; t=5 is the autoreset step whose stored value (V=4) is V(final obs of B).
    # t=6: episode C, cut by the rollout's end: bootstraps on next_value = 2.
    rewards = [1.0, 2.0, 0.0, 1.0, 3.0, 0.0, 1.0]
    values = [0.5, 1.0, 9.0, 2.0, 1.5, 4.0, 0.5]
    r = make_rollout(rewards, values, next_value=2.0, terminated=[1], truncated=[4], ignored=[2, 5])
    adv, ret = compute_gae(r, g, lam)

    d1 = 2.0 - 1.0  # terminal: no bootstrap
    d0 = 1.0 + g * 1.0 - 0.5
    d4 = 3.0 + g * 4.0 - 1.5  # truncated: bootstrap on V(final obs) = values[5]
    d3 = 1.0 + g * 1.5 - 2.0
    d6 = 1.0 + g * 2.0 - 0.5
    expected = [d0 + g * lam * d1, d1, 0.0, d3 + g * lam * d4, d4, 0.0, d6]
    assert adv[:, 0].tolist() == pytest.approx(expected, abs=f32_tol(expected, values))
    assert ret[:, 0].tolist() == pytest.approx([a + v for a, v in zip(expected, values)], abs=f32_tol(expected, values))


def test_gae_without_episode_ends_is_the_discounted_lambda_sum():
    g, lam = 0.99, 0.95
    rewards, values, nv = [0.3, -1.0, 2.0, 0.0], [0.1, 0.2, -0.3, 0.4], 0.7
    adv, _ = compute_gae(make_rollout(rewards, values, nv), g, lam)
    deltas = [rewards[t] + g * (values[t + 1] if t < 3 else nv) - values[t] for t in range(4)]
    expected = [sum((g * lam) ** (k - t) * deltas[k] for k in range(t, 4)) for t in range(4)]
    assert adv[:, 0].tolist() == pytest.approx(expected, abs=f32_tol(expected, values, rewards))


def test_terminated_on_last_step_ignores_next_value():
    adv, _ = compute_gae(make_rollout([1.0], [0.25], next_value=100.0, terminated=[0]), 0.99, 0.95)
    assert adv.item() == pytest.approx(0.75)


def small_config(core: str) -> Config:
    config = Config()
    config.core.name = core
    config.core.options = {}
    config.model.encoder_size = 16
    config.model.mlp_hidden = 16
    config.ppo = PPOConfig(num_steps=24, num_minibatches=2, update_epochs=2)
    return config


@pytest.mark.parametrize("core", sorted(core_names()))
def test_policy_ratio_is_exactly_one_on_replay(core):
    torch.manual_seed(0)
    env = ScriptedVecEnv(num_envs=4)
    config = small_config(core)
    agent = Agent((5,), 3, config)
    with torch.no_grad():  # a confident policy, so that any replay error shows in the log-probs
        agent.actor.weight.normal_(0.0, 30.0)
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    collector = Collector(env, agent, config.ppo.num_steps, torch.device("cpu"))
    collector.collect()  # a first rollout so the second starts from a non-zero core state
    collector.collect()
    r = collector.rollout
    assert r.starts.any() and r.ignored.any()
    assert core == "ff" or any(s.abs().sum() > 0 for s in r.initial_state)  # ff has no state

    # Replaying whole env columns from the stored initial state reproduces every log-prob and value.
    with torch.no_grad():
        logits, values, _ = agent(r.obs, r.initial_state, r.starts)
    logprobs = torch.distributions.Categorical(logits=logits).log_prob(r.actions)
    assert logprobs.std() > 0.1  # the check below is not trivially satisfied by a uniform policy
    # The batched replay and the step-by-step rollout round differently in float32 (how much depends on the CPU's
    # kernels), so the tolerance is a few float32 ulps of the largest logit or value; a replay from a wrong state or
    # with a misplaced reset is off by orders of magnitude more.
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(logprobs, r.logprobs, atol=64 * eps * logits.abs().max().item(), rtol=0)
    torch.testing.assert_close(values, r.values, atol=64 * eps * max(1.0, values.abs().max().item()), rtol=0)

    stats = ppo_update(agent, optimizer, r, config.ppo, torch.Generator().manual_seed(0))
    assert stats.first_approx_kl < 1e-7
    assert math.isfinite(stats.policy_loss) and math.isfinite(stats.value_loss)
    assert stats.approx_kl > stats.first_approx_kl  # later minibatches see updated weights


@pytest.mark.parametrize("core", sorted(core_names()))
def test_save_load_gives_identical_greedy_actions(core, tmp_path):
    torch.manual_seed(1)
    config = small_config(core)
    agent = Agent((5,), 3, config)
    checkpoint.save_atomic({"model": agent.state_dict(), "config": config.to_dict()}, tmp_path / "c.pt")
    loaded = checkpoint.load(tmp_path / "c.pt")
    clone = Agent((5,), 3, Config.from_dict(loaded["config"]))
    clone.load_state_dict(loaded["model"])

    obs = torch.randn(20, 3, 5)
    starts = torch.zeros(20, 3, dtype=torch.bool)
    starts[0] = True
    starts[9, 1] = True
    actions = []
    for model in (agent, clone):
        state, acts = model.initial_state(3), []
        with torch.no_grad():
            for t in range(20):
                logits, _, state = model(obs[t:t + 1], state, starts[t:t + 1])
                acts.append(logits.argmax(-1))
        actions.append(torch.cat(acts))
    assert torch.equal(actions[0], actions[1])


def test_autoreset_transitions_are_masked_out_of_advantages_and_losses():
    torch.manual_seed(0)
    env = ScriptedVecEnv(num_envs=4)
    config = small_config("lstm")
    agent = Agent((5,), 3, config)
    collector = Collector(env, agent, config.ppo.num_steps, torch.device("cpu"))
    collector.collect()
    r = collector.rollout
    # the step after every episode end is ignored, and the observation it returns starts the next episode
    ended = r.terminated | r.truncated
    assert torch.equal(r.ignored[1:], ended[:-1]) and torch.equal(r.starts[2:], ended[:-2])
    adv, ret = compute_gae(r, 0.99, 0.95)
    assert torch.all(adv[r.ignored] == 0)

    # Whatever happens on an ignored step (its reward, action, log-prob) or what a terminated episode's successor
    # step is worth, changes nothing anywhere else.
    tampered = Rollout(**{**r.__dict__})
    tampered.rewards = torch.where(r.ignored, torch.full_like(r.rewards, 1e3), r.rewards)
    tampered.actions = torch.where(r.ignored, (r.actions + 1) % 3, r.actions)
    tampered.logprobs = torch.where(r.ignored, torch.full_like(r.logprobs, -50.0), r.logprobs)
    after_terminal = torch.zeros_like(r.ignored)
    after_terminal[1:] = r.terminated[:-1]
    tampered.values = torch.where(after_terminal, torch.full_like(r.values, -1e3), r.values)
    adv2, _ = compute_gae(tampered, 0.99, 0.95)
    valid = ~r.ignored
    torch.testing.assert_close(adv2[valid], adv[valid])

    losses = []
    for rollout in (r, tampered):
        model = copy.deepcopy(agent)
        stats = ppo_update(model, torch.optim.SGD(model.parameters(), lr=0.0), rollout, config.ppo,
                           torch.Generator().manual_seed(0))
        losses.append((stats.policy_loss, stats.value_loss, stats.entropy, stats.approx_kl))
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


# ---- the loss, pinned against an independent float64 reference on a hand-made batch ----------------------------
RATIO = [[0.5, 1.05, 1.6], [1.3, 0.7, 0.95], [0.9, 2.0, 1.1]]
ADVANTAGES = [[1.0, -2.0, -0.8], [0.5, -1.0, 2.5], [50.0, 0.7, -1.5]]  # the 50 is masked out: it must count nowhere
NEW_VALUES = [[1.0, 0.2, -0.5], [0.4, 2.0, 1.0], [9.0, 0.0, 0.3]]
OLD_VALUES = [[0.5, 0.25, 0.1], [0.9, 1.0, 1.05], [0.0, 0.5, 0.2]]
RETURNS = [[0.0, 1.0, -1.0], [2.0, 0.5, 1.0], [3.0, -0.2, 0.4]]
MASK = [[1, 1, 1], [1, 1, 1], [0, 1, 1]]


def reference_loss(cfg: PPOConfig, entropy: float) -> tuple[float, float, float, set[str]]:
    """Plain-Python float64 PPO loss over the valid entries, and which clip cases the batch exercised."""
    cells = [(t, n) for t in range(3) for n in range(3) if MASK[t][n]]
    advs = [ADVANTAGES[t][n] for t, n in cells]
    if cfg.norm_adv:
        mean = sum(advs) / len(advs)
        std = math.sqrt(sum((a - mean) ** 2 for a in advs) / len(advs))
        advs = [(a - mean) / (std + 1e-8) for a in advs]
    lo, hi, cases = 1 - cfg.clip_coef, 1 + cfg.clip_coef, set()
    policy, value = 0.0, 0.0
    for (t, n), a in zip(cells, advs):
        r = RATIO[t][n]
        unclipped, clipped = -a * r, -a * min(max(r, lo), hi)
        if clipped != unclipped:
            cases.add(("above" if r > hi else "below") + (" clip-wins" if clipped > unclipped else " ratio-wins"))
        policy += max(unclipped, clipped)
        v, v_old, ret = NEW_VALUES[t][n], OLD_VALUES[t][n], RETURNS[t][n]
        v_clipped = v_old + min(max(v - v_old, -cfg.clip_coef), cfg.clip_coef)
        if cfg.clip_vloss:
            if v_clipped != v:
                cases.add("value " + ("clip-wins" if (v_clipped - ret) ** 2 > (v - ret) ** 2 else "plain-wins"))
            value += max((v - ret) ** 2, (v_clipped - ret) ** 2)
        else:
            value += (v - ret) ** 2
    policy, value = policy / len(cells), 0.5 * value / len(cells)
    return policy, value, policy - cfg.ent_coef * entropy + cfg.vf_coef * value, cases


@pytest.mark.parametrize("norm_adv,clip_vloss", [(True, True), (False, True), (True, False)])
def test_ppo_loss_matches_a_float64_reference(norm_adv, clip_vloss):
    cfg = PPOConfig(clip_coef=0.2, ent_coef=0.05, vf_coef=0.7, norm_adv=norm_adv, clip_vloss=clip_vloss)
    entropy = 0.9
    t = lambda rows: torch.tensor(rows, dtype=torch.float64)  # noqa: E731
    policy, value, total = ppo_loss(t(RATIO), t(ADVANTAGES), t(NEW_VALUES), t(OLD_VALUES), t(RETURNS),
                                    torch.tensor(entropy, dtype=torch.float64), t(MASK), cfg)
    ref_policy, ref_value, ref_total, cases = reference_loss(cfg, entropy)
    # the batch exercises both sides of the clip, each with the clipped and the unclipped term winning the max
    assert {"above clip-wins", "above ratio-wins", "below clip-wins", "below ratio-wins"} <= cases
    if clip_vloss:
        assert {"value clip-wins", "value plain-wins"} <= cases
    assert policy.item() == pytest.approx(ref_policy, rel=1e-12, abs=1e-12)
    assert value.item() == pytest.approx(ref_value, rel=1e-12, abs=1e-12)
    assert total.item() == pytest.approx(ref_total, rel=1e-12, abs=1e-12)
    # the entropy bonus lowers the loss: more entropy, less loss, by exactly ent_coef per unit
    _, _, more_entropy = ppo_loss(t(RATIO), t(ADVANTAGES), t(NEW_VALUES), t(OLD_VALUES), t(RETURNS),
                                  torch.tensor(entropy + 1.0, dtype=torch.float64), t(MASK), cfg)
    assert (more_entropy - total).item() == pytest.approx(-cfg.ent_coef, rel=1e-12)


def test_gradients_are_clipped_to_max_grad_norm():
    torch.manual_seed(0)
    config = small_config("lstm")
    config.ppo = PPOConfig(num_steps=16, num_minibatches=1, update_epochs=1, max_grad_norm=0.05)
    agent = Agent((5,), 3, config)
    collector = Collector(ScriptedVecEnv(num_envs=4), agent, 16, torch.device("cpu"))
    collector.collect()
    r = collector.rollout

    # the raw gradient of the loss, computed here from the loss of the whole batch (one minibatch, one epoch)
    reference = copy.deepcopy(agent)
    advantages, returns = compute_gae(r, config.ppo.gamma, config.ppo.gae_lambda)
    mask = (~r.ignored).float()
    logits, values, _ = reference(r.obs, r.initial_state, r.starts)
    dist = torch.distributions.Categorical(logits=logits)
    ratio = (dist.log_prob(r.actions) - r.logprobs).exp()
    _, _, loss = ppo_loss(ratio, advantages, values, r.values, returns, masked_mean(dist.entropy(), mask), mask,
                          config.ppo)
    grads = torch.autograd.grad(loss, list(reference.parameters()), allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(reference.parameters(), grads)]
    norm = math.sqrt(sum(float((g**2).sum()) for g in grads))
    assert norm > 4 * config.ppo.max_grad_norm  # clipping binds

    before = [p.detach().clone() for p in agent.parameters()]
    ppo_update(agent, torch.optim.SGD(agent.parameters(), lr=1.0), r, config.ppo, torch.Generator().manual_seed(0))
    steps = [p.detach() - b for p, b in zip(agent.parameters(), before)]
    scale = config.ppo.max_grad_norm / (norm + 1e-6)  # torch's clip_grad_norm_ divides by norm + 1e-6
    # float32 sums over the columns in another order: a tolerance far below the 4x that an unclipped step would give
    largest = max(float(g.abs().max()) for g in grads) * scale
    for step, g in zip(steps, grads):
        torch.testing.assert_close(step, -scale * g, rtol=0, atol=1e-3 * largest)
    assert math.sqrt(sum(float((s**2).sum()) for s in steps)) == pytest.approx(config.ppo.max_grad_norm, rel=1e-3)


def test_the_kl_penalty_adds_its_coefficient_times_the_exact_kl_from_the_rollout_policy():
    """ppo.kl_coef: the loss gains kl_coef * mean KL(rollout's action distribution || current one), computed
    from the distributions the rollout stored, and is exactly 0 on the replay with the rollout's weights."""
    from brims_rl.ppo import Minibatch, minibatch_loss

    torch.manual_seed(0)
    config = small_config("lstm")
    config.ppo.kl_coef = 0.2
    agent = Agent((5,), 3, config)
    collector = Collector(ScriptedVecEnv(num_envs=4), agent, config.ppo.num_steps, torch.device("cpu"))
    collector.collect()
    r = collector.rollout
    advantages, returns = compute_gae(r, config.ppo.gamma, config.ppo.gae_lambda)
    valid = (~r.ignored).float()
    cols = torch.tensor([0, 2])
    coef = torch.tensor(0.2)
    mb = Minibatch.take(r, advantages, returns, valid, cols, kl_coef=coef)
    *_, kl = minibatch_loss(agent, mb, config.ppo)
    assert kl.item() < 1e-6  # the rollout's own weights: the same distributions
    with torch.no_grad():  # move the policy, then compare the penalty with torch's KL of the two distributions
        for p in agent.actor.parameters():
            p.add_(torch.randn_like(p))
    loss, *_, kl = minibatch_loss(agent, mb, config.ppo)
    plain = minibatch_loss(agent, Minibatch.take(r, advantages, returns, valid, cols), config.ppo)[0]
    with torch.no_grad():
        logits, _, _ = agent(mb.obs, mb.state, mb.starts)
        old = torch.distributions.Categorical(logits=mb.policy_params)
        expected = masked_mean(torch.distributions.kl_divergence(old, torch.distributions.Categorical(logits=logits)),
                               mb.mask)
    assert kl.item() > 1e-3
    torch.testing.assert_close(kl, expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(loss - plain, 0.2 * expected, rtol=1e-4, atol=f32_tol([loss.item()]))


@pytest.mark.parametrize("kl,expected", [(0.05, 0.3), (0.021, 0.3), (0.02, 0.2), (0.01, 0.2), (0.005, 0.2),
                                         (0.0049, 0.1), (0.0, 0.1)])
def test_the_kl_coefficient_adapts_as_rllib_does(kl, expected):
    """RLlib PPO's update_kl: x1.5 when the update's KL exceeds 2 x target, x0.5 below target / 2."""
    from brims_rl.ppo import adapt_kl_coef

    assert adapt_kl_coef(0.2, kl, 0.01) == pytest.approx(expected)


def test_the_update_adapts_the_coefficient_and_a_resumed_run_continues_with_it(tmp_path):
    import brims_rl as br

    config = br.make_config("CueMemory-v0", core="lstm", total_steps=512, num_envs=4,
                            overrides=["ppo.num_steps=64", "ppo.kl_coef=0.2", "ppo.kl_target=1e-9"])
    result = br.train(config, tmp_path / "run")
    updates = 512 // (64 * 4)
    saved = checkpoint.load(result.checkpoint)["ppo"]["kl_coef"]
    assert saved == pytest.approx(0.2 * 1.5**updates)  # every update's KL is above the tiny target
    config.total_steps = 768
    resumed = br.train(config, tmp_path / "run", resume=True)
    assert checkpoint.load(resumed.checkpoint)["ppo"]["kl_coef"] == pytest.approx(saved * 1.5)
