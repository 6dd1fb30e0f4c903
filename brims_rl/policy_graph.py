"""The rollout's policy step (encoder -> core -> heads -> action sampling) replayed as one captured CUDA graph.

At 64 envs a policy step is a few hundred small kernels whose launch cost exceeds their run time; replaying a captured
graph launches them all at once. The graph runs exactly the kernels of the eager step on the same shapes, so the
rollout's log-probs and values are those the eager step would give; sampling draws from the CUDA generator, whose
state advances at every replay. A core's decisions (RIMs/BRIMs top-k selections) are graph outputs like the rest;
its diagnostics keep counting only if it gathers them by in-place adds into buffers that exist before capture
(`capturable_diagnostics`; the rollout collector keeps other cores with diagnostics on the eager step).
"""

from __future__ import annotations

import torch
from torch import Tensor

from brims_rl.agent import Acted, Agent, State
from brims_rl.cores.features import diagnostics as core_diagnostics
from brims_rl.errors import warn_speedup_failed


class GraphedPolicyStep:
    """`step(obs [B,...], state, first [B]) -> Acted`: the agent's sampling policy step (Agent.act) through a
    captured graph."""

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
        core_diagnostics(agent.core)  # returns and clears: drop what the warm-up and capture gathered

    def _run(self) -> Acted:
        return self.agent.act(self.obs, self.state, self.first, "sample")

    def __call__(self, obs: Tensor, state: State, first: Tensor) -> Acted:
        self.obs.copy_(obs)
        self.first.copy_(first)
        for static, s in zip(self.state, state):
            static.copy_(s)
        self.graph.replay()
        # the graph's outputs are overwritten by the next replay: hand out copies
        return Acted(*(None if out is None else tuple(s.clone() for s in out) if isinstance(out, tuple)
                       else out.clone() for out in self.out))


def try_graph(agent: Agent, obs: Tensor, state: State, first: Tensor) -> GraphedPolicyStep | None:
    """A captured policy step, or None (with one warning line) if this model cannot be captured."""
    try:
        return GraphedPolicyStep(agent, obs, state, first)
    except Exception as exc:  # capture is an optimisation: fall back to the eager step
        warn_speedup_failed("CUDA graph capture of the policy step", "it runs eagerly", exc)
        return None
