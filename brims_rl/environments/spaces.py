"""Gymnasium spaces as brims-rl sees them: observations flattened to one float32 vector, spaces described as plain
data for checkpoints, and the action spaces the agent's heads support (see docs/spaces.md).

Observation flattening (`ObservationFlattener`), per leaf, in this order:
    Box            its values as float32, flattened in C order (an image leaf too: its [H, W, C] values)
    Discrete(n)    a one-hot vector of n (value - start)
    MultiDiscrete  one one-hot vector per component (nvec flattened in C order), concatenated
    MultiBinary    its 0/1 values as float32, flattened in C order
    Tuple          its spaces in index order
    Dict           its spaces in the order gymnasium's Dict keeps its keys (sorted, unless built from an OrderedDict)
Composites nest. `ObservationFlattener.leaves` says where each leaf lies in the vector, so that an encoder can take
an image leaf (a Box of rank >= 3, or a uint8 Box of rank 2) back out of it (brims_rl/encoders.py; which image
shapes an encoder takes is the encoder's business). A text leaf inside a Dict (gymnasium's Text, MiniGrid's mission
string: any space of a string dtype) is dropped (`dropped`, and `kept_space` is the Dict without it); other leaves
(Text elsewhere, Graph, Sequence, OneOf, ...) are refused with one UserError line. A top-level image (uint8 Box of
rank 3) is not flattened here: the env adapter keeps it for the Nature CNN.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from brims_rl.errors import UserError

LEAVES = (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)
COMPOSITES = (gym.spaces.Tuple, gym.spaces.Dict)
ACTION_SPACES = (gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.Box)


def is_image_leaf(space: gym.Space) -> bool:
    """An image inside a composite space: a Box of rank >= 3 (any dtype), or a uint8 Box of rank 2."""
    return isinstance(space, gym.spaces.Box) and (len(space.shape) >= 3
                                                  or (len(space.shape) == 2 and space.dtype == np.uint8))


def is_text_leaf(space: gym.Space) -> bool:
    """A space of strings: gymnasium's Text, or another Space with a string dtype (MiniGrid's MissionSpace)."""
    if isinstance(space, gym.spaces.Text):
        return True
    dtype = getattr(space, "dtype", None)
    try:
        return dtype is not None and np.dtype(dtype).kind == "U"
    except TypeError:
        return False


def needs_flattening(space: gym.Space) -> bool:
    """Whether the env adapter flattens this observation space with an ObservationFlattener (everything but a Box)."""
    return not isinstance(space, gym.spaces.Box)


def path_text(path: tuple) -> str:
    """A leaf's place in its space, as subscripts: ['image'], [0]['pos']."""
    return "".join(f"[{p!r}]" for p in path)


@dataclass(frozen=True)
class Leaf:
    """One leaf of a flattened space: its keys/indices from the top, its space, and its values [start, stop) in
    the flat vector."""

    path: tuple
    space: gym.Space
    start: int
    stop: int

    @property
    def image(self) -> bool:
        return is_image_leaf(self.space)


