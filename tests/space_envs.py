"""Tiny scripted gymnasium envs with every observation and action space brims-rl supports, and some it refuses
(tests/test_spaces.py, tests/test_action_heads.py). Importing the module registers them; from the CLI they are
`space_envs:<Id>` with tests/ on PYTHONPATH.

ObsCue-<kind>-v0   Discrete(2) actions; an observation of the kind `kind` (multidiscrete, multibinary, discrete,
                   tuple, dict, grid) carries a bit; reward 1 when the action names it. 4 steps an episode. `grid` is
                   MiniGrid's layout: a Dict of a 7x7x3 uint8 image (the bit in one cell), a Discrete(4) direction
                   and a mission string.
MultiDiscreteAct-v0 Box(3) observations; MultiDiscrete([3, 2]) actions; reward 0.5 per component equal to the
                   target the observation shows.
BoxAct-v0          Box(2) observations; Box(-1, 1, (2,)) actions; reward -|a - target|; every action it receives is
                   kept in `received` (the clipping test).
MemoryDigits-v0    a memory task with MultiDiscrete([2, 2]) actions: two digits shown at t=0, `delay` blanks, then a
                   query whose action must reproduce both digits (0.5 reward per digit; chance is 0.5).
ImageInDict-v0     an 8x8x3 image beside a Discrete leaf (the grid encoder takes it).
TextObs-v0, TinyImageInDict-v0, MatrixImageInDict-v0, MultiBinaryAct-v0: spaces brims-rl refuses (a top-level
                   Text; image leaves of a shape no built-in encoder takes; MultiBinary actions).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

EPISODE = 4


class ObsCueEnv(gym.Env):
    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, kind: str = "dict") -> None:
        self.kind = kind
        spaces = {
            "multidiscrete": gym.spaces.MultiDiscrete([2, 3]),
            "multibinary": gym.spaces.MultiBinary(3),
            "discrete": gym.spaces.Discrete(2, start=1),
            "tuple": gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Box(-1, 1, (2,), np.float32))),
            "dict": gym.spaces.Dict({"pos": gym.spaces.Box(-1, 1, (2, 2), np.float32),
                                     "bit": gym.spaces.MultiDiscrete([2, 2]),
                                     "nested": gym.spaces.Tuple((gym.spaces.MultiBinary(2), gym.spaces.Discrete(3)))}),
            "grid": gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (7, 7, 3), np.uint8),
                                     "direction": gym.spaces.Discrete(4), "mission": gym.spaces.Text(20)}),
        }
        self.observation_space = spaces[kind]
        self.action_space = gym.spaces.Discrete(2)

    def _obs(self) -> Any:
        b = self._bit
        if self.kind == "multidiscrete":
            return np.array([b, self._t % 3], dtype=np.int64)
        if self.kind == "multibinary":
            return np.array([b, 1 - b, 1], dtype=np.int8)
        if self.kind == "discrete":
            return b + 1
        if self.kind == "tuple":
            return (b, np.zeros(2, np.float32))
        if self.kind == "grid":
            image = np.zeros((7, 7, 3), np.uint8)
            image[3, 6, 0] = 1 + 4 * b  # the cell in front of the agent: object 1 or 5
            return {"image": image, "direction": self._t % 4, "mission": "namethebit"}
        return {"pos": np.full((2, 2), 0.5 * b, np.float32), "bit": np.array([b, 0]),
                "nested": (np.array([1 - b, b], dtype=np.int8), self._t % 3)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t, self._bit = 0, int(self.np_random.integers(2))
        return self._obs(), {}

    def step(self, action):
        reward = float(int(action) == self._bit)
        self._t += 1
        self._bit = int(self.np_random.integers(2))
        return self._obs(), reward, self._t >= EPISODE, False, {}


class MultiDiscreteActEnv(gym.Env):
    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(0, 2, (2,), np.float32)
        self.action_space = gym.spaces.MultiDiscrete([3, 2])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._target = self.np_random.integers([3, 2])
        return self._target.astype(np.float32), {}

    def step(self, action):
        action = np.asarray(action)
        assert action.shape == (2,) and self.action_space.contains(action.astype(np.int64)), action
        reward = 0.5 * float(np.sum(action == self._target))
        self._t += 1
        self._target = self.np_random.integers([3, 2])
        return self._target.astype(np.float32), reward, self._t >= EPISODE, False, {}


class BoxActEnv(gym.Env):
    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.received: list[np.ndarray] = []

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._target = self.np_random.uniform(-0.5, 0.5, 2).astype(np.float32)
        return self._target, {}

    def step(self, action):
        action = np.asarray(action)
        self.received.append(action.copy())
        reward = -float(np.abs(action - self._target).sum())
        self._t += 1
        self._target = self.np_random.uniform(-0.5, 0.5, 2).astype(np.float32)
        return self._target, reward, self._t >= EPISODE, False, {}


class MemoryDigitsEnv(gym.Env):
    """Observations [digit 1 is 0, digit 1 is 1, digit 2 is 0, digit 2 is 1, query]; episode delay + 2 steps."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, delay: int = 2) -> None:
        self.delay = delay
        self.observation_space = gym.spaces.Box(0, 1, (5,), np.float32)
        self.action_space = gym.spaces.MultiDiscrete([2, 2])

    def _obs(self, cue: bool = False, query: bool = False) -> np.ndarray:
        obs = np.zeros(5, np.float32)
        if cue:
            obs[self._digits[0]] = obs[2 + self._digits[1]] = 1.0
        obs[4] = float(query)
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t, self._digits = 0, self.np_random.integers(2, size=2)
        return self._obs(cue=True), {}

    def step(self, action):
        self._t += 1
        if self._t < self.delay + 2:
            return self._obs(query=self._t == self.delay + 1), 0.0, False, False, {}
        reward = 0.5 * float(np.sum(np.asarray(action) == self._digits))
        return self._obs(), reward, True, False, {}


