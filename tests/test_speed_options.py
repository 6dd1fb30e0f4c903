"""Speed options keep the maths: a compiled core step gives the same outputs, gradients and PPO losses."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch._dynamo

from brims_rl.agent import Agent
from brims_rl.config import Config, PPOConfig
from brims_rl.ppo import ppo_update
from brims_rl.rollout import Collector
from scripted_env import ScriptedVecEnv


def agent_config(compile_core: bool) -> Config:
    config = Config()
    config.core.name = "rims"
    config.core.options = {"module_size": 8, "input_value_size": 16, "input_key_size": 8, "compile": compile_core}
    config.model.encoder_size = 16
    config.model.mlp_hidden = 16
    config.ppo = PPOConfig(num_steps=16, num_minibatches=2, update_epochs=2)
    return config


def test_compiled_core_gives_the_same_ppo_losses_as_eager(monkeypatch):
    torch.manual_seed(0)
    eager = Agent((5,), 3, agent_config(False))
    compiled = Agent((5,), 3, agent_config(True))
    compiled.load_state_dict(eager.state_dict())
    # here a failed compile must fail, not quietly run eagerly
    monkeypatch.setattr(torch._dynamo.config, "suppress_errors", False)

    collector = Collector(ScriptedVecEnv(num_envs=4), eager, 16, torch.device("cpu"))
    collector.collect()
    rollout = collector.rollout
    results = []
    for agent in (eager, compiled):
        optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
        stats = ppo_update(agent, optimizer, copy.deepcopy(rollout), agent_config(False).ppo,
                           torch.Generator().manual_seed(0))
        results.append((dataclasses.asdict(stats), agent.state_dict()))
    (stats_e, weights_e), (stats_c, weights_c) = results
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac"):
        assert stats_c[key] == pytest.approx(stats_e[key], rel=1e-4, abs=1e-6), key
    for key in weights_e:
        torch.testing.assert_close(weights_c[key], weights_e[key], atol=1e-5, rtol=1e-4)
