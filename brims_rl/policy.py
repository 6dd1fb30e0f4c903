"""A trained policy that acts without an env: `load_policy(run_dir_or_checkpoint)` -> Policy."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

from brims_rl import checkpoint
from brims_rl.agent import Acted, Agent, State, count_parameters
from brims_rl.config import Config
from brims_rl.cores.features import traces_modules
from brims_rl.environments.spaces import ObservationFlattener, OutsideSpace
from brims_rl.errors import UserError
from brims_rl.runtime import resolve_device


class Policy:
    """A checkpoint's agent, acting on batches of observations.

    `observation_space` is the space of one observation as brims-rl's env wrappers give it (Atari: the stacked uint8
    frames [C, H, W]; gymnasium Box envs: the observation, flattened to float32 if it has several dimensions), and
    the methods also take a gymnasium vector env's batch as it comes (an [n, H, W, C] image batch, an unflattened
    Box, or for an env whose observations brims-rl flattens (Discrete, MultiDiscrete, MultiBinary, Tuple, Dict; see
    docs/spaces.md) the batch in the env's own space, `env_observation_space`: an [n] array, an [n, ...] array, or a
    tuple/dict of such arrays). `action_space` is the env's: actions come in its form (Box actions clipped to the
    bounds, MultiDiscrete actions [n, *nvec.shape]).

    The core's state is carried by the caller: `state=None` starts n new episodes (the same as
    `initial_state(n)`), then pass the state `act` returns. Every input is checked against what this policy's core
    and spaces expect; a mismatch raises UserError naming both.
    """

    def __init__(self, agent: Agent, config: Config, observation_space: gym.spaces.Box,
                 action_space: gym.Space, device: torch.device, checkpoint_path: Path | None = None,
                 step: int = 0, env_observation_space: gym.Space | None = None) -> None:
        self.agent, self.config, self.device = agent, config, torch.device(device)
        self.observation_space, self.action_space = observation_space, action_space
        self.env_observation_space = env_observation_space if env_observation_space is not None else observation_space
        self._flatten = ObservationFlattener(env_observation_space) if env_observation_space is not None else None
        self.checkpoint, self.step = checkpoint_path, step

    def __repr__(self) -> str:
        core = self.config.core.name
        where = f", checkpoint='{self.checkpoint}'" if self.checkpoint is not None else ""
        return (f"Policy(env='{self.config.env.id}', core='{core}' ({count_parameters(self.agent.core):,} of "
                f"{count_parameters(self.agent):,} parameters), observations {self.observation_space}, actions "
                f"{self.action_space}, step {self.step:,}, device {self.device}{where})")

    def initial_state(self, n: int) -> State:
        """The core's state before the first observation of `n` episodes (zeros)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise UserError(f"initial_state takes the number of episodes, a whole number >= 0, got {n!r}")
        return self.agent.initial_state(n, self.device)

    # ---- acting ----------------------------------------------------------------------------------------------------
    def act(self, obs: Any, state: State | None = None, episode_start: Any = None, greedy: bool = False,
            generator: torch.Generator | None = None) -> tuple[Any, State]:
        """Actions [n, ...] for observations [n, ...] and the next state.

        `episode_start[i]` (bool) resets row i's state before obs[i] (the first observation of an episode; None: no
        row starts one). `greedy`: the most likely action (per component; the mean for Box actions), else a sample
        from `generator` (torch's global generator if None). Numpy observations (or tuples/dicts of them) give numpy
        actions in the env's form (Box: clipped to the bounds); tensors give tensors as the agent produced them
        (Box: unclipped, flat [n, prod(shape)]; MultiDiscrete: [n, components], without start)."""
        acted = self._step(obs, state, episode_start, "greedy" if greedy else "sample", generator)
        if isinstance(obs, Tensor):
            return acted.action, acted.state
        return self.agent.action_head.to_env(acted.action.cpu().numpy()), acted.state

    def value(self, obs: Any, state: State | None = None, episode_start: Any = None) -> Any:
        """The critic's value [n] of each observation (numpy for numpy observations, else a tensor)."""
        values = self._step(obs, state, episode_start, "none", None).value
        return values if isinstance(obs, Tensor) else values.cpu().numpy()

    def distribution(self, obs: Any, state: State | None = None, episode_start: Any = None) -> Distribution:
        """The action distribution (torch.distributions) for each observation, over actions as the agent stores
        them (Discrete: Categorical; MultiDiscrete: independent categoricals, one per component; Box: a diagonal
        Normal of the unclipped action)."""
        outputs = self._step(obs, state, episode_start, "none", None).outputs
        return self.agent.action_head.distribution(outputs.float())

    # ---- module views ----------------------------------------------------------------------------------------------
    def trace_modules(self, enabled: bool = True) -> None:
        """Record, from the next step on, which modules each layer of the core activates (RIMs and BRIMs; see
        docs/cores.md); read the record with `module_trace()`."""
        self._require_trace()
        self.agent.core.trace_modules(enabled)

    def module_trace(self) -> list[dict[str, Tensor | None]]:
        """Per layer {"active": [T, n, modules] bool, "to_higher": [T, n, modules] float or None} of the steps
        traced since the last call (which clears it)."""
        self._require_trace()
        return self.agent.core.module_trace()

    def _require_trace(self) -> None:
        if not traces_modules(self.agent.core):
            raise UserError(f"core '{self.config.core.name}' keeps no module trace (RIMs and BRIMs do; a core offers "
                            "one with trace_modules() and module_trace(), see docs/cores.md)")

    # ---- inputs ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _step(self, obs: Any, state: State | None, episode_start: Any, mode: str,
              generator: torch.Generator | None) -> Acted:
        x = self._observations(obs)
        n = x.shape[0]
        return self.agent.act(x, self._state(state, n), self._starts(episode_start, n), mode, generator)

    def _starts(self, episode_start: Any, n: int) -> Tensor:
        if episode_start is None:
            return torch.zeros(n, dtype=torch.bool, device=self.device)
        starts = episode_start if isinstance(episode_start, Tensor) else torch.as_tensor(np.asarray(episode_start))
        if tuple(starts.shape) != (n,):
            raise UserError(f"episode_start must have shape [{n}] (one flag per observation), got "
                            f"{list(starts.shape)}")
        zero_or_one = bool(((starts == 0) | (starts == 1)).all())
        if starts.dtype != torch.bool and (starts.dtype.is_floating_point or not zero_or_one):
            raise UserError(f"episode_start must hold booleans (true at the first observation of an episode), got "
                            f"{_dtype(starts)} values")
        return starts.to(self.device, torch.bool)

    def _state(self, state: State | None, n: int) -> State:
        """The caller's state, checked against the core's initial state for n rows (None: that initial state)."""
        expected = self.agent.initial_state(n, self.device)
        if state is None:
            return expected
        if not isinstance(state, (tuple, list)):
            raise UserError(f"state must be the tuple of tensors act returned (or None for new episodes), got "
                            f"{type(state).__name__}")
        given = []
        for i, s in enumerate(state):
            if isinstance(s, np.ndarray):
                s = torch.from_numpy(s)  # numpy arrays are taken as they are, if they fit
            if not isinstance(s, Tensor):
                raise UserError(f"state tensor {i} is a {type(s).__name__}; a state is the tuple of tensors act "
                                "returned (or None for new episodes)")
            given.append(s)
        fits = len(given) == len(expected) and all(
            g.shape == e.shape and g.dtype == e.dtype for g, e in zip(given, expected))
        if not fits:
            raise UserError(self._state_mismatch(expected, given, n))
        return tuple(g.to(self.device) for g in given)

    def _state_mismatch(self, expected: State, given: list[Tensor], n: int) -> str:
        want, got = _describe_state(expected), _describe_state(given)
        if len(given) == len(expected) and all(g.dim() and g.shape[1:] == e.shape[1:] and g.dtype == e.dtype
                                               for g, e in zip(given, expected)):
            rows = sorted({int(g.shape[0]) for g in given})
            return (f"the state holds {' or '.join(map(str, rows))} rows but {n} observations were given; pass the "
                    f"state act returned for the same envs, or policy.initial_state({n}) for {n} new episodes")
        return (f"the state does not fit this policy's core '{self.config.core.name}': it keeps {want} for "
                f"{n} observations, got {got}; pass the state act returned, or None (policy.initial_state({n})) for "
                "new episodes")

    def _observations(self, obs: Any) -> Tensor:
        """A batch as the agent's encoder takes it, on the policy's device (UserError for what does not fit)."""
        shape = tuple(self.observation_space.shape)
        if not isinstance(obs, Tensor):
            if self._flatten is not None and not _is_flat(obs, shape):
                try:
                    obs = self._flatten(obs)  # the env's own observations
                except OutsideSpace as exc:
                    raise UserError(f"observations must be a batch of {self.env_observation_space} for this policy; "
                                    f"got {exc}") from None
                except (KeyError, IndexError, TypeError, ValueError):
                    raise UserError(f"observations must be a batch of {self.env_observation_space} (or flat "
                                    f"[n, {shape[0]}] vectors) for this policy") from None
            array = np.asarray(obs)
            if array.dtype.kind not in "biuf":
                raise UserError(f"observations must be numbers, got an array of dtype {array.dtype}")
            obs = torch.from_numpy(np.ascontiguousarray(array))
        x = obs
        if x.dim() == 0 or tuple(x.shape[1:]) != shape:
            n = x.shape[0] if x.dim() else 0
            if len(shape) == 1 and x.dim() >= 2 and x[0].numel() == shape[0]:
                x = x.reshape(n, shape[0])  # a Box observation the env wrapper flattens
            elif len(shape) == 3 and x.dim() == 4 and tuple(x.shape[1:]) == (shape[1], shape[2], shape[0]):
                x = x.permute(0, 3, 1, 2)  # HWC images, as gymnasium gives them
            else:
                raise UserError(f"observations must be a batch [n, {', '.join(map(str, shape))}] for this policy, "
                                f"got shape {list(x.shape)}")
        if self.observation_space.dtype == np.uint8:
            if x.dtype != torch.uint8 and (x.dtype.is_floating_point or x.dtype == torch.bool
                                           or bool(((x < 0) | (x > 255)).any())):
                raise UserError(f"this policy takes uint8 images (whole numbers 0-255), got {_dtype(x)} values")
            return x.to(self.device, torch.uint8)
        if x.dtype.is_floating_point and not bool(torch.isfinite(x).all()):
            row = int((~torch.isfinite(x.reshape(len(x), -1))).any(dim=1).nonzero()[0])
            what = "NaN" if bool(torch.isnan(x[row]).any()) else "an infinite value"
            raise UserError(f"observation {row} holds {what}; the policy acts only on finite observations")
        return x.to(self.device, torch.float32)


