"""The exceptions the CLI turns into a single line and an exit code (see README, "Failure behaviour").

- `UserError`: bad input (unknown names, bad numbers, missing or corrupt files): exit 2.
- `RunFailure`: the run cannot go on (non-finite env data, training that keeps diverging): exit 3.
- `OSError` (raised by any write or read): disk full, permission denied, a vanished folder: exit 4, printed with the
  path and the OS reason. `io_path` attaches the path to errors that come without one (file.write gives none).
- `BrokenPipeError`: the reader of stdout went away (`brims-rl compare --dry-run | head`): exit 141, no line, as a
  Unix tool killed by SIGPIPE.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

EXIT_USER = 2
EXIT_RUN = 3
EXIT_IO = 4
EXIT_PIPE = 128 + 13  # what a shell reports for a tool killed by SIGPIPE


class UserError(Exception):
    """Bad input from the user: unknown names, bad numbers, missing or corrupt files."""


class RunFailure(Exception):
    """The run stopped because going on would learn from, or save, non-finite numbers."""


@contextmanager
def io_path(path: Path | str) -> Iterator[None]:
    """Name `path` in any OSError raised inside that names no file itself."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = os.fspath(path)
        raise


def describe_os_error(exc: OSError) -> str:
    """'PATH: reason' for one line ('No space left on device', 'Permission denied', ...)."""
    reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else None) or str(exc) or type(exc).__name__
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    where = " -> ".join(os.fsdecode(p) for p in paths)
    return f"{where}: {reason}" if where else reason


_warned: set[str] = set()


def warn(message: str) -> None:
    """Print "brims-rl: warning: <message>" to stderr, once per message and process."""
    if message not in _warned:
        _warned.add(message)
        print(f"brims-rl: warning: {message}", file=sys.stderr, flush=True)


def warn_speedup_failed(what: str, fallback: str, exc: BaseException) -> None:
    """The one warning of a speed-up that could not be had (a CUDA graph capture, a compile): the run goes on with
    `fallback`, computing the same numbers."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    warn(f"{what} failed, {fallback}: {reason}")
