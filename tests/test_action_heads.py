"""Action heads (brims_rl/action_heads.py, docs/spaces.md): log-probs and entropies against an independent float64
computation, clipping only for the env, exact replays for every core with every head, and a MultiDiscrete-action
memory task that an LSTM learns and a feedforward agent cannot."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import space_envs  # noqa: F401  (registers the envs)
from brims_rl.action_heads import make_action_head
from brims_rl.agent import Agent
from brims_rl.cores import core_names
from brims_rl.environments.gym_env import GymVecEnv
from brims_rl.ppo import ppo_update
from brims_rl.rollout import Collector
from scripted_env import ScriptedVecEnv
from test_ppo import small_config

TESTS = Path(__file__).resolve().parent
HEADS = {"discrete": gym.spaces.Discrete(3), "multidiscrete": gym.spaces.MultiDiscrete([3, 2, 4]),
         "box": gym.spaces.Box(-1.0, 1.0, (2,), np.float32)}


def log_softmax64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_factored_categorical_log_probs_and_entropies_match_float64():
    head = make_action_head(gym.spaces.MultiDiscrete([3, 2, 4]))
    assert head.num_outputs == 9 and head.action_shape == (3,) and head.action_dtype == torch.long
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (5, 7, 9)).astype(np.float32)
    actions = np.stack([rng.integers(0, k, (5, 7)) for k in (3, 2, 4)], axis=-1)
    logprob, entropy = head.log_prob_entropy(torch.from_numpy(logits), torch.from_numpy(actions))
    expected_lp, expected_ent = np.zeros((5, 7)), np.zeros((5, 7))
    offset = 0
    for i, k in enumerate((3, 2, 4)):
        lsm = log_softmax64(logits[..., offset:offset + k])
        expected_lp += np.take_along_axis(lsm, actions[..., i:i + 1], -1)[..., 0]
        expected_ent += -(np.exp(lsm) * lsm).sum(-1)
        offset += k
    np.testing.assert_allclose(logprob.numpy(), expected_lp, rtol=0, atol=1e-5)
    np.testing.assert_allclose(entropy.numpy(), expected_ent, rtol=0, atol=1e-5)
    # a sample's log-prob is the log-prob PPO computes for it; greedy is each component's argmax
    sampled, sampled_lp = head.sample(torch.from_numpy(logits))
    torch.testing.assert_close(sampled_lp, head.log_prob_entropy(torch.from_numpy(logits), sampled)[0])
    greedy = head.greedy(torch.from_numpy(logits)).numpy()
    np.testing.assert_array_equal(greedy, np.stack([logits[..., :3].argmax(-1), logits[..., 3:5].argmax(-1),
                                                    logits[..., 5:].argmax(-1)], -1))


def test_gaussian_log_probs_and_entropies_match_float64():
    head = make_action_head(gym.spaces.Box(-2.0, 2.0, (3,), np.float32))
    assert head.action_dtype == torch.float32 and torch.equal(head.log_std.detach(), torch.zeros(3))  # CleanRL's init
    rng = np.random.default_rng(1)
    log_std = rng.normal(0, 0.5, 3)
    with torch.no_grad():
        head.log_std.copy_(torch.from_numpy(log_std))
    mean = rng.normal(0, 1, (4, 6, 3)).astype(np.float32)
    actions = rng.normal(0, 2, (4, 6, 3)).astype(np.float32)
    logprob, entropy = head.log_prob_entropy(torch.from_numpy(mean), torch.from_numpy(actions))
    std = np.exp(log_std.astype(np.float32).astype(np.float64))
    a, m = actions.astype(np.float64), mean.astype(np.float64)
    expected_lp = np.zeros((4, 6))
    for d in range(3):
        expected_lp += (-(a[..., d] - m[..., d]) ** 2 / (2 * std[d] ** 2) - math.log(std[d])
                        - 0.5 * math.log(2 * math.pi))
    expected_ent = sum(0.5 + 0.5 * math.log(2 * math.pi) + math.log(s) for s in std)
    np.testing.assert_allclose(logprob.detach().numpy(), expected_lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(entropy.detach().numpy(), np.full((4, 6), expected_ent), rtol=0, atol=1e-5)
    torch.testing.assert_close(head.greedy(torch.from_numpy(mean)), torch.from_numpy(mean))
    sampled, sampled_lp = head.sample(torch.from_numpy(mean), torch.Generator().manual_seed(0))
    torch.testing.assert_close(sampled_lp, head.log_prob_entropy(torch.from_numpy(mean), sampled)[0])
    # the entropy's gradient reaches the log-std: a higher entropy bonus widens the policy
    head.log_prob_entropy(torch.from_numpy(mean), sampled)[1].sum().backward()
    torch.testing.assert_close(head.log_std.grad, torch.full((3,), 24.0, dtype=head.log_std.dtype))


def test_to_env_reshapes_offsets_and_clips():
    md = make_action_head(gym.spaces.MultiDiscrete([[2, 3], [4, 5]], start=[[1, 0], [0, -2]]))
    out = md.to_env(np.array([[1, 2, 3, 4]]))
    np.testing.assert_array_equal(out, [[[2, 2], [3, 2]]])
    assert md.space.contains(out[0])
    box = make_action_head(gym.spaces.Box(np.array([-1, 0], np.float32), np.array([1, 5], np.float32)))
    np.testing.assert_array_equal(box.to_env(np.array([[-3.0, 2.0], [0.5, 9.0]], np.float32)), [[-1, 2], [0.5, 5]])


def test_the_env_gets_clipped_actions_and_the_rollout_keeps_the_samples():
    torch.manual_seed(0)
    vec = gym.make_vec("BoxAct-v0", num_envs=2, vectorization_mode="sync",
                       vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP})
    env = GymVecEnv(vec, seed=0)
    agent = Agent(env.single_observation_space.shape, env.single_action_space, small_config("ff"))
    with torch.no_grad():
        agent.actor.bias.fill_(1.5)  # the mean sits outside the bounds: most samples need clipping
    collector = Collector(env, agent, 16, torch.device("cpu"))
    collector.collect()
    r = collector.rollout
    assert r.actions.dtype == torch.float32 and r.actions.shape == (16, 2, 2)
    assert (r.actions > 1).float().mean() > 0.5  # stored unclipped
    for i in range(2):
        received = np.array(vec.envs[i].unwrapped.received)
        stepped = r.actions[~r.ignored[:, i], i].numpy()  # autoreset steps do not reach the env
        assert received.shape == stepped.shape
        np.testing.assert_array_equal(received, np.clip(stepped, -1.0, 1.0))
    # the stored log-probs are those of the unclipped samples
    with torch.no_grad():
        out, _, _ = agent(r.obs, r.initial_state, r.starts)
    logprob, _ = agent.action_head.log_prob_entropy(out, r.actions)
    torch.testing.assert_close(logprob, r.logprobs, atol=1e-5, rtol=0)
    env.close()


# ---- every core with every head: exact replay ----------------------------------------------------------------------
class SpaceScriptedVecEnv(ScriptedVecEnv):
    """The shared scripted env with another action space (rewarded for a first action component near 0)."""

    def __init__(self, action_space: gym.Space, **kwargs) -> None:
        super().__init__(**kwargs)
        self.single_action_space = action_space

    def step(self, actions):
        first = np.asarray(actions).reshape(self.num_envs, -1)[:, 0]
        return super().step(np.round(first).astype(np.int64))


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("core", sorted(core_names()))
def test_every_core_with_every_head_replays_its_rollout_exactly(core, head):
    torch.manual_seed(0)
    env = SpaceScriptedVecEnv(HEADS[head], num_envs=4)
    config = small_config(core)
    agent = Agent((5,), HEADS[head], config)
    with torch.no_grad():  # a confident policy, so that a replay error shows in the log-probs
        agent.actor.weight.normal_(0.0, 30.0 if head != "box" else 3.0)
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    collector = Collector(env, agent, config.ppo.num_steps, torch.device("cpu"))
    collector.collect()
    collector.collect()
    r = collector.rollout
    assert r.actions.shape[2:] == agent.action_head.action_shape and r.actions.dtype == agent.action_head.action_dtype
    with torch.no_grad():
        out, _, _ = agent(r.obs, r.initial_state, r.starts)
        logprobs, _ = agent.action_head.log_prob_entropy(out, r.actions)
    assert logprobs.std() > 0.1
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(logprobs, r.logprobs, atol=256 * eps * max(1.0, r.logprobs.abs().max().item()), rtol=0)
    stats = ppo_update(agent, optimizer, r, config.ppo, torch.Generator().manual_seed(0))
    assert stats.first_approx_kl < 1e-7
    assert math.isfinite(stats.policy_loss) and math.isfinite(stats.entropy)
    assert stats.approx_kl > stats.first_approx_kl


# ---- a memory task with MultiDiscrete actions ----------------------------------------------------------------------
MEMORY_STEPS = 28_672  # 28 updates of the default 8 envs x 128 steps


def final_return(run: Path) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    last = [e.value for e in acc.Scalars("charts/episodic_return") if e.step > MEMORY_STEPS - 4096]
    assert len(last) > 100
    return float(np.mean(last))


@pytest.mark.slow
def test_an_lstm_learns_a_memory_task_with_multidiscrete_actions_and_ff_cannot(tmp_path):
    """MemoryDigits: two digits at t=0, two blanks, then both action components must name them (0.5 each). A
    memoryless agent gets 0.5 on average; one that remembers gets 1. Default PPO; both runs at once, one thread
    each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
    start = time.monotonic()
    procs = {core: subprocess.Popen([sys.executable, "-m", "brims_rl", "train", "--env", "space_envs:MemoryDigits-v0",
                                     "--core", core, "--total-steps", str(MEMORY_STEPS), "--run-dir",
                                     str(tmp_path / core)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
             for core in ("lstm", "ff")}
    outputs = {core: proc.communicate(timeout=600)[0] for core, proc in procs.items()}
    for core, proc in procs.items():
        assert proc.returncode == 0, outputs[core][-2000:]
    returns = {core: final_return(tmp_path / core) for core in procs}
    print(f"MemoryDigits after {MEMORY_STEPS} steps: {returns} in {time.monotonic() - start:.0f} s")
    assert returns["lstm"] > 0.85 and returns["lstm"] - returns["ff"] > 0.3
    assert abs(returns["ff"] - 0.5) < 0.15
