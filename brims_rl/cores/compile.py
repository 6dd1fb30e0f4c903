"""torch.compile for cores in one place: the modes a core may ask for, a compiled call that falls back to eager and
says so, and room for compiled cores' graphs while several are measured together (`brims-rl bench`).

No slow path is silent: functions are compiled with `fullgraph=True`, so a graph break or dynamo's recompile limit
(too many shapes for one function) raises instead of quietly running eagerly; the call then runs eagerly from
there on, prints one warning line and records it in `fallbacks()`, which the trainer writes to TensorBoard and
`brims-rl bench` reports.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
import torch._dynamo

from brims_rl.errors import warn_speedup_failed

# torch.compile modes a core's `compile` option takes (True means "default"). "reduce-overhead" also replays each
# compiled graph as a CUDA graph (on CUDA only).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")

Key = tuple[Callable[..., Any], str, str]  # (function, mode, device type)
_compiled: dict[Key, Callable[..., Any]] = {}  # compiled functions, shared by every caller
_failed: set[Key] = set()  # those that run eagerly from now on
_fallbacks: list[str] = []  # one line per fallback, in order


def call_compiled(fn: Callable[..., Any], mode: str, device: torch.device, *args: Any) -> Any:
    """`fn(*args)` through `torch.compile(fn, dynamic=False, fullgraph=True, mode=mode)` for tensors on `device`
    (compiled on first use, then shared by every caller). If compiling fails (no C++ compiler, a graph break, the
    recompile limit), warn (once per cause) and run `fn` eagerly from then on. No dynamo setting is changed. Graphs
    are specialised per input shape, so first calls take a while; torch's on-disk cache makes later runs start fast."""
    key = (fn, mode, device.type)
    if key not in _failed:
        compiled = _compiled.get(key)
        if compiled is None:
            compiled = _compiled[key] = _compile(fn, mode, device.type)
        try:
            return compiled(*args)
        except Exception as exc:  # an error of the call itself recurs eagerly below and propagates from there
            _failed.add(key)
            text = str(exc).strip()
            reason = text.splitlines()[0][:200] if text else type(exc).__name__
            if not any(line.endswith(reason) for line in _fallbacks):  # one line per distinct cause
                warn_speedup_failed(f"torch.compile of {fn.__name__}",
                                    "it and any compiled call that fails alike run eagerly (slower, same results)", exc)
            _fallbacks.append(f"torch.compile of {fn.__name__} ({device.type}) runs eagerly: {type(exc).__name__}: "
                              f"{reason}")
    return fn(*args)


def _compile(fn: Callable[..., Any], mode: str, device_type: str) -> Callable[..., Any]:
    """On the CPU, the default mode with inductor's C++ wrapper: a compiled graph's kernels are called from C++, not
    Python, which is most of the cost of a small graph on the CPU (and of a compiled time loop: its steps run in
    C++)."""
    if mode == "default" and device_type == "cpu":
        return torch.compile(fn, dynamic=False, fullgraph=True, options={"cpp_wrapper": True})
    return torch.compile(fn, dynamic=False, fullgraph=True, mode=mode)


def compile_failed() -> bool:
    """Whether any compiled call has fallen back to eager in this process."""
    return bool(_failed)


def fallbacks() -> list[str]:
    """Every fallback to eager in this process so far, one line each, oldest first."""
    return list(_fallbacks)


def compiled_modes() -> set[str]:
    """The modes compiled so far in this process."""
    return {mode for _, mode, _ in _compiled}


@contextlib.contextmanager
def room_for_compiled_cores(count: int, graphs_per_core: int = 8) -> Iterator[None]:
    """While inside: room for each compiled core's graphs (acting and training, per batch and chunk size), so that
    bench measures every core compiled. torch.compile keeps at most `recompile_limit` graphs per function; the
    limit is restored on exit."""
    limit = max(torch._dynamo.config.recompile_limit, graphs_per_core * count)
    with torch._dynamo.config.patch(recompile_limit=limit):
        yield
