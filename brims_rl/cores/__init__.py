"""Recurrent policy cores behind one contract (see design.md):

    core = make_core(name, input_size, **options)
    core.output_size                                  # int
    core.initial_state(batch_size, device)            # tuple of zero tensors, each [B, ...]
    y, state = core(x, state, episode_starts)         # x [T, B, in], episode_starts [T, B] bool, y [T, B, out]

`episode_starts[t, b]` zeroes row b's state before x[t, b] is consumed. A core may also define
`diagnostics() -> dict[str, float]`: statistics gathered while acting (no grad) since the last call, and, for module
views (`evaluate`'s modules.png and video panel), `trace_modules(enabled)` with `module_trace()`: a per-step record of
each layer's active modules and attention on the higher layer (RIMs and BRIMs; see ModularCore). PPO uses neither.
A captured CUDA graph runs no Python, so the rollout collector graphs a core with `diagnostics()` only if it declares
`capturable_diagnostics = True` (it gathers them by in-place adds into buffers made before capture, as ModularCore
does); other cores with diagnostics keep the eager policy step.

A core whose steps make discrete choices (RIMs/BRIMs: which modules are active) declares `decision_size > 0`, leaves
the choices of its latest acting call in `last_decisions` ([T, B, decision_size] bool) and takes them back as
`core(x, state, episode_starts, decisions=...)` when PPO replays the same sequence. PPO stores and returns them
without reading them; the core uses them so that rounding differences between acting and replay cannot change a
choice (ModularCore resolves near ties as recorded).
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

import torch.nn as nn

from brims_rl.cores.feedforward import FeedForwardCore
from brims_rl.cores.modular import ModularCore, RIMsCore
from brims_rl.cores.rnn import GRUCore, LSTMCore
from brims_rl.errors import UserError

CORES: dict[str, Callable[..., nn.Module]] = {
    "ff": FeedForwardCore,
    "lstm": LSTMCore,
    "gru": GRUCore,
    "rims": RIMsCore,
    "brims": ModularCore,
}


def require_core(name: str) -> None:
    """Raise UserError for a name that is not a registered core, suggesting close ones."""
    if name not in CORES:
        close = difflib.get_close_matches(name, list(CORES), n=3)
        hint = f"did you mean {' or '.join(close)}?" if close else f"choose one of: {', '.join(sorted(CORES))}"
        raise UserError(f"unknown core {name!r}; {hint}")


def make_core(name: str, input_size: int, **options: Any) -> nn.Module:
    """Build the core registered under `name`; unknown names and options raise UserError."""
    require_core(name)
    try:
        return CORES[name](input_size, **options)
    except TypeError as exc:
        raise UserError(f"bad options for core {name!r}: {exc}") from None
