"""CueMemory variants that go wrong after a while (shared by fault tests; importable as `fault_envs:...`)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np

from brims_rl.environments.memory import CueMemoryEnv


class FaultyCueMemory(CueMemoryEnv):
    """CueMemory whose copy seeded `faulty_seed` returns a NaN reward (`fault="nan_reward"`) or an observation
    holding inf (`fault="inf_obs"`) at the vector env's `at_step`-th step (autoresets count); the others behave."""

    def __init__(self, fault: str, faulty_seed: int, at_step: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fault, self.faulty_seed, self.at_step = fault, faulty_seed, at_step
        self.faulty, self.steps = False, 0

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.faulty = seed == self.faulty_seed
        else:  # a next-step autoreset: one step of the vector env
            self.steps += 1
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self.steps += 1
        if self.faulty and self.steps == self.at_step:
            if self.fault == "nan_reward":
                reward = math.nan
            else:
                obs = obs.copy()
                obs[1] = np.inf
        return obs, reward, terminated, truncated, info


# run with --seed 7 and 2 envs: env index 1 (seed 8) goes wrong at its 40th step, i.e. global step 80
for name, fault in (("NaNReward-v0", "nan_reward"), ("InfObs-v0", "inf_obs")):
    gym.register(id=name, entry_point="fault_envs:FaultyCueMemory",
                 kwargs={"fault": fault, "faulty_seed": 8, "at_step": 40})
