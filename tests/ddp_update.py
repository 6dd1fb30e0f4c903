"""Run under torchrun by test_distributed.py: one PPO update of one global batch, its env columns split over ranks.

Every rank builds the same agent and rollout (same seeds, one thread), keeps env columns [2r, 2r + 2), and takes one
SGD step through a Learner averaging gradients with DistContext.average_gradients. Scenario "drop": rank 1 has no
gradient for one parameter (as when a module stays inactive on its data). Rank r saves what it ended with to OUT;
rank 0 also saves the global batch and the starting weights, for the single-process reference.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

from brims_rl.agent import Agent
from brims_rl.config import Config, PPOConfig
from brims_rl.distributed import DistContext
from brims_rl.learner import Learner
from brims_rl.rollout import Collector, Rollout
from scripted_env import ScriptedVecEnv

DROPPED = "actor.weight"
LR = 0.5


def config() -> Config:
    config = Config()
    config.core.name = "lstm"
    config.model.encoder_size = 16
    config.model.mlp_hidden = 16
    config.ppo = PPOConfig(num_steps=16, num_minibatches=1, update_epochs=1, max_grad_norm=1e9)
    return config


def columns(rollout: Rollout, cols: list[int]) -> Rollout:
    """The rollout of some envs only."""
    fields = {k: v[:, cols] for k, v in rollout.__dict__.items() if isinstance(v, torch.Tensor) and v.dim() >= 2}
    return Rollout(**{**rollout.__dict__, **fields, "next_value": rollout.next_value[cols],
                      "initial_state": tuple(s[cols] for s in rollout.initial_state)})


def update(agent: Agent, rollout: Rollout, hook=None) -> Agent:
    agent = copy.deepcopy(agent)
    Learner(agent, torch.optim.SGD(agent.parameters(), lr=LR), config().ppo,
            average_gradients=hook).update(rollout, torch.Generator().manual_seed(0))
    return agent


def main(out: Path) -> None:
    ctx = DistContext.from_environment()
    torch.manual_seed(0)
    agent = Agent((5,), 3, config())
    collector = Collector(ScriptedVecEnv(num_envs=4, lengths=(3, 4, 5, 7)), agent, 16, torch.device("cpu"))
    collector.collect()
    collector.collect()
    rollout = collector.rollout
    mine = columns(rollout, [2 * ctx.rank, 2 * ctx.rank + 1])
    if ctx.is_main:
        torch.save({"agent": agent.state_dict(), "rollout": rollout.__dict__}, out / "batch.pt")

    def drop_then_average(model: Agent) -> None:
        if ctx.rank == 1:
            dict(model.named_parameters())[DROPPED].grad = None
        ctx.average_gradients(model)

    for scenario in ("plain", "drop"):
        model = copy.deepcopy(agent)
        hook = (lambda: ctx.average_gradients(model)) if scenario == "plain" else (lambda: drop_then_average(model))
        Learner(model, torch.optim.SGD(model.parameters(), lr=LR), config().ppo,
                average_gradients=hook).update(mine, torch.Generator().manual_seed(0))
        torch.save(model.state_dict(), out / f"rank{ctx.rank}_{scenario}.pt")
    ctx.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
