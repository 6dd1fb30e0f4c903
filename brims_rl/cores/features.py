"""The core contract's optional features, declared once (docs/cores.md, "Optional parts").

A core is any module that keeps the contract in cores/__init__.py; it may add any of the features below. The rest
of brims-rl asks a core about them only through the functions here, never by probing attributes itself, so that what
a core may offer is written in one place and a core that offers none of it works everywhere.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch.nn as nn
from torch import Tensor


@runtime_checkable
class MakesDecisions(Protocol):
    """Discrete choices per step (RIMs/BRIMs: which modules are active): `decision_size` flags per step; the latest
    acting call's choices in `last_decisions` [T, B, decision_size] bool; `core(x, state, starts, decisions=...)`
    replays a sequence with them (PPO's replay before the update's first optimizer step)."""

    decision_size: int
    last_decisions: Tensor | None


@runtime_checkable
class HasDiagnostics(Protocol):
    """Statistics gathered while acting (no grad) since the last call, which returns and clears them; TensorBoard
    logs them as core/<key>."""

    def diagnostics(self) -> dict[str, float]: ...


@runtime_checkable
class TracesModules(Protocol):
    """A per-step record, while acting, of each layer's active modules and attention on the higher layer (module
    views: evaluate's modules.png and video panel). `module_counts`: modules per layer, bottom first."""

    module_counts: list[int]

    def trace_modules(self, enabled: bool = True) -> None: ...

    def module_trace(self) -> list[dict[str, Tensor | None]]: ...


@runtime_checkable
class DeclaresCapture(Protocol):
    """What a captured CUDA graph may do with the core: `capturable_diagnostics` (its diagnostics are gathered by
    in-place adds into buffers made before capture, so a captured policy step keeps counting) and
    `capturable_replay` (forward runs without host synchronisation, so a PPO minibatch can be one graph)."""

    capturable_diagnostics: bool
    capturable_replay: bool


def decision_size(core: nn.Module) -> int:
    """The core's discrete choices per step (0 for a core that makes none)."""
    return int(core.decision_size) if isinstance(core, MakesDecisions) else 0


def last_decisions(core: nn.Module) -> Tensor | None:
    """The choices of the core's latest acting call [T, B, decision_size], or None."""
    return core.last_decisions if isinstance(core, MakesDecisions) else None


def diagnostics(core: nn.Module) -> dict[str, float]:
    """The core's acting statistics since the last call (which clears them); {} for a core without any."""
    return core.diagnostics() if isinstance(core, HasDiagnostics) else {}


def traces_modules(core: nn.Module) -> bool:
    return isinstance(core, TracesModules)


def capturable_policy_step(core: nn.Module) -> bool:
    """Whether the rollout's policy step may be one captured CUDA graph: a core without diagnostics, or one whose
    diagnostics are capturable."""
    if not isinstance(core, HasDiagnostics):
        return True
    return isinstance(core, DeclaresCapture) and bool(core.capturable_diagnostics)


def capturable_replay(core: nn.Module) -> bool:
    """Whether a PPO minibatch's replay through the core may be one captured CUDA graph."""
    return isinstance(core, DeclaresCapture) and bool(core.capturable_replay)
