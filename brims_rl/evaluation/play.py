"""Evaluating a policy, for `brims-rl evaluate` and `br.evaluate` alike: the evaluation env, which games count (per-env
quotas), the step loop, and the scores."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch

from brims_rl.config import EnvConfig
from brims_rl.environments import make_vec_env, resolve_env
from brims_rl.environments.base import VecEnv
from brims_rl.errors import UserError
from brims_rl.policy import Policy

SEED_OFFSET = 1000  # default evaluation seed = training seed + SEED_OFFSET


def episode_quotas(episodes: int, num_envs: int) -> list[int]:
    """How many of its first games each env contributes: N // E each, one more for the first N % E envs."""
    base, extra = divmod(episodes, num_envs)
    return [base + (1 if i < extra else 0) for i in range(num_envs)]


@dataclass(frozen=True)
class EvalEnv:
    """An evaluation env and how it was made."""

    env: VecEnv
    settings: EnvConfig  # the env settings it was made with (None-free copy of the run's, with any changes)
    life_reset: bool  # Atari with episodic life: each life loss handled as training did


def make_evaluation_env(settings: EnvConfig, num_envs: int, seed: int, life_reset: bool = True,
                        max_episode_steps: int | None = None) -> EvalEnv:
    """`num_envs` envs of `settings` under the evaluation protocol (whole games, unclipped scores), env i seeded
    seed + i. `life_reset` (the default) handles a life loss as a run that trained with episodic life did;
    `max_episode_steps` lowers the Atari time limit."""
    spec = resolve_env(settings.id)
    if max_episode_steps is not None:
        if not spec.is_atari:
            raise UserError("max_episode_steps applies to Atari games only (gymnasium envs keep their own limit)")
        settings = dataclasses.replace(settings, max_episode_steps=max_episode_steps)
    life_reset = spec.is_atari and settings.episodic_life and life_reset
    env = make_vec_env(settings, num_envs, seed=seed, training=False, life_reset=life_reset)
    return EvalEnv(env, settings, life_reset)


def check_fits(policy: Policy, env: VecEnv, name: str) -> None:
    """UserError unless the env's observations and actions are those the policy was trained on."""
    observations, actions = env.single_observation_space, env.single_action_space
    own = getattr(env, "env_observation_space", None)
    seen = policy.observation_space
    fits_obs = tuple(observations.shape) == tuple(seen.shape) and np.dtype(observations.dtype) == np.dtype(seen.dtype)
    if not fits_obs or not _same_actions(actions, policy.action_space):
        shown = own if own is not None and not isinstance(own, gym.spaces.Box) else observations
        raise UserError(f"env {name} gives observations {shown} and takes actions {actions}, but the policy was "
                        f"trained on observations {policy.env_observation_space} and actions {policy.action_space} "
                        "(was it trained on an env other than its config's? pass that env)")


def _same_actions(a: gym.Space, b: gym.Space) -> bool:
    if isinstance(a, gym.spaces.Box) and isinstance(b, gym.spaces.Box):
        return a.shape == b.shape  # bounds are the env's to clip to
    return a == b


StepHook = Callable[[np.ndarray, Any], None]


@torch.no_grad()
def play(env: VecEnv, policy: Policy, quotas: list[int], greedy: bool, generator: torch.Generator | None,
         on_step: StepHook | None = None,
         on_episode: Callable[[int, float, int], None] | None = None) -> list[list[tuple[float, int]]]:
    """Play until env i has finished its first quotas[i] games; return each env's counted (score, length) games.

    The policy acts through Policy.act, with the env's `first` flags as episode starts. `on_step(actions, step)` sees
    every step (the video uses it) with the actions as the env received them (Box actions clipped to the bounds);
    `on_episode(env, score, length)` every counted game. Greedy: each component's most likely action, or the
    Gaussian's mean; else sampled from `generator`.
    """
    num_envs = env.num_envs
    if len(quotas) != num_envs:
        raise ValueError("one quota per env")
    games: list[list[tuple[float, int]]] = [[] for _ in range(num_envs)]
    remaining = sum(quotas)
    obs, state, first = env.reset(), None, np.ones(num_envs, dtype=bool)
    while remaining > 0:
        actions, state = policy.act(obs, state, first, greedy=greedy, generator=generator)
        step = env.step(actions)
        if on_step is not None:
            on_step(actions, step)
        for i, score, length in step.episodes:
            if len(games[i]) < quotas[i]:
                games[i].append((float(score), int(length)))
                remaining -= 1
                if on_episode is not None:
                    on_episode(i, float(score), int(length))
        obs, first = step.obs, np.asarray(step.first, dtype=bool)
    return games


@dataclass(frozen=True)
class Episode:
    episode: int  # 1-based, env by env: env 0's games first
    env: int
    game: int  # 1-based, the env's k-th game
    score: float  # the unclipped score of the whole game
    length: int  # agent steps


@dataclass(frozen=True)
class EvalResult:
    """What an evaluation measured (br.evaluate; `brims-rl evaluate` writes the same numbers to eval.json)."""

    episodes: list[Episode]
    greedy: bool
    seed: int
    num_envs: int
    step: int  # env steps the evaluated policy was trained for
    scores: list[float] = field(init=False)
    lengths: list[int] = field(init=False)
    mean: float = field(init=False)
    std: float = field(init=False)  # population std (ddof 0)

    def __post_init__(self) -> None:
        scores = np.array([e.score for e in self.episodes], dtype=np.float64)
        object.__setattr__(self, "scores", scores.tolist())
        object.__setattr__(self, "lengths", [e.length for e in self.episodes])
        object.__setattr__(self, "mean", float(scores.mean()))
        object.__setattr__(self, "std", float(scores.std(ddof=0)))


def evaluate_policy(policy: Policy, env: VecEnv, episodes: int, greedy: bool, seed: int,
                    on_step: StepHook | None = None,
                    on_episode: Callable[[int, float, int], None] | None = None) -> EvalResult:
    """Play `episodes` whole games on `env` (each env counting only its first quota of games) and collect them;
    sampled actions come from a generator seeded with `seed`, so a sampled evaluation repeats too."""
    if episodes < 1:
        raise UserError(f"episodes must be at least 1, got {episodes}")
    generator = None if greedy else torch.Generator().manual_seed(seed)
    games = play(env, policy, episode_quotas(episodes, env.num_envs), greedy, generator, on_step, on_episode)
    played = [(i, k + 1, score, length) for i, env_games in enumerate(games)
              for k, (score, length) in enumerate(env_games)]
    records = [Episode(n, i, k, score, length) for n, (i, k, score, length) in enumerate(played, start=1)]
    return EvalResult(records, greedy, seed, env.num_envs, policy.step)
