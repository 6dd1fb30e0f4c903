"""CueMemory-v0: a tiny task that only an agent with memory can solve.

The first observation shows a cue (one of two); then come `delay` blank observations; then a query observation, and
the action taken on it must name the cue: reward +1 if it does, `wrong_reward` (default -1) otherwise, and the
episode ends. Every other step gives reward 0 and its action does not matter. Observations are float32 vectors
[cue is 0, cue is 1, query]. A memoryless policy sees the same query observation whatever the cue, so it answers
right half the time at best (expected return 0 with the default rewards); an agent that remembers the cue gets +1.
An episode is delay + 2 steps long.

Registered in gymnasium as "CueMemory-v0" when this module is imported (brims_rl.environments imports it), so both
`CueMemory-v0` and `brims_rl.environments.memory:CueMemory-v0` work as env names; `delay` and `wrong_reward` are
gym.make keyword arguments.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

ENV_ID = "CueMemory-v0"


class CueMemoryEnv(gym.Env):
    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, delay: int = 4, wrong_reward: float = -1.0, render_mode: str | None = None) -> None:
        if int(delay) != delay or delay < 0:
            raise ValueError(f"delay must be a non-negative integer, got {delay!r}")
        self.delay = int(delay)
        self.wrong_reward = float(wrong_reward)
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(3,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self._cue = 0
        self._t = 0

    def _observation(self, cue: bool = False, query: bool = False) -> np.ndarray:
        obs = np.zeros(3, dtype=np.float32)
        if cue:
            obs[self._cue] = 1.0
        if query:
            obs[2] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._cue = int(self.np_random.integers(2))
        self._t = 0
        return self._observation(cue=True), {"cue": self._cue}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self._t += 1
        query_step = self.delay + 2  # the step whose action answers the query
        if self._t < query_step:
            return self._observation(query=self._t == query_step - 1), 0.0, False, False, {"cue": self._cue}
        if self._t > query_step:
            raise RuntimeError("step() called after the episode ended; call reset()")
        reward = 1.0 if int(action) == self._cue else self.wrong_reward
        return self._observation(), reward, True, False, {"cue": self._cue}


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="brims_rl.environments.memory:CueMemoryEnv")