def _dtype(x: Tensor) -> str:
    return str(x.dtype).removeprefix("torch.")


def _is_flat(obs: Any, shape: tuple[int, ...]) -> bool:
    """Whether `obs` is already a batch of the agent's flat observations [n, size]."""
    return isinstance(obs, np.ndarray) and obs.ndim == 2 and (obs.shape[1],) == shape


def _describe_state(state) -> str:
    if not state:
        return "no state tensors"
    shapes = ", ".join(f"[{', '.join(map(str, s.shape))}] {_dtype(s)}" for s in state)
    return f"{len(state)} tensor{'s' if len(state) != 1 else ''} {shapes}"


def load_policy(run_dir_or_checkpoint: Path | str, device: str | torch.device = "cpu") -> Policy:
    """The policy of a run folder (its latest checkpoint), of its checkpoints/ folder or config.json, or of a
    checkpoint file; no env is needed. A missing or corrupt checkpoint raises UserError."""
    if not isinstance(run_dir_or_checkpoint, (str, os.PathLike)):
        raise UserError(f"load_policy takes the path of a run folder or checkpoint, got "
                        f"{type(run_dir_or_checkpoint).__name__}")
    file, payload, config = checkpoint.load_checkpoint(Path(run_dir_or_checkpoint))
    return policy_from_checkpoint(file, payload, config, resolve_device(str(device)))


def policy_from_checkpoint(file: Path, payload: dict[str, Any], config: Config, device: torch.device,
                           spaces: tuple[gym.spaces.Box, gym.Space] | None = None) -> Policy:
    """The Policy of a loaded checkpoint: its agent in the spaces the checkpoint records, or in `spaces`
    (observation, action) for a checkpoint that records none."""
    stored = checkpoint.stored_spaces(payload, config)
    if stored is None and spaces is None:
        raise UserError(f"{file} predates checkpoints that record their spaces and its env's observations cannot be "
                        "told from its weights; evaluate it with brims-rl evaluate, which builds the env")
    observation_space, action_space, env_observation_space = stored if stored is not None else (*spaces, None)
    agent = checkpoint.build_agent(payload, config, observation_space.shape, action_space, device)
    return Policy(agent, config, observation_space, action_space, device, checkpoint_path=file,
                  step=int(payload.get("global_step", 0)), env_observation_space=env_observation_space)
