"""Checkpoints: written atomically, loaded without executing code from the file (weights_only)."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from brims_rl.errors import RunFailure, UserError

FORMAT = "brims-rl-checkpoint/1"
LATEST = "latest.pt"


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename over the target: never a half-written file.

    The folder must exist (a vanished run folder is an error, not silently re-created). On any failure (disk full,
    permission denied) the temp file is removed and the OSError, naming the file, propagates; the old file stays.
    """
    path = Path(path)
    bad = first_nonfinite(payload)
    if bad is not None:
        raise RunFailure(f"{bad} holds NaN or infinite values; {path} was not written (the file on disk, if any, "
                         "is the last good one)")
    buffer = io.BytesIO()  # serialise first: a failed write is then a plain OSError, not a serializer error
    torch.save({"format": FORMAT, **payload}, buffer)
    write_bytes_atomic(path, buffer.getbuffer())


def first_nonfinite(tree: Any, where: str = "checkpoint") -> str | None:
    """The name of the first floating-point tensor in a (nested) dict/list that holds NaN or inf, else None."""
    if isinstance(tree, torch.Tensor):
        return where if tree.is_floating_point() and not bool(torch.isfinite(tree).all()) else None
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    for key, value in items:
        found = first_nonfinite(value, f"{where}[{key!r}]" if where != "checkpoint" else str(key))
        if found is not None:
            return found
    return None


def write_bytes_atomic(path: Path, data: bytes | memoryview) -> None:
    """Atomically replace `path` with `data` (temp file, fsync, rename); no temp file survives a failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):  # name the file being written (write() errors name none, open() the temp)
            exc.filename, exc.filename2 = os.fspath(path), None
        raise


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