class ObservationFlattener:
    """Turns batches of a space's observations ([n, ...] arrays, or dicts/tuples of them as gymnasium's vector env
    gives them) into float32 arrays [n, size]. Building it checks the space (UserError for what is unsupported).

    `leaves`: every flattened leaf with its place in the vector; `dropped`: the paths of text leaves left out;
    `kept_space`: the space without them (the space itself when nothing was dropped)."""

    def __init__(self, space: gym.Space, name: str = "env") -> None:
        self.space = space
        self._leaves: list[tuple[tuple, gym.Space]] = []  # (path of keys/indices, leaf space)
        self.dropped: list[tuple] = []
        self.kept_space = self._collect(space, (), name, top=True, in_dict=False)
        offsets = np.cumsum([0] + [_leaf_size(leaf) for _, leaf in self._leaves]).tolist()
        self.leaves = tuple(Leaf(path, leaf, int(offsets[i]), int(offsets[i + 1]))
                            for i, (path, leaf) in enumerate(self._leaves))
        self.size = int(offsets[-1])
        if self.size == 0:
            raise UserError(f"env '{name}' has observation space {space}, which holds no values")

    @property
    def flat_space(self) -> gym.spaces.Box:
        return gym.spaces.Box(-np.inf, np.inf, shape=(self.size,), dtype=np.float32)

    def _collect(self, space: gym.Space, path: tuple, name: str, top: bool, in_dict: bool) -> gym.Space | None:
        """Record the leaves under `space`; return `space` without its dropped text leaves (None: dropped)."""
        where = "" if not path else " at " + path_text(path)
        if isinstance(space, gym.spaces.Dict):
            kept = OrderedDict()
            for key, sub in space.spaces.items():
                child = self._collect(sub, path + (key,), name, top=False, in_dict=True)
                if child is not None:
                    kept[key] = child
            return space if len(kept) == len(space.spaces) else gym.spaces.Dict(kept)
        if isinstance(space, gym.spaces.Tuple):
            children = [self._collect(sub, path + (i,), name, top=False, in_dict=False)
                        for i, sub in enumerate(space.spaces)]
            same = all(c is s for c, s in zip(children, space.spaces))
            return space if same else gym.spaces.Tuple(children)
        if isinstance(space, LEAVES):
            self._leaves.append((path, space))
            return space
        if in_dict and is_text_leaf(space):
            self.dropped.append(path)
            return None
        raise UserError(f"env '{name}' has observation space {self.space}: {type(space).__name__}{where} is not "
                        "supported (Box, Discrete, MultiDiscrete, MultiBinary and Tuple/Dict of them are, and text "
                        "inside a Dict is dropped; see docs/spaces.md)")

    def __call__(self, obs: Any) -> np.ndarray:
        if isinstance(self.space, gym.spaces.Tuple) and not isinstance(obs, (tuple, list)):
            raise TypeError(f"a batch of {self.space} observations is a tuple of arrays, got {type(obs).__name__}")
        if isinstance(self.space, gym.spaces.Dict) and not isinstance(obs, Mapping):
            raise TypeError(f"a batch of {self.space} observations is a dict of arrays, got {type(obs).__name__}")
        parts = []
        n = None
        for path, leaf in self._leaves:
            value = obs
            for key in path:
                value = value[key]
            value = np.asarray(value)
            if n is None:
                n = value.shape[0] if value.ndim else 1
            parts.append(_flatten_leaf(leaf, value.reshape((n, *leaf.shape)) if leaf.shape else value.reshape(n)))
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def _leaf_size(space: gym.Space) -> int:
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return int(np.sum(space.nvec))
    return int(np.prod(space.shape, dtype=np.int64))


class OutsideSpace(ValueError):
    """An observation value that its space cannot hold (a Discrete value out of range or not a whole number)."""


def _whole(value: np.ndarray, what: str) -> np.ndarray:
    """Integer-valued `value` as int64 (OutsideSpace for a fraction: it would be truncated silently)."""
    if value.dtype.kind == "f" and value.size and not bool(np.all(np.mod(value, 1) == 0)):
        raise OutsideSpace(f"a {what} value that is not a whole number")
    return value.astype(np.int64)


def _one_hot(values: np.ndarray, size: int, what: str) -> np.ndarray:
    """Integer values [...] in [0, size) -> float32 one-hot vectors [..., size] (OutsideSpace for a value outside)."""
    if values.size and (values.min() < 0 or values.max() >= size):
        raise OutsideSpace(f"a {what} value outside its space (0..{size - 1} after subtracting start)")
    out = np.zeros((*values.shape, size), dtype=np.float32)
    np.put_along_axis(out, values[..., None].astype(np.int64), 1.0, axis=-1)
    return out


def _flatten_leaf(space: gym.Space, value: np.ndarray) -> np.ndarray:
    n = value.shape[0]
    if isinstance(space, gym.spaces.Box):
        return value.astype(np.float32, copy=False).reshape(n, -1)
    if isinstance(space, gym.spaces.MultiBinary):
        return value.astype(np.float32).reshape(n, -1)
    if isinstance(space, gym.spaces.Discrete):
        return _one_hot(_whole(value, "Discrete") - int(space.start), int(space.n), "Discrete")
    nvec = np.asarray(space.nvec, dtype=np.int64).reshape(-1)  # MultiDiscrete
    start = np.broadcast_to(np.asarray(space.start, dtype=np.int64), space.nvec.shape).reshape(-1)
    values = _whole(value, "MultiDiscrete").reshape(n, -1) - start
    if len(set(nvec.tolist())) == 1:  # one one-hot for all components
        return _one_hot(values, int(nvec[0]), "MultiDiscrete").reshape(n, -1)
    return np.concatenate([_one_hot(values[:, i], int(k), "MultiDiscrete") for i, k in enumerate(nvec)], axis=1)


