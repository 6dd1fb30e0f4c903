"""A trained policy that acts without an env: `load_policy(run_dir_or_checkpoint)` -> Policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from brims_rl import checkpoint
from brims_rl.agent import Agent, State
from brims_rl.config import Config
from brims_rl.environments.spaces import ObservationFlattener
from brims_rl.runtime import resolve_device


class Policy:
    """A checkpoint's agent, acting on batches of observations.

    `observation_space` is the space of one observation as brims-rl's env wrappers give it (Atari: the stacked uint8
    frames [C, H, W]; gymnasium Box envs: the observation, flattened to float32 if it has several dimensions), and
    `act` also takes a gymnasium vector env's batch as it comes (an [n, H, W, C] image batch, an unflattened Box, or
    for an env whose observations brims-rl flattens (Discrete, MultiDiscrete, MultiBinary, Tuple, Dict; see
    docs/spaces.md) the batch in the env's own space, `env_observation_space`: an [n] array, an [n, ...] array, or a
    tuple/dict of such arrays). `action_space` is the env's: actions come in its form (Box actions clipped to the
    bounds, MultiDiscrete actions [n, *nvec.shape]).
    The core's state is carried by the caller: `initial_state(n)`, then the state `act` returns.
    """

    def __init__(self, agent: Agent, config: Config, observation_space: gym.spaces.Box,
                 action_space: gym.Space, device: torch.device, checkpoint_path: Path | None = None,
                 step: int = 0, env_observation_space: gym.Space | None = None) -> None:
        self.agent, self.config, self.device = agent, config, device
        self.observation_space, self.action_space = observation_space, action_space
        self.env_observation_space = env_observation_space if env_observation_space is not None else observation_space
        self._flatten = ObservationFlattener(env_observation_space) if env_observation_space is not None else None
        self.checkpoint, self.step = checkpoint_path, step

    def initial_state(self, n: int) -> State:
        """The core's state before the first observation of `n` episodes (zeros)."""
        return self.agent.initial_state(n, self.device)

    @torch.no_grad()
    def act(self, obs: Any, state: State, episode_start: Any, greedy: bool = False) -> tuple[Any, State]:
        """Actions [n, ...] for observations [n, ...] and the next state. `episode_start[i]` (bool) resets row i's
        state before obs[i] (the first observation of an episode). `greedy`: the most likely action (per component;
        the mean for Box actions), else a sample (torch's global generator). Numpy observations (or tuples/dicts of
        them) give numpy actions in the env's form (Box: clipped to the bounds); tensors give tensors as the agent
        produced them (Box: unclipped, flat [n, prod(shape)]; MultiDiscrete: [n, components], without start)."""
        x = self._observations(obs)
        n = x.shape[0]
        starts = torch.as_tensor(np.asarray(episode_start) if not isinstance(episode_start, Tensor) else episode_start)
        if tuple(starts.shape) != (n,):
            raise ValueError(f"episode_start must have shape [{n}] (one flag per observation), got "
                             f"{list(starts.shape)}")
        starts = starts.to(self.device, torch.bool)
        logits, _, state = self.agent(x.unsqueeze(0), state, starts.unsqueeze(0))
        logits = logits[0]
        head = self.agent.action_head
        actions = head.greedy(logits) if greedy else head.sample(logits.float())[0]
        if isinstance(obs, Tensor):
            return actions, state
        return head.to_env(actions.cpu().numpy()), state

    def _observations(self, obs: Any) -> Tensor:
        """A batch as the agent's encoder takes it, on the policy's device."""
        if self._flatten is not None and not isinstance(obs, Tensor):
            try:
                obs = self._flatten(obs)  # the env's own observations (an already flat batch fails here: kept)
            except (KeyError, IndexError, TypeError, ValueError):
                flat = np.asarray(obs) if not isinstance(obs, (dict, tuple)) else None
                if flat is None or flat.ndim != 2 or flat.shape[1] != self.observation_space.shape[0]:
                    raise ValueError(f"observations must be a batch of {self.env_observation_space} (or flat "
                                     f"[n, {self.observation_space.shape[0]}] vectors) for this policy") from None
        x = obs if isinstance(obs, Tensor) else torch.from_numpy(np.ascontiguousarray(np.asarray(obs)))
        shape = tuple(self.observation_space.shape)
        if x.dim() == 0 or tuple(x.shape[1:]) != shape:
            n = x.shape[0] if x.dim() else 0
            if len(shape) == 1 and x.dim() >= 2 and x[0].numel() == shape[0]:
                x = x.reshape(n, shape[0])  # a Box observation the env wrapper flattens
            elif len(shape) == 3 and tuple(x.shape[1:]) == (shape[1], shape[2], shape[0]):
                x = x.permute(0, 3, 1, 2)  # HWC images, as gymnasium gives them
            else:
                raise ValueError(f"observations must be a batch [n, {', '.join(map(str, shape))}] for this policy, "
                                 f"got shape {list(x.shape)}")
        dtype = torch.uint8 if self.observation_space.dtype == np.uint8 else torch.float32
        return x.to(self.device, dtype)


def load_policy(run_dir_or_checkpoint: Path | str, device: str | torch.device = "cpu") -> Policy:
    """The policy of a run folder (its latest checkpoint) or of a checkpoint file; no env is needed. A missing or
    corrupt checkpoint raises UserError."""
    file, payload, config = checkpoint.load_checkpoint(Path(run_dir_or_checkpoint))
    device = resolve_device(str(device))
    observation_space, action_space, env_observation_space = checkpoint.all_spaces(payload, config)
    agent = checkpoint.build_agent(payload, config, observation_space.shape, action_space, device)
    return Policy(agent, config, observation_space, action_space, device, checkpoint_path=file,
                  step=int(payload.get("global_step", 0)), env_observation_space=env_observation_space)