class TextObsEnv(ObsCueEnv):
    def __init__(self) -> None:
        super().__init__("discrete")
        self.observation_space = gym.spaces.Text(5)


class ImageInDictEnv(ObsCueEnv):
    """A uint8 image leaf of `shape` (filled with the bit) beside the bit as a Discrete(2) leaf."""

    def __init__(self, shape: tuple[int, ...] = (8, 8, 3)) -> None:
        super().__init__("discrete")
        self.observation_space = gym.spaces.Dict({"screen": gym.spaces.Box(0, 255, shape, np.uint8),
                                                  "bit": gym.spaces.Discrete(2)})

    def _obs(self) -> Any:
        shape = self.observation_space["screen"].shape
        return {"screen": np.full(shape, self._bit, np.uint8), "bit": self._bit}


class MultiBinaryActEnv(ObsCueEnv):
    def __init__(self) -> None:
        super().__init__("multibinary")
        self.action_space = gym.spaces.MultiBinary(2)


OBS_KINDS = ("multidiscrete", "multibinary", "discrete", "tuple", "dict", "grid")

for _kind in OBS_KINDS:
    if f"ObsCue-{_kind}-v0" not in gym.registry:
        gym.register(f"ObsCue-{_kind}-v0", entry_point=ObsCueEnv, kwargs={"kind": _kind})
for _id, _entry in [("MultiDiscreteAct-v0", MultiDiscreteActEnv), ("BoxAct-v0", BoxActEnv),
                    ("MemoryDigits-v0", MemoryDigitsEnv), ("TextObs-v0", TextObsEnv),
                    ("ImageInDict-v0", ImageInDictEnv), ("MultiBinaryAct-v0", MultiBinaryActEnv)]:
    if _id not in gym.registry:
        gym.register(_id, entry_point=_entry)
for _id, _shape in [("TinyImageInDict-v0", (4, 4, 3)), ("MatrixImageInDict-v0", (8, 8))]:
    if _id not in gym.registry:
        gym.register(_id, entry_point=ImageInDictEnv, kwargs={"shape": _shape})