# ---- action spaces -----------------------------------------------------------------------------------------------
def check_action_space(space: gym.Space, name: str = "env") -> None:
    """UserError unless the agent has a head for this action space (docs/spaces.md)."""
    if isinstance(space, gym.spaces.Box):
        if not np.issubdtype(space.dtype, np.floating):
            raise UserError(f"env '{name}' has action space {space}; a Box action space must hold floats")
        if int(np.prod(space.shape)) == 0:
            raise UserError(f"env '{name}' has action space {space}, which holds no values")
        return
    if isinstance(space, gym.spaces.Discrete):
        if int(space.start) != 0:
            raise UserError(f"env '{name}' has a Discrete action space that does not start at 0")
        return
    if isinstance(space, gym.spaces.MultiDiscrete):
        if space.nvec.size == 0:
            raise UserError(f"env '{name}' has action space {space}, which holds no values")
        return
    raise UserError(f"env '{name}' has action space {space}; supported: Discrete, MultiDiscrete, Box (see "
                    "docs/spaces.md)")


# ---- spaces as plain data (checkpoints) --------------------------------------------------------------------------
_MAX_BOUNDS = 4096  # Box bounds are stored element by element up to this size, else only when uniform


def _bound(values: np.ndarray) -> Any:
    values = np.asarray(values, dtype=np.float64)
    if values.size and np.all(values == values.flat[0]):
        return float(values.flat[0])
    return values.tolist() if values.size <= _MAX_BOUNDS else None


def describe_space(space: gym.Space) -> dict[str, Any]:
    """A gymnasium space as plain data (ints, floats, strings, lists, dicts), for a checkpoint loaded with
    weights_only; `space_from_description` rebuilds it. Box bounds too large and not uniform are left out."""
    if isinstance(space, gym.spaces.Box):
        return {"type": "Box", "shape": [int(n) for n in space.shape], "dtype": np.dtype(space.dtype).name,
                "low": _bound(space.low), "high": _bound(space.high)}
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": np.asarray(space.nvec).tolist(),
                "start": np.broadcast_to(np.asarray(space.start), space.nvec.shape).tolist()}
    if isinstance(space, gym.spaces.MultiBinary):
        return {"type": "MultiBinary", "shape": [int(n) for n in space.shape]}
    if isinstance(space, gym.spaces.Tuple):
        return {"type": "Tuple", "spaces": [describe_space(s) for s in space.spaces]}
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "spaces": [[str(k), describe_space(s)] for k, s in space.spaces.items()]}
    raise UserError(f"space {space} cannot be described (unsupported type {type(space).__name__})")


def space_from_description(data: dict[str, Any]) -> gym.Space:
    """The space `describe_space` described (KeyError/TypeError/ValueError on malformed data)."""
    kind = data["type"]
    if kind == "Box":
        shape, dtype = tuple(int(n) for n in data["shape"]), np.dtype(data["dtype"])
        bounds = []
        for key, missing in (("low", -np.inf), ("high", np.inf)):
            value = np.broadcast_to(np.asarray(missing if data.get(key) is None else data[key], np.float64), shape)
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                value = np.clip(np.nan_to_num(value, neginf=info.min, posinf=info.max), info.min, info.max)
            bounds.append(value.astype(dtype))
        return gym.spaces.Box(bounds[0], bounds[1], shape=shape, dtype=dtype)
    if kind == "Discrete":
        return gym.spaces.Discrete(int(data["n"]), start=int(data.get("start", 0)))
    if kind == "MultiDiscrete":
        return gym.spaces.MultiDiscrete(np.asarray(data["nvec"], dtype=np.int64),
                                        start=np.asarray(data.get("start", 0), dtype=np.int64))
    if kind == "MultiBinary":
        shape = [int(n) for n in data["shape"]]
        return gym.spaces.MultiBinary(shape if len(shape) != 1 else shape[0])
    if kind == "Tuple":
        return gym.spaces.Tuple([space_from_description(s) for s in data["spaces"]])
    if kind == "Dict":
        return gym.spaces.Dict(OrderedDict((key, space_from_description(s)) for key, s in data["spaces"]))
    raise ValueError(f"unknown space type {kind!r}")
