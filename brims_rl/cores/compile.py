"""torch.compile for cores in one place: the modes a core may ask for, a compiled call that falls back to eager, and
room for compiled cores' graphs while several are measured together (`brims-rl bench`)."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator

import torch

# torch.compile modes a core's `compile` option takes (True means "default"). "reduce-overhead" also replays each
# compiled step as a CUDA graph (on CUDA only; an experiment against the per-step launch cost, not yet measured).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")

_compiled: dict[tuple[Callable[..., Any], str], Callable[..., Any]] = {}  # (function, mode) -> compiled, shared
_failed = False  # once compiling has failed in this process, compiled calls run eagerly


def call_compiled(fn: Callable[..., Any], mode: str, *args: Any) -> Any:
    """`fn(*args)` through `torch.compile(fn, dynamic=False, mode=mode)` (compiled on first use, then shared by every
    caller); if compiling fails (e.g. no C++ compiler), print one warning line and run eagerly from then on. No dynamo
    setting is changed. Graphs are specialised per input shape and grad mode, so first calls take a while; torch's
    on-disk cache makes later runs start fast."""
    global _failed
    if not _failed:
        compiled = _compiled.get((fn, mode))
        if compiled is None:
            compiled = _compiled[(fn, mode)] = torch.compile(fn, dynamic=False, mode=mode)
        try:
            return compiled(*args)
        except Exception as exc:  # an error of the call itself recurs eagerly below and propagates from there
            _failed = True
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            print(f"brims-rl: warning: torch.compile failed, the core runs eagerly (slower, same results): "
                  f"{type(exc).__name__}: {reason}", file=sys.stderr, flush=True)
    return fn(*args)


def compile_failed() -> bool:
    """Whether compiling has failed in this process (compiled calls then run eagerly)."""
    return _failed


def compiled_modes() -> set[str]:
    """The modes compiled so far in this process."""
    return {mode for _, mode in _compiled}


@contextlib.contextmanager
def room_for_compiled_cores(count: int, graphs_per_core: int = 8) -> Iterator[None]:
    """While inside: room for each compiled core's graphs (rollout and replay, per grad mode and batch), so that no
    core of a bench is silently measured eager. torch.compile keeps at most `recompile_limit` graphs per function,
    shared by every core of a class; the limit is restored on exit."""
    import torch._dynamo

    limit = max(torch._dynamo.config.recompile_limit, graphs_per_core * count)
    with torch._dynamo.config.patch(recompile_limit=limit):
        yield
