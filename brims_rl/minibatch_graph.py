"""A PPO minibatch's forward, loss and backward (through the whole sequence) replayed as one captured CUDA graph.

The loss is the caller's (ppo.minibatch_loss): this module only captures `loss_fn(agent, minibatch, cfg)` and its
backward for a dataclass of tensors, and replays them for the next minibatch of the same shapes.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Callable

import torch
from torch import Tensor

from brims_rl.agent import Agent
from brims_rl.config import PPOConfig
from brims_rl.cores.features import capturable_replay
from brims_rl.errors import warn_speedup_failed

LossFn = Callable[[Agent, Any, PPOConfig], tuple[Tensor, ...]]  # (agent, minibatch, cfg) -> (loss, *stats)


class MinibatchGraph:
    """One PPO minibatch's forward, loss and backward as a captured graph (perf.cuda_graph_update, off by default).

    A BRIMs replay is 128 sequential core steps, each a few dozen small kernels; launched one by one from Python
    they bound the update on a GPU. Replaying them as one graph launches the whole minibatch at once. The graph
    holds static copies of a minibatch's tensors; a call copies the next minibatch in, replays, and leaves the
    gradients in the parameters' `.grad` (the same tensors every time) and returns minibatch_loss's outputs, which
    the next call overwrites. The core must run without host synchronisation while a graph is captured
    (`capturable_replay`: ModularCore then resets its state at every step instead of finding episode starts).
    """

    def __init__(self, agent: Agent, example: Any, cfg: PPOConfig, loss_fn: LossFn, warmup: int = 3):
        self.params = list(agent.parameters())  # not the agent: the graph cache must not keep it alive
        self.fields = [f.name for f in dataclasses.fields(example)]
        self.static = type(example)(**{name: _clone(getattr(example, name)) for name in self.fields})
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the graph: compiles, cuBLAS workspaces, autograd buffers
            for _ in range(warmup):
                agent.zero_grad(set_to_none=True)
                loss_fn(agent, self.static, cfg)[0].backward()
        torch.cuda.current_stream().wait_stream(side)
        agent.zero_grad(set_to_none=True)  # the captured backward allocates the gradients from the graph's pool
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = loss_fn(agent, self.static, cfg)
            self.out[0].backward()
        self.grads = [p.grad for p in self.params]

    def __call__(self, mb: Any) -> tuple[Tensor, ...]:
        for name in self.fields:
            _copy(getattr(self.static, name), getattr(mb, name))
        self.graph.replay()
        for p, grad in zip(self.params, self.grads):  # whatever reset p.grad since, the graph writes here
            p.grad = grad
        return self.out


def _clone(value):
    return tuple(v.clone() for v in value) if isinstance(value, tuple) else None if value is None else value.clone()


def _copy(static, value) -> None:
    if isinstance(static, tuple):
        for s, v in zip(static, value):
            s.copy_(v)
    elif static is not None and value is None:  # decisions left out: no module is preferred, the scores decide
        static.zero_()
    elif static is not None:
        static.copy_(value)


# agent -> (shapes and settings, its captured minibatch or None if capturing failed)
_minibatch_graphs: "weakref.WeakKeyDictionary[Agent, tuple[tuple, MinibatchGraph | None]]" = weakref.WeakKeyDictionary()


def minibatch_graph(agent: Agent, example: Any, cfg: PPOConfig, loss_fn: LossFn) -> MinibatchGraph | None:
    """The agent's captured minibatch for these shapes and PPO settings (captured once, then reused), or None (with
    one warning line) where it cannot be had: not on CUDA, a core that does not declare `capturable_replay`, or a
    failed capture."""
    if example.obs.device.type != "cuda" or not capturable_replay(agent.core):
        return None
    key = (loss_fn, tuple(example.obs.shape), example.decisions is not None, dataclasses.astuple(cfg))
    cached = _minibatch_graphs.get(agent)
    if cached is not None and cached[0] == key:
        return cached[1]
    graph = None
    try:
        graph = MinibatchGraph(agent, example, cfg, loss_fn)
    except Exception as exc:  # an optimisation: fall back to the eager minibatch (and do not try again)
        warn_speedup_failed("CUDA graph capture of the PPO minibatch", "it runs eagerly", exc)
        agent.zero_grad(set_to_none=True)
    _minibatch_graphs[agent] = (key, graph)
    return graph
