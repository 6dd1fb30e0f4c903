"""A training run's parts, built one way for the trainer and for `brims-rl bench`: the vector env, the agent, the
optimizer, the minibatch generator, the rollout collector and the learner, with the speed-ups config.perf asks for."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from brims_rl.agent import Agent
from brims_rl.config import Config
from brims_rl.distributed import DistContext
from brims_rl.environments import make_vec_env
from brims_rl.environments.base import VecEnv
from brims_rl.errors import UserError
from brims_rl.learner import Learner
from brims_rl.ppo import make_optimizer
from brims_rl.rollout import Collector, EnvLabels
from brims_rl.speedups import speed_up_acting

Restore = Callable[[Agent, torch.optim.Optimizer, torch.Generator], None]


@dataclass
class TrainingParts:
    env: VecEnv
    owns_env: bool  # made here (closed by whoever holds the parts), not the caller's
    agent: Agent
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # the minibatch shuffle's
    collector: Collector
    learner: Learner

    def close(self) -> None:
        if self.owns_env:
            self.env.close()


def build_training(config: Config, device: torch.device, ctx: DistContext | None = None, *, env: VecEnv | None = None,
                   env_seed: int | None = None, start_step: int = 0, restore: Restore | None = None) -> TrainingParts:
    """The parts of one rank of a run of `config` on `device`, in the order a run needs them:

    1. the vector env (`env`, or config.env's made with `env_seed`, default config.seed);
    2. the agent (encoder -> core -> heads) for the env's spaces, on `device`;
    3. the optimizer (Adam) and the minibatch generator (seed + rank);
    4. `restore(agent, optimizer, generator)` (a checkpoint's weights, Adam state and RNG streams), then rank 0's
       weights to every rank;
    5. the collector, which resets the env and holds the first observations, with the acting speed-ups
       (speedups.speed_up_acting);
    6. the learner: PPO's update with the CUDA graph, gradient averaging across ranks and the non-finite guard.
    """
    ctx = ctx or DistContext()
    owns_env = env is None
    if env is None:
        env = make_vec_env(config.env, config.env.num_envs, seed=config.seed if env_seed is None else env_seed,
                           training=True)
    try:
        if env.num_envs != config.env.num_envs:
            raise UserError(f"the env has {env.num_envs} envs but config.env.num_envs is {config.env.num_envs}; "
                            f"make the config with num_envs={env.num_envs}")
        agent = Agent(env.single_observation_space.shape, env.single_action_space, config,
                      getattr(env, "env_observation_space", None)).to(device)
        optimizer = make_optimizer(agent, config.ppo, device)
        generator = torch.Generator().manual_seed(config.seed + ctx.rank)
        if restore is not None:
            restore(agent, optimizer, generator)
        ctx.broadcast_parameters(agent)
        labels = EnvLabels(name=config.env.id, first_env_index=ctx.rank * config.env.num_envs, start_step=start_step,
                           steps_per_vec_step=config.env.num_envs * ctx.world_size)
        collector = Collector(env, agent, config.ppo.num_steps, device, labels)
        speed_up_acting(collector, config.perf)
        average = (lambda: ctx.average_gradients(agent)) if ctx.enabled else None
        learner = Learner(agent, optimizer, config.ppo, cuda_graph=config.perf.cuda_graph_update,
                          average_gradients=average)
    except BaseException:
        if owns_env:
            with contextlib.suppress(Exception):
                env.close()
        raise
    return TrainingParts(env, owns_env, agent, optimizer, generator, collector, learner)
