"""Playing full games with an agent: which games count (per-env quotas), and the step loop of `evaluate`."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from brims_rl.action_heads import ActionHead, make_action_head
from brims_rl.agent import Agent
from brims_rl.environments.base import VecEnv
from brims_rl.rollout import to_device


def episode_quotas(episodes: int, num_envs: int) -> list[int]:
    """How many of its first games each env contributes: N // E each, one more for the first N % E envs."""
    base, extra = divmod(episodes, num_envs)
    return [base + (1 if i < extra else 0) for i in range(num_envs)]


StepHook = Callable[[np.ndarray, Any], None]


@torch.no_grad()
def play(env: VecEnv, agent: Agent, device: torch.device, quotas: list[int], greedy: bool,
         generator: torch.Generator | None, on_step: StepHook | None = None,
         on_episode: Callable[[int, float, int], None] | None = None) -> list[list[tuple[float, int]]]:
    """Play until env i has finished its first quotas[i] games; return each env's counted (score, length) games.

    `on_step(actions, step)` sees every step (the video uses it) with the actions as the env received them (Box
    actions clipped to the bounds); `on_episode(env, score, length)` every counted game. Greedy: each component's
    most likely action, or the Gaussian's mean; else sampled on the CPU from `generator` (action_heads.py). An agent
    without an `action_head` is read as a Discrete policy over env.single_action_space.
    """
    num_envs = env.num_envs
    if len(quotas) != num_envs:
        raise ValueError("one quota per env")

    games: list[list[tuple[float, int]]] = [[] for _ in range(num_envs)]
    remaining = sum(quotas)
    obs = to_device(env.reset(), device)
    first = torch.ones(num_envs, dtype=torch.bool, device=device)
    state = agent.initial_state(num_envs, device)
    head: ActionHead = getattr(agent, "action_head", None) or make_action_head(env.single_action_space)
    while remaining > 0:
        logits, _, state = agent(obs.unsqueeze(0), state, first.unsqueeze(0))
        logits = logits[0].float().cpu()
        actions = head.greedy(logits) if greedy else head.sample(logits, generator)[0]
        actions_np = head.to_env(actions.numpy())
        step = env.step(actions_np)
        if on_step is not None:
            on_step(actions_np, step)
        for i, score, length in step.episodes:
            if len(games[i]) < quotas[i]:
                games[i].append((float(score), int(length)))
                remaining -= 1
                if on_episode is not None:
                    on_episode(i, float(score), int(length))
        obs, first = to_device(step.obs, device), to_device(np.asarray(step.first, dtype=np.bool_), device)
    return games
