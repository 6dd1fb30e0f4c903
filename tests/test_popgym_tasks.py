"""Every POPGym task that installs without extras trains with every core, and its policy acts from the checkpoint.

One tiny update per run (4 envs x 32 steps): this checks that every observation and action space of the suite goes
through encoder, core, heads, PPO, checkpoint and `Policy.act`, not that anything learns. Every core on every Easy
task; LSTM on every task at every difficulty (difficulties change sizes, not spaces).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import brims_rl as br

popgym_envs = pytest.importorskip("popgym.envs")
pytestmark = pytest.mark.slow  # about a minute in all

IDS = sorted(info["id"] for info in popgym_envs.ALL.values())
EASY = [i for i in IDS if i.endswith("Easy-v0")]
TINY = ["ppo.num_steps=32", "ppo.num_minibatches=2", "ppo.update_epochs=1"]
CORES = ["ff", "lstm", "gru", "rims", "brims"]


def train_and_act(env_id: str, core: str, tmp_path) -> None:
    overrides = TINY + (["core.options.compile=false"] if core in ("rims", "brims") else [])
    config = br.make_config(env=env_id, core=core, total_steps=128, num_envs=4, overrides=overrides)
    result = br.train(config, tmp_path / "run")
    assert result.step == 128
    policy = br.load_policy(result.run_dir)
    env = gym.make_vec(env_id, num_envs=2, vectorization_mode="sync",
                       vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
    obs, _ = env.reset(seed=0)
    state, starts = policy.initial_state(2), np.ones(2, dtype=bool)
    for greedy in (False, True, False):
        actions, state = policy.act(obs, state, starts, greedy=greedy)
        assert env.action_space.contains(actions)
        obs, _, terminated, truncated, _ = env.step(actions)
        starts = terminated | truncated
    env.close()


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("env_id", EASY)
def test_every_easy_task_trains_and_acts_with_every_core(env_id, core, tmp_path):
    train_and_act(env_id, core, tmp_path)


@pytest.mark.parametrize("env_id", [i for i in IDS if i not in EASY])
def test_every_task_trains_and_acts_at_every_difficulty(env_id, tmp_path):
    train_and_act(env_id, "lstm", tmp_path)


def test_the_suite_is_all_fourteen_tasks_at_three_difficulties():
    assert len(EASY) == 14 and len(IDS) == 42
