"""Rollouts: their storage, and the collector that steps the vector env with the agent's policy (carrying the core
state across rollouts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from brims_rl.agent import Acted, Agent, State
from brims_rl.environments.base import VecEnv
from brims_rl.errors import RunFailure


@dataclass
class Rollout:
    """T steps of N envs, all tensors [T, N, ...] on the training device."""

    obs: Tensor  # uint8 images or float vectors, as the env gave them
    starts: Tensor  # bool: obs[t] is the first observation of an episode (the core resets before it)
    actions: Tensor  # [T, N, *action_shape]: long (Discrete, MultiDiscrete) or float32 (Box: sampled, unclipped)
    logprobs: Tensor
    policy_params: Tensor  # [T, N, P] what defined each step's action distribution (action_heads: params)
    values: Tensor
    rewards: Tensor
    terminated: Tensor  # bool
    truncated: Tensor  # bool
    ignored: Tensor  # bool: autoreset transition, masked out
    initial_state: State  # core state before obs[0], each [N, ...]
    next_value: Tensor  # [N] value of the observation after the last step (bootstrap)
    decisions: Tensor | None = None  # bool [T, N, D]: the core's recorded choices (None for cores without any)

    @classmethod
    def allocate(cls, num_steps: int, num_envs: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype,
                 device: torch.device, decision_size: int = 0, action_shape: tuple[int, ...] = (),
                 action_dtype: torch.dtype = torch.long, num_params: int = 1) -> "Rollout":
        """`action_shape`/`action_dtype`: one env's action as the agent's head stores it (agent.action_head);
        `num_params`: the width of the head's distribution parameters (ActionHead.num_params)."""

        def zeros(dtype: torch.dtype, *shape: int) -> Tensor:
            return torch.zeros((num_steps, num_envs, *shape), dtype=dtype, device=device)

        return cls(
            obs=zeros(obs_dtype, *obs_shape), starts=zeros(torch.bool), actions=zeros(action_dtype, *action_shape),
            logprobs=zeros(torch.float32), policy_params=zeros(torch.float32, num_params), values=zeros(torch.float32),
            rewards=zeros(torch.float32),
            terminated=zeros(torch.bool), truncated=zeros(torch.bool), ignored=zeros(torch.bool),
            initial_state=(), next_value=torch.zeros(num_envs, device=device),
            decisions=zeros(torch.bool, decision_size) if decision_size else None,
        )


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A numpy batch as a tensor on `device`: uint8 frames travel as uint8, float64 becomes float32."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.dtype == torch.float64:
        tensor = tensor.float()
    return tensor.to(device, non_blocking=True)


