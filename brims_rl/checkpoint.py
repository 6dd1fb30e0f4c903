"""Checkpoints: written atomically, loaded without executing code from the file (weights_only)."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from brims_rl.errors import UserError

FORMAT = "brims-rl-checkpoint/1"
LATEST = "latest.pt"


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename over the target: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **payload}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a brims-rl checkpoint; a missing, corrupt or foreign file raises UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path} is not a readable brims-rl checkpoint (it holds objects other than tensors and "
                        "plain data; loading refuses them, so it never runs code from a file)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError):
        raise UserError(f"{path} is not a readable brims-rl checkpoint (truncated or corrupt file)") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a brims-rl checkpoint")
    return payload


def find_checkpoint(run_or_file: Path) -> Path:
    """A checkpoint file itself, or the latest checkpoint of a run folder."""
    path = Path(run_or_file)
    if path.is_dir():
        candidate = path / "checkpoints" / LATEST
        if not candidate.is_file():
            raise UserError(f"{path} has no checkpoint ({candidate} not found)")
        return candidate
    if not path.exists():
        raise UserError(f"{path} not found")
    return path


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint file belongs to (RUN/checkpoints/x.pt -> RUN)."""
    return Path(checkpoint).resolve().parent.parent
