"""Checks shared by the core tests."""

from __future__ import annotations

import torch


def assert_sequence_matches_step_loop(core, x: torch.Tensor, state: tuple, starts: torch.Tensor) -> None:
    """One call over T steps gives the outputs and final state of T one-step calls (resets included)."""
    y, final = core(x, state, starts)
    assert y.shape == (*x.shape[:2], core.output_size)
    outputs, s = [], state
    for t in range(x.shape[0]):
        out, s = core(x[t:t + 1], s, starts[t:t + 1])
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs), y, atol=1e-5, rtol=1e-5)
    for a, b in zip(s, final):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