class Transfer:
    """The collector's host <-> device copies, the plain way: one copy per array (speedups.PinnedTransfer is the
    CUDA way)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def obs_to_device(self, obs: np.ndarray) -> Tensor:
        return to_device(obs, self.device)

    def step_to_device(self, reward: np.ndarray, flags: np.ndarray) -> tuple[Tensor, Tensor]:
        """Rewards [N] float32 and flags [4, N] bool on the device."""
        return to_device(np.asarray(reward, dtype=np.float32), self.device), to_device(flags, self.device)

    def actions_to_host(self, actions: Tensor) -> np.ndarray:
        return actions.cpu().numpy()


@dataclass(frozen=True)
class EnvLabels:
    """How the collector names an env and a step in its messages: env `name`, env index `first_env_index` + i (ranks
    number their envs after each other), global step `start_step` + vec steps taken * `steps_per_vec_step` (default:
    the env count)."""

    name: str = "env"
    first_env_index: int = 0
    start_step: int = 0
    steps_per_vec_step: int | None = None


def _what(values: np.ndarray) -> str:
    return "NaN" if np.isnan(values).any() else "inf"


def nonfinite_report(reward: np.ndarray | None, obs: np.ndarray) -> tuple[int, str] | None:
    """(env index, what) for the first env whose reward or float observation is NaN or infinite, else None."""
    if reward is not None:
        reward = np.asarray(reward)
        bad = ~np.isfinite(reward)
        if bad.any():
            i = int(np.argmax(bad))
            return i, f"a {_what(reward[i])} reward"
    if obs.dtype.kind == "f":
        bad = ~np.isfinite(obs.reshape(len(obs), -1)).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            return i, f"an observation holding {_what(obs[i])}"
    return None


class Collector:
    """Steps the envs with the policy (Agent.act) into a Rollout, carrying the core's state across rollouts.

    Every reward and float observation is checked as it arrives: a NaN or infinite one raises RunFailure naming the
    env, its index and the global step (`labels`), before it reaches the agent. `transfer` (host <-> device copies)
    and `graphed` (a captured policy step, or None) are what speedups.speed_up_acting replaces.
    """

    def __init__(self, env: VecEnv, agent: Agent, num_steps: int, device: torch.device,
                 labels: EnvLabels = EnvLabels()):
        self.env, self.agent, self.device, self.labels = env, agent, device, labels
        self.step_count = labels.start_step
        self.steps_per_vec_step = labels.steps_per_vec_step or env.num_envs
        self.transfer = Transfer(device)
        self.graphed: Callable[[Tensor, State, Tensor], Acted] | None = None
        first_obs = env.reset()
        self._check(None, first_obs)
        self.obs = self.transfer.obs_to_device(first_obs)
        self.first = torch.ones(env.num_envs, dtype=torch.bool, device=device)
        self.state = agent.initial_state(env.num_envs, device)
        head = agent.action_head
        obs_dtype = torch.uint8 if first_obs.dtype == np.uint8 else torch.float32
        self.rollout = Rollout.allocate(num_steps, env.num_envs, first_obs.shape[1:], obs_dtype, device,
                                        agent.decision_size, head.action_shape, head.action_dtype, head.num_params)

    def _policy_step(self, sample: bool = True) -> Acted:
        """The agent's policy step on the current observations (no action with sample=False, except through the
        graph, which always samples)."""
        if self.graphed is not None:
            return self.graphed(self.obs, self.state, self.first)
        return self.agent.act(self.obs, self.state, self.first, "sample" if sample else "none")

    def _check(self, reward: np.ndarray | None, obs: np.ndarray) -> None:
        found = nonfinite_report(reward, obs)
        if found is not None:
            index, what = found
            when = "on reset" if reward is None else f"at step {self.step_count:,}"
            raise RunFailure(f"env {self.labels.name} (env index {self.labels.first_env_index + index}) returned "
                             f"{what} {when}; the run stopped before learning from it")

    @torch.no_grad()
    def collect(self, should_stop: Callable[[], bool] = lambda: False) -> list[tuple[int, float, int]] | None:
        """Fill `self.rollout`; return the full games finished meanwhile, or None if stopped midway."""
        r = self.rollout
        r.initial_state = tuple(s.clone() for s in self.state)
        episodes: list[tuple[int, float, int]] = []
        for t in range(r.rewards.shape[0]):
            r.obs[t] = self.obs
            r.starts[t] = self.first
            acted = self._policy_step()
            action, self.state = acted.action, acted.state
            if r.decisions is not None:  # the core's choices at this step, for PPO's replay
                r.decisions[t] = acted.decisions
            # the env gets its form of the action (a Box action clipped to the bounds); the rollout keeps the sample
            step = self.env.step(self.agent.action_head.to_env(self.transfer.actions_to_host(action)))
            self.step_count += self.steps_per_vec_step
            self._check(step.reward, step.obs)

            r.actions[t], r.logprobs[t], r.values[t] = action, acted.logprob, acted.value
            r.policy_params[t] = self.agent.action_head.params(acted.outputs)  # for the KL penalty
            flags = np.stack([step.terminated, step.truncated, step.ignored, step.first]).astype(np.bool_)
            r.rewards[t], flags_t = self.transfer.step_to_device(step.reward, flags)
            r.terminated[t], r.truncated[t], r.ignored[t] = flags_t[0], flags_t[1], flags_t[2]
            self.obs, self.first = self.transfer.obs_to_device(step.obs), flags_t[3]
            episodes.extend(step.episodes)
            if should_stop():
                return None
        r.next_value = self._policy_step(sample=False).value  # the bootstrap value
        return episodes
