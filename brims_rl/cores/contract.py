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
    4. states follow the module: `initial_state(B, device)` builds them on `device`, in the dtype of the core's
       floating-point parameters, and `core(...)` returns them on the same device in the same dtypes;
    5. one call over T steps equals T one-step calls (outputs and final state);
    6. `episode_starts[t, b]` makes row b continue exactly as from a fresh state from x[t, b] on;
    7. the reset applies before x[t, b] is read: from x[t, b] on, row b's outputs are those of the initial state with
       no start at all (a core that reads x[t] and only then resets fails this);
    8. a start leaves every other row as it would have been without it;
    9. no gradient flows through a reset: row b's outputs from t on and its final state have zero gradient with
       respect to its state before the start.

    Rules 1-8 run under no_grad, rule 9 with gradients, on the core's device, with random inputs and a random
    (non-zero) state reached by acting.
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
        for i, (s, s0) in enumerate(zip(new, initial)):
            if s.device != s0.device or s.dtype != s0.dtype:
                raise _fail("state device and dtype", f"state tensor {i} comes back as {s.dtype} on {s.device}, "
                                                      f"but the initial state has {s0.dtype} on {s0.device}")
        return y, new

    with torch.no_grad():
        initial = _state_tuple(core.initial_state(B, device), "initial state")
        for i, s in enumerate(initial):
            if s.dim() == 0 or s.shape[0] != B:
                raise _fail("initial state", f"state tensor {i} must be batch-first [B={B}, ...], got "
                                             f"{list(s.shape)}")
            if bool((s != 0).any()):
                raise _fail("initial state", f"state tensor {i} must be all zeros")
        _check_state_placement(core, initial, device, dtype, B)
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

        # 7. the reset comes before x[k] is read: row 0 from x[k] on is the initial state's, with no start at all
        y_plain, _ = call(x[k:], core.initial_state(B, device), no_starts[k:], "output shape")
        difference = _largest_difference([y[k:, 0]], [y_plain[:, 0]])
        if not difference <= tol:
            raise _fail("reset before input", f"after episode_starts[{k}, 0] row 0 differs by {difference:.3g} "
                                              f"(tolerance {tol:.3g}) from the initial state fed x[{k}:] without a "
                                              "start: the reset must apply before x[t] is read, not after")

        # 8. ... and touches no other row (nor row 0 before it)
        y_without, final_without = call(x, warm, no_starts, "output shape")
        others = [y[:, 1:], y[:k, 0], *(s[1:] for s in final)]
        others_without = [y_without[:, 1:], y_without[:k, 0], *(s[1:] for s in final_without)]
        difference = _largest_difference(others, others_without)
        if not difference <= tol:
            raise _fail("other rows", f"an episode start in row 0 changed other rows (or row 0 before it) by "
                                      f"{difference:.3g} (tolerance {tol:.3g})")

    # 9. no gradient reaches row 0's state before its start, from its outputs from the start on or its final state
    _check_reset_stops_gradients(core, x, warm, starts, no_starts, k, dtype, input_size + output_size, T)


def _check_state_placement(core: nn.Module, initial: tuple[Tensor, ...], device: torch.device, dtype: torch.dtype,
                           batch_size: int) -> None:
    """Rule 4 for the initial state: on `device`, floating-point tensors in the parameters' dtype; and built on
    whatever device initial_state is given (probed on the meta device, which needs no hardware; a core that
    cannot build its state there is not judged by the probe)."""
    for i, s in enumerate(initial):
        if s.device != torch.device(device):
            raise _fail("state device and dtype", f"initial_state(B, device={device}) put state tensor {i} on "
                                                  f"{s.device}: build the state on the device given")
        if s.is_floating_point() and s.dtype != dtype:
            raise _fail("state device and dtype", f"state tensor {i} is {s.dtype}, but the core's parameters are "
                                                  f"{dtype}: build the state in the parameters' dtype")
    try:
        probe = core.initial_state(batch_size, torch.device("meta"))
    except Exception:
        return
    for i, s in enumerate(probe if isinstance(probe, tuple) else ()):
        if isinstance(s, Tensor) and s.device.type != "meta":
            raise _fail("state device and dtype", f"initial_state(B, device=meta) put state tensor {i} on "
                                                  f"{s.device}: build the state on the device given")


def _check_reset_stops_gradients(core: nn.Module, x: Tensor, warm: tuple[Tensor, ...], starts: Tensor,
                                 no_starts: Tensor, k: int, dtype: torch.dtype, terms: int, steps: int) -> None:
    """Rule 9: the gradient of row 0's outputs from its start at k on (and of its final state), with respect to row
    0's state before the start, is zero up to rounding of the gradient that flows without the start."""
    floats = [i for i, s in enumerate(warm) if s.is_floating_point()]
    if not floats:
        return
    generator = torch.Generator().manual_seed(1)

    def gradient(episode_starts: Tensor) -> list[Tensor]:
        leaf = tuple(s.detach().clone().requires_grad_(i in floats) for i, s in enumerate(warm))
        with torch.enable_grad():
            y, final = core(x, leaf, episode_starts)
            weights = torch.randn(y[k:, 0].shape, generator=generator, dtype=y.dtype).to(y.device)
            objective = (y[k:, 0] * weights).sum()
            for s in final:
                if s.is_floating_point():
                    objective = objective + s[0].sum()
            if not objective.requires_grad:
                return []
            grads = torch.autograd.grad(objective, [leaf[i] for i in floats], allow_unused=True)
        return [g[0] for g in grads if g is not None]

    leaked = gradient(starts)
    flowing = gradient(no_starts)
    tol = _tolerance(flowing, dtype, terms, steps)
    largest = max([0.0] + [float(g.abs().max()) for g in leaked if g.numel()])
    if not largest <= tol:
        raise _fail("reset stops gradients", f"after episode_starts[{k}, 0] a gradient of up to {largest:.3g} "
                                             f"(tolerance {tol:.3g}) reaches row 0's state from before the start: "
                                             "the reset must cut the gradient (e.g. torch.where(start, 0, state)), "
                                             "not only zero the value")
