"""CUDA graphs: the rollout's policy step (encoder -> core -> heads -> action sampling), and PPO's minibatch
(forward, loss and backward through the whole sequence), each replayed as one captured graph.

At 64 envs a policy step is a few hundred small kernels whose launch cost exceeds their run time; replaying a captured
graph launches them all at once. The graph runs exactly the kernels of the eager step on the same shapes, so the
rollout's log-probs and values are those the eager step would give; sampling draws from the CUDA generator, whose
state advances at every replay. A core's decisions (RIMs/BRIMs top-k selections) are graph outputs like the rest;
its diagnostics keep counting only if it gathers them by in-place adds into buffers that exist before capture
(`capturable_diagnostics`; the rollout collector keeps other cores with diagnostics on the eager step).
"""

from __future__ import annotations

import dataclasses
import sys
import weakref

import torch
from torch import Tensor

from brims_rl.agent import Agent, State
from brims_rl.config import PPOConfig
from brims_rl.ppo import Minibatch, minibatch_loss, sample_actions


class GraphedPolicyStep:
    """`step(obs [B,...], state, first [B]) -> (action, logprob, value, new_state, decisions)` through a captured
    graph; decisions [B, D] is None for a core that makes none."""

    def __init__(self, agent: Agent, obs: Tensor, state: State, first: Tensor, warmup: int = 3):
        self.agent = agent
        self.obs, self.first = obs.clone(), first.clone()
        self.state = tuple(s.clone() for s in state)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():  # warm-up (compiles, allocator, cuDNN plans) off the graph
            for _ in range(warmup):
                self._run()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.out = self._run()
        clear = getattr(agent.core, "_clear_diagnostics", None)
        if clear is not None:
            clear()

    def _run(self) -> tuple[Tensor, Tensor, Tensor, State, Tensor | None]:
        logits, value, state = self.agent(self.obs.unsqueeze(0), self.state, self.first.unsqueeze(0))
        action, logprob = sample_actions(logits[0])
        decisions = self.agent.last_decisions()[0] if self.agent.decision_size else None
        return action, logprob, value[0], state, decisions

    def __call__(self, obs: Tensor, state: State, first: Tensor) -> tuple[Tensor, Tensor, Tensor, State,
                                                                       Tensor | None]:
        self.obs.copy_(obs)
        self.first.copy_(first)
        for static, s in zip(self.state, state):
            static.copy_(s)
        self.graph.replay()
        action, logprob, value, new_state, decisions = self.out
        # the graph's outputs are overwritten by the next replay: hand out copies
        return (action.clone(), logprob.clone(), value.clone(), tuple(s.clone() for s in new_state),
                None if decisions is None else decisions.clone())


def try_graph(agent: Agent, obs: Tensor, state: State, first: Tensor) -> GraphedPolicyStep | None:
    """A captured policy step, or None (with one warning line) if this model cannot be captured."""
    try:
        return GraphedPolicyStep(agent, obs, state, first)
    except Exception as exc:  # capture is an optimisation: fall back to the eager step
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        print(f"brims-rl: warning: CUDA graph capture failed, the policy step runs eagerly: {reason}",
              file=sys.stderr, flush=True)
        return None


class MinibatchGraph:
    """One PPO minibatch's forward, loss and backward as a captured graph (not yet measured on a GPU; off by default).

    A BRIMs replay is 128 sequential core steps, each a few dozen small kernels; launched one by one from Python
    they bound the update on a GPU. Replaying them as one graph launches the whole minibatch at once. The graph
    holds static copies of a minibatch's tensors; a call copies the next minibatch in, replays, and leaves the
    gradients in the parameters' `.grad` (the same tensors every time) and returns minibatch_loss's outputs, which
    the next call overwrites. The core must run without host synchronisation while a graph is captured
    (`capturable_replay`: ModularCore then resets its state at every step instead of finding episode starts).
    """

    def __init__(self, agent: Agent, example: Minibatch, cfg: PPOConfig, warmup: int = 3):
        self.params = list(agent.parameters())  # not the agent: the graph cache must not keep it alive
        self.static = Minibatch(**{f.name: _clone(getattr(example, f.name)) for f in dataclasses.fields(Minibatch)})
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the graph: compiles, cuBLAS workspaces, autograd buffers
            for _ in range(warmup):
                agent.zero_grad(set_to_none=True)
                minibatch_loss(agent, self.static, cfg)[0].backward()
        torch.cuda.current_stream().wait_stream(side)
        agent.zero_grad(set_to_none=True)  # the captured backward allocates the gradients from the graph's pool
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = minibatch_loss(agent, self.static, cfg)
            self.out[0].backward()
        self.grads = [p.grad for p in self.params]

    def __call__(self, mb: Minibatch) -> tuple[Tensor, ...]:
        for f in dataclasses.fields(Minibatch):
            _copy(getattr(self.static, f.name), getattr(mb, f.name))
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


def minibatch_graph(agent: Agent, example: Minibatch, cfg: PPOConfig) -> MinibatchGraph | None:
    """The agent's captured minibatch for these shapes and PPO settings (captured once, then reused), or None (with
    one warning line) where it cannot be had: not on CUDA, a core that does not declare `capturable_replay`, or a
    failed capture."""
    if example.obs.device.type != "cuda" or not getattr(agent.core, "capturable_replay", False):
        return None
    key = (tuple(example.obs.shape), example.decisions is not None, dataclasses.astuple(cfg))
    cached = _minibatch_graphs.get(agent)
    if cached is not None and cached[0] == key:
        return cached[1]
    graph = None
    try:
        graph = MinibatchGraph(agent, example, cfg)
    except Exception as exc:  # an optimisation: fall back to the eager minibatch (and do not try again)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        print(f"brims-rl: warning: CUDA graph capture of the PPO minibatch failed, it runs eagerly: {reason}",
              file=sys.stderr, flush=True)
        agent.zero_grad(set_to_none=True)
    _minibatch_graphs[agent] = (key, graph)
    return graph
