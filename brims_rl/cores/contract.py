"""`check_core`: does a core keep the contract PPO relies on (see cores/__init__.py)?

Each broken rule raises CoreContractError naming the rule. Numbers are compared with a tolerance derived from the
float type and the sizes involved, not a tuned constant: a dot product of n terms rounds by up to about n * eps
relative to its magnitude, and a recurrent step compounds that over the steps of a sequence.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor


class CoreContractError(Exception):
    """A core breaks the core contract: `rule` names the rule, the message says how ("rule: what happened")."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(f"{rule}: {detail}")
        self.rule = rule


def _fail(rule: str, detail: str) -> CoreContractError:
    return CoreContractError(rule, detail)


def _device_dtype(core: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in core.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def _state_tuple(value: object, rule: str) -> tuple[Tensor, ...]:
    if not isinstance(value, tuple) or not all(isinstance(s, Tensor) for s in value):
        raise _fail(rule, f"the state must be a tuple of tensors, got {type(value).__name__}")
    return value


def _tolerance(reference: list[Tensor], dtype: torch.dtype, terms: int, steps: int) -> float:
    """Absolute tolerance: eps * (terms summed per output) * steps * (largest magnitude, at least 1)."""
    scale = max([1.0] + [float(t.abs().max()) for t in reference if t.numel()])
    return torch.finfo(dtype).eps * terms * steps * scale


def _largest_difference(a: list[Tensor], b: list[Tensor]) -> float:
    return max([0.0] + [float((x - y).abs().max()) for x, y in zip(a, b) if x.numel()])


def check_core(core: nn.Module, input_size: int, *, batch_size: int = 3, steps: int = 5) -> None:
    """Raise CoreContractError unless `core` keeps every rule of the core contract:

    1. `output_size` is an int;
    2. `initial_state(B, device)` is a tuple of zero tensors, each batch-first [B, ...];
    3. `core(x, state, episode_starts)` gives y [T, B, output_size] and a state shaped like the initial one;
    4. one call over T steps equals T one-step calls (outputs and final state);
    5. `episode_starts[t, b]` makes row b continue exactly as from a fresh state from x[t, b] on;
    6. and leaves every other row as it would have been without that start.

    Runs under no_grad on the core's device, with random inputs and a random (non-zero) state reached by acting.
    """
    if batch_size < 2 or steps < 3:
        raise ValueError("check_core needs batch_size >= 2 and steps >= 3")
    output_size = getattr(core, "output_size", None)
    if isinstance(output_size, bool) or not isinstance(output_size, int) or output_size <= 0:
        raise _fail("output_size", f"core.output_size must be a positive int, got {output_size!r}")
    device, dtype = _device_dtype(core)
    B, T = batch_size, steps
    generator = torch.Generator().manual_seed(0)

    def inputs(length: int) -> Tensor:
        return torch.randn(length, B, input_size, generator=generator, dtype=dtype).to(device)

    def call(x: Tensor, state: tuple[Tensor, ...], starts: Tensor, rule: str) -> tuple[Tensor, tuple[Tensor, ...]]:
        out = core(x, state, starts)
        if not isinstance(out, tuple) or len(out) != 2:
            raise _fail(rule, "core(x, state, episode_starts) must return (y, new_state)")
        y, new = out
        if not isinstance(y, Tensor) or tuple(y.shape) != (x.shape[0], B, output_size):
            shape = list(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise _fail("output shape", f"y must be [T, B, output_size] = {[x.shape[0], B, output_size]}, "
                                        f"got {shape}")
        new = _state_tuple(new, "state shape")
        if [s.shape for s in new] != [s.shape for s in initial]:
            raise _fail("state shape", f"the new state must have the initial state's shapes "
                                       f"{[list(s.shape) for s in initial]}, got {[list(s.shape) for s in new]}")
        return y, new

    with torch.no_grad():
        initial = _state_tuple(core.initial_state(B, device), "initial state")
        for i, s in enumerate(initial):
            if s.dim() == 0 or s.shape[0] != B:
                raise _fail("initial state", f"state tensor {i} must be batch-first [B={B}, ...], got "
                                             f"{list(s.shape)}")
            if bool((s != 0).any()):
                raise _fail("initial state", f"state tensor {i} must be all zeros")
        no_starts = torch.zeros(T, B, dtype=torch.bool, device=device)
        first = no_starts.clone()
        first[0] = True
        _, warm = call(inputs(T), initial, first, "output shape")  # a non-zero state to start from

        # 4. a whole sequence equals step-by-step calls (with a start in it)
        x = inputs(T)
        starts = no_starts.clone()
        starts[T // 2, 0] = True
        y, final = call(x, warm, starts, "output shape")
        outputs, state = [], warm
        for t in range(T):
            out, state = call(x[t:t + 1], state, starts[t:t + 1], "output shape")
            outputs.append(out)
        tol = _tolerance([y, *final], dtype, input_size + output_size, T)
        difference = _largest_difference([y, *final], [torch.cat(outputs), *state])
        if not difference <= tol:
            raise _fail("sequence = steps", f"one call over {T} steps differs from {T} one-step calls by "
                                            f"{difference:.3g} (tolerance {tol:.3g})")

        # 5. a start resets the row: from x[k] on, row 0 goes on exactly as from a fresh state
        k = T // 2
        fresh_starts = starts[k:].clone()
        fresh_starts[0] = True
        y_fresh, _ = call(x[k:], core.initial_state(B, device), fresh_starts, "output shape")
        difference = _largest_difference([y[k:, 0]], [y_fresh[:, 0]])
        if not difference <= tol:
            raise _fail("episode start", f"after episode_starts[{k}, 0] row 0 differs from a fresh state by "
                                         f"{difference:.3g} (tolerance {tol:.3g}): the start must zero the row's "
                                         "state before x[t] is consumed")

        # 6. ... and touches no other row (nor row 0 before it)
        y_without, final_without = call(x, warm, no_starts, "output shape")
        others = [y[:, 1:], y[:k, 0], *(s[1:] for s in final)]
        others_without = [y_without[:, 1:], y_without[:k, 0], *(s[1:] for s in final_without)]
        difference = _largest_difference(others, others_without)
        if not difference <= tol:
            raise _fail("other rows", f"an episode start in row 0 changed other rows (or row 0 before it) by "
                                      f"{difference:.3g} (tolerance {tol:.3g})")
