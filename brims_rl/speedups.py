"""The speed-ups that wrap acting, none of which changes what is computed: pinned host buffers for the collector's
copies and the policy step as a captured CUDA graph (policy_graph.py). Learning's are in learner.py."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from brims_rl.config import PerfConfig
from brims_rl.cores.features import capturable_policy_step
from brims_rl.policy_graph import try_graph
from brims_rl.rollout import Collector, Transfer


class PinnedTransfer(Transfer):
    """CUDA transfers through page-locked host buffers: one async copy up per step for the observation, one for the
    rewards and flags, and one copy down for the actions, whose event is the step loop's only wait on the GPU.

    Reusing the buffers is safe: a buffer is refilled only after the next action event, which the GPU reaches after
    the copy that read it (one stream, in order).
    """

    def __init__(self, obs: np.ndarray, num_envs: int, device: torch.device, action_shape: tuple[int, ...] = (),
                 action_dtype: torch.dtype = torch.long):
        super().__init__(device)
        self.obs = torch.empty(obs.shape, dtype=torch.from_numpy(obs[:0]).dtype).pin_memory()
        self.step = torch.empty((5, num_envs), dtype=torch.float32).pin_memory()  # reward + 4 flags
        self.actions = torch.empty((num_envs, *action_shape), dtype=action_dtype).pin_memory()
        self.event = torch.cuda.Event()

    def actions_to_host(self, actions: Tensor) -> np.ndarray:
        self.actions.copy_(actions, non_blocking=True)
        self.event.record()
        self.event.synchronize()
        return self.actions.numpy()

    def obs_to_device(self, obs: np.ndarray) -> Tensor:
        if obs.shape != tuple(self.obs.shape):
            return super().obs_to_device(obs)
        self.obs.numpy()[...] = obs
        return self.obs.to(self.device, non_blocking=True)

    def step_to_device(self, reward: np.ndarray, flags: np.ndarray) -> tuple[Tensor, Tensor]:
        host = self.step.numpy()
        host[0] = reward
        host[1:] = flags
        both = self.step.to(self.device, non_blocking=True)
        return both[0], both[1:].bool()


def speed_up_acting(collector: Collector, perf: PerfConfig) -> None:
    """Give the collector what `perf` asks for and its device, data and core allow: pinned transfers
    (perf.pinned_memory; CUDA, uint8 or float32 observations) and a captured policy step (perf.cuda_graph; CUDA; a
    core that gathers diagnostics while acting only if it declares `capturable_diagnostics`, since a graph runs no
    Python). A capture that fails leaves the eager step, with one warning."""
    if collector.device.type != "cuda":
        return
    obs = collector.obs
    if perf.pinned_memory and obs.dtype in (torch.uint8, torch.float32):
        head = collector.agent.action_head
        host = np.empty(tuple(obs.shape), dtype=np.uint8 if obs.dtype == torch.uint8 else np.float32)
        collector.transfer = PinnedTransfer(host, collector.env.num_envs, collector.device, head.action_shape,
                                            head.action_dtype)
    core = collector.agent.core
    if perf.cuda_graph and capturable_policy_step(core):
        collector.graphed = try_graph(collector.agent, collector.obs, collector.state, collector.first)
