"""Any gymnasium env with a Discrete, MultiDiscrete or Box action space, through gymnasium's vector env with next-step
autoreset (the spaces: environments/spaces.py and docs/spaces.md)."""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np

from brims_rl.environments.base import VecStep
from brims_rl.environments.spaces import (ObservationFlattener, OutsideSpace, check_action_space, needs_flattening,
                                          path_text)
from brims_rl.environments.stats import EpisodeTracker
from brims_rl.errors import RunFailure, UserError


def _is_image(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


class GymVecEnv:
    """Adapts a gymnasium VectorEnv (autoreset_mode NEXT_STEP) to VecStep.

    Observations: images (3-D uint8 Box) stay uint8, channels first (HWC is transposed to CHW); every other Box is
    flattened to a float32 vector; Discrete, MultiDiscrete, MultiBinary and Tuple/Dict observations become one
    float32 vector (spaces.ObservationFlattener; `env_observation_space` keeps the env's own space, less any text
    leaf the flattener dropped, which the first reset notes in one line on stderr). Actions are
    passed to the vector env as they come (the agent's action head puts them in the env's form). Rewards are passed
    as they are (no clipping, no episodic life: those are Atari protocol options).
    """

    def __init__(self, vec_env: gym.vector.VectorEnv, seed: int | None = None, name: str = "env") -> None:
        mode = vec_env.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
        if gym.vector.AutoresetMode(mode) != gym.vector.AutoresetMode.NEXT_STEP:
            raise ValueError(f"vector env must use autoreset_mode NEXT_STEP, got {mode}")
        try:
            check_action_space(vec_env.single_action_space, name)
        except UserError:
            vec_env.close()
            raise
        self.env, self.name = vec_env, name
        self.num_envs = vec_env.num_envs
        self.single_action_space = vec_env.single_action_space
        space = vec_env.single_observation_space
        self.env_observation_space = space
        self._transpose = False
        self._flatten = None
        self._note: str | None = None
        if _is_image(space):
            shape = space.shape
            if shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4):
                self._transpose = True
                shape = (shape[2], shape[0], shape[1])
            self.single_observation_space = gym.spaces.Box(0, 255, shape=shape, dtype=np.uint8)
        elif isinstance(space, gym.spaces.Box):
            size = int(np.prod(space.shape))
            low = np.asarray(space.low, dtype=np.float32).reshape(-1)
            high = np.asarray(space.high, dtype=np.float32).reshape(-1)
            self.single_observation_space = gym.spaces.Box(low, high, shape=(size,), dtype=np.float32)
        elif needs_flattening(space):
            try:
                self._flatten = ObservationFlattener(space, name)
            except UserError:
                vec_env.close()
                raise
            self.single_observation_space = self._flatten.flat_space
            self.env_observation_space = self._flatten.kept_space  # what a policy is given: no text leaves
            if self._flatten.dropped:  # said on the first reset, once the model is built (bad input stays 1 line)
                dropped = ", ".join(path_text(p) for p in self._flatten.dropped)
                self._note = (f"brims-rl: note: env '{name}': the text in its observation ({dropped}) is dropped; "
                              "the agent sees the other parts (docs/spaces.md)")
        self._seed = seed
        self._done = np.zeros(self.num_envs, dtype=bool)
        self._stats = EpisodeTracker(self.num_envs)

    def _obs(self, obs: np.ndarray) -> np.ndarray:
        if self._transpose:
            return np.ascontiguousarray(obs.transpose(0, 3, 1, 2))
        if self._flatten is not None:
            try:
                return self._flatten(obs)
            except OutsideSpace as exc:
                raise RunFailure(f"env {self.name} returned an observation with {exc}") from None
        if obs.dtype == np.uint8 and obs.ndim == 4:
            return obs
        return np.asarray(obs, dtype=np.float32).reshape(self.num_envs, -1)

    def reset(self) -> np.ndarray:
        if self._note is not None:
            print(self._note, file=sys.stderr)
            self._note = None
        obs, _ = self.env.reset(seed=self._seed)
        self._seed = None  # seeded once; later resets continue the envs' own random streams
        self._done = np.zeros(self.num_envs, dtype=bool)  # a new array: returned VecSteps keep theirs
        self._stats.reset()
        return self._obs(obs)

    def step(self, actions: np.ndarray) -> VecStep:
        obs, reward, term, trunc, _ = self.env.step(np.asarray(actions))
        ignored = self._done
        reward = np.where(ignored, 0.0, reward).astype(np.float32)
        terminated = np.asarray(term, dtype=bool) & ~ignored
        truncated = np.asarray(trunc, dtype=bool) & ~terminated & ~ignored
        self._done = terminated | truncated
        episodes = self._stats.update(reward, ~ignored, self._done)
        return VecStep.autoreset(self._obs(obs), reward, terminated, truncated, ignored, episodes)

    def close(self) -> None:
        self.env.close()
