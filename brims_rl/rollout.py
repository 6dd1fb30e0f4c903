"""Collects rollouts: steps the vector env with the agent's policy, carrying the core state across rollouts."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from brims_rl.agent import Agent
from brims_rl.environments.base import VecEnv
from brims_rl.ppo import Rollout, sample_actions


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A numpy batch as a tensor on `device`: uint8 frames travel as uint8, float64 becomes float32."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.dtype == torch.float64:
        tensor = tensor.float()
    return tensor.to(device, non_blocking=True)


class Collector:
    def __init__(self, env: VecEnv, agent: Agent, num_steps: int, device: torch.device):
        self.env, self.agent, self.device = env, agent, device
        first_obs = env.reset()
        self.obs = self._to_device(first_obs)
        self.first = torch.ones(env.num_envs, dtype=torch.bool, device=device)
        self.state = agent.initial_state(env.num_envs, device)
        obs_dtype = torch.uint8 if first_obs.dtype == np.uint8 else torch.float32
        self.rollout = Rollout.allocate(num_steps, env.num_envs, first_obs.shape[1:], obs_dtype, device)

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        return to_device(array, self.device)

    @torch.no_grad()
    def collect(self, should_stop: Callable[[], bool] = lambda: False) -> list[tuple[int, float, int]] | None:
        """Fill `self.rollout`; return the full games finished meanwhile, or None if stopped midway."""
        r = self.rollout
        r.initial_state = tuple(s.clone() for s in self.state)
        episodes: list[tuple[int, float, int]] = []
        for t in range(r.rewards.shape[0]):
            r.obs[t] = self.obs
            r.starts[t] = self.first
            logits, value, self.state = self.agent(self.obs.unsqueeze(0), self.state, self.first.unsqueeze(0))
            action, logprob = sample_actions(logits[0])
            step = self.env.step(action.cpu().numpy())

            r.actions[t], r.logprobs[t], r.values[t] = action, logprob, value[0]
            flags = np.stack([step.terminated, step.truncated, step.ignored, step.first])
            flags_t = self._to_device(flags.astype(np.bool_))
            r.terminated[t], r.truncated[t], r.ignored[t] = flags_t[0], flags_t[1], flags_t[2]
            r.rewards[t] = self._to_device(np.asarray(step.reward, dtype=np.float32))
            self.obs, self.first = self._to_device(step.obs), flags_t[3]
            episodes.extend(step.episodes)
            if should_stop():
                return None
        _, next_value, _ = self.agent(self.obs.unsqueeze(0), self.state, self.first.unsqueeze(0))
        r.next_value = next_value[0]
        return episodes
