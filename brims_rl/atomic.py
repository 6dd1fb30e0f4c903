"""Atomic file writes: readers see the old content or the new one, never a partial file."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_bytes_atomic(path: Path, data: bytes | memoryview) -> None:
    """Atomically replace `path` with `data` (temp file, fsync, rename); no temp file survives a failure.

    On failure (disk full, permission denied, vanished folder) the OSError names `path`, not the temp file.
    """
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


def write_text_atomic(path: Path, text: str) -> None:
    """`write_bytes_atomic` for text (UTF-8)."""
    write_bytes_atomic(Path(path), text.encode())
