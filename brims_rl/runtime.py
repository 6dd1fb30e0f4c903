"""Small run-time helpers every command shares: CLI counts, the torch device, and seeding."""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

from brims_rl.distributed import DistContext
from brims_rl.errors import UserError


def count(text: str) -> int:
    """An integer count for the CLI; accepts 20000, 20_000 and 2e4."""
    try:
        value = float(text.replace("_", ""))
        if value.is_integer():
            return int(value)
    except ValueError:  # not a number (nan and inf fail is_integer)
        pass
    raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")


def positive_count(text: str) -> int:
    """A count for the CLI that must be at least 1 (sizes, repetitions)."""
    value = count(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return value


def resolve_device(name: str, ctx: DistContext | None = None) -> torch.device:
    """auto = CUDA when present; under torchrun, "auto" and "cuda" mean this rank's local GPU."""
    ctx = ctx or DistContext()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and ctx.enabled:
        name = f"cuda:{ctx.local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} requested but CUDA is not available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"device {name} requested but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def seed_everything(seed: int, deterministic: bool, tf32: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic
    # TF32 (on by default for cuDNN convolutions) rounds differently with the batch shape, so a rollout step and its
    # replay could disagree; it stays off unless asked for.
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
