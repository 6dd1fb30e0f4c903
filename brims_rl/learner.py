"""PPO's update as a training run takes it: ppo.PPOUpdate with the wrappers that change none of its maths.

- a captured CUDA graph for each minibatch's replay, loss and backward (perf.cuda_graph_update; minibatch_graph.py);
- gradient averaging across ranks after each backward pass and before clipping (torchrun; distributed.py);
- the non-finite guard: a minibatch whose loss or (averaged) gradient norm is NaN or infinite takes no optimizer step,
  and too many such minibatches in a row stop the run.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from torch import Tensor

from brims_rl.agent import Agent
from brims_rl.config import PPOConfig
from brims_rl.errors import RunFailure
from brims_rl.minibatch_graph import MinibatchGraph, minibatch_graph
from brims_rl.ppo import Minibatch, PPOUpdate, UpdateStats, minibatch_loss
from brims_rl.rollout import Rollout


class NonFiniteGuard:
    """Counts optimizer steps skipped for a non-finite loss or gradient norm; too many in a row stop the run."""

    def __init__(self, max_in_row: int) -> None:
        self.max_in_row, self.in_row, self.total = max_in_row, 0, 0

    def allow(self, finite: bool) -> bool:
        """Whether to take this optimizer step; raises RunFailure at `max_in_row` skips in a row."""
        if finite:
            self.in_row = 0
            return True
        self.in_row += 1
        self.total += 1
        if self.in_row >= self.max_in_row:
            raise RunFailure(f"the loss or gradient norm was NaN or infinite in {self.in_row} optimizer steps in a "
                             "row (each was skipped); training diverged (ppo.max_nonfinite_skips sets the limit)")
        return False


class Learner(PPOUpdate):
    """PPOUpdate whose `gradients` may replay a captured graph and whose `step` averages gradients across ranks and
    skips non-finite steps.

    `cuda_graph`: capture each minibatch's forward, loss and backward once per update and replay it (CUDA and a core
    that declares `capturable_replay`; elsewhere the eager path, with one warning if a capture fails).
    `average_gradients()`: runs after each backward pass, before clipping (DistContext.average_gradients).
    `guard`: counts and limits skipped steps (default: the config's ppo.max_nonfinite_skips).
    """

    def __init__(self, agent: Agent, optimizer: torch.optim.Optimizer, cfg: PPOConfig, *, cuda_graph: bool = False,
                 average_gradients: Callable[[], None] | None = None, guard: NonFiniteGuard | None = None) -> None:
        super().__init__(agent, optimizer, cfg)
        self.cuda_graph, self.average_gradients = cuda_graph, average_gradients
        self.guard = guard or NonFiniteGuard(cfg.max_nonfinite_skips)
        self._graph: MinibatchGraph | None = None

    def update(self, rollout: Rollout, generator: torch.Generator | None = None) -> UpdateStats:
        self._graph = None  # captured (or found in the cache) on this update's first minibatch
        return super().update(rollout, generator)

    def gradients(self, mb: Minibatch) -> tuple[Tensor, ...]:
        if self.cuda_graph and self._graph is None:
            self._graph = minibatch_graph(self.agent, mb, self.cfg, minibatch_loss)
            self.cuda_graph = self._graph is not None
        if self._graph is not None:  # forward, loss and backward in one replay; the gradients land in p.grad
            return self._graph(mb)
        return super().gradients(mb)

    def step(self, loss: Tensor) -> bool:
        # A non-finite loss on this rank poisons its gradients (loss * 0 is NaN exactly then; no host sync), so
        # after averaging every rank sees a non-finite norm and all skip the same step.
        grads = [p.grad for p in self.agent.parameters() if p.grad is not None]
        if grads:
            torch._foreach_add_(grads, loss.detach() * 0)
        if self.average_gradients is not None:
            self.average_gradients()
        grad_norm = nn.utils.clip_grad_norm_(self.agent.parameters(), self.cfg.max_grad_norm)
        if not self.guard.allow(bool(torch.isfinite(grad_norm))):
            return False
        self.optimizer.step()
        return True
