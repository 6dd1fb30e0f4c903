"""A scripted vector env that speaks the VecEnv interface directly (shared by tests)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from brims_rl.environments.base import VecStep


class ScriptedVecEnv:
    """N envs with random float observations; env b's episode ends every `lengths[b]` real steps.

    Ends alternate between termination and truncation; the step after an end is an ignored autoreset step,
    exactly as envpool behaves.
    """

    def __init__(self, num_envs: int = 4, obs_size: int = 5, lengths=(3, 4, 5, 7), num_actions: int = 3, seed=0):
        self.num_envs = num_envs
        self.single_observation_space = gym.spaces.Box(-1, 1, (obs_size,), np.float32)
        self.single_action_space = gym.spaces.Discrete(num_actions)
        self.lengths = np.array([lengths[i % len(lengths)] for i in range(num_envs)])
        self.rng = np.random.default_rng(seed)

    def reset(self) -> np.ndarray:
        self.t = np.zeros(self.num_envs, dtype=int)
        self.ends = np.zeros(self.num_envs, dtype=int)
        self.prev_done = np.zeros(self.num_envs, dtype=bool)
        return self._obs()

    def _obs(self) -> np.ndarray:
        return self.rng.standard_normal((self.num_envs, self.single_observation_space.shape[0])).astype(np.float32)

    def step(self, actions: np.ndarray) -> VecStep:
        ignored = self.prev_done.copy()
        self.t = np.where(ignored, 0, self.t + 1)
        done = ~ignored & (self.t >= self.lengths)
        self.ends += done
        terminated = done & (self.ends % 2 == 1)
        truncated = done & ~terminated
        reward = np.where(ignored, 0.0, (np.asarray(actions) == 0).astype(np.float32)).astype(np.float32)
        self.prev_done = done
        return VecStep(obs=self._obs(), reward=reward, terminated=terminated, truncated=truncated, ignored=ignored,
                       first=ignored.copy(), episodes=[])

    def close(self) -> None:
        pass
