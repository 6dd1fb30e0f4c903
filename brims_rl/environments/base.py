"""The vector-environment interface every backend adapts to (what the PPO rollout sees)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import gymnasium as gym
import numpy as np


@dataclass
class VecStep:
    """One step of N environments with next-step autoreset semantics.

    Autoreset happens on the step AFTER an episode ends: that step ignores the action and returns the first
    observation of the next episode with reward 0. Such transitions carry `ignored=True` and must be masked out of
    losses, advantages and returns.
    """

    obs: np.ndarray  # [N, *obs_shape] next observations: uint8 images or float32 vectors
    reward: np.ndarray  # [N] float32 training reward (clipped when the protocol clips)
    terminated: np.ndarray  # [N] bool: the transition ended a training episode (a game, or a life with episodic life)
    truncated: np.ndarray  # [N] bool: the time limit ended it; `obs` is then the final observation (bootstrap on it)
    ignored: np.ndarray  # [N] bool: an autoreset step; the action was ignored
    first: np.ndarray  # [N] bool: `obs` is the first observation of a training episode (reset the core state)
    episodes: list[tuple[int, float, int]]  # finished full games: (env index, unclipped return, length in agent steps)

    @classmethod
    def autoreset(cls, obs: np.ndarray, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
                  ignored: np.ndarray, episodes: list[tuple[int, float, int]]) -> "VecStep":
        """A step of a next-step-autoreset env: ignored steps carry reward 0, and the observation an ignored step
        returns is the first of the next episode."""
        reward = np.where(ignored, np.float32(0), reward).astype(np.float32, copy=False)
        return cls(obs, reward, terminated, truncated, ignored, first=ignored.copy(), episodes=episodes)


class VecEnv(Protocol):
    num_envs: int
    single_observation_space: gym.Space
    single_action_space: gym.spaces.Discrete

    def reset(self) -> np.ndarray:
        """First observations of every env (all of them are episode starts)."""

    def step(self, actions: np.ndarray) -> VecStep: ...

    def close(self) -> None: ...
