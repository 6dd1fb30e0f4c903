"""The single entry point: `brims-rl <command> ...` (also `python -m brims_rl`)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import threading

from brims_rl import __version__
from brims_rl.errors import EXIT_IO, EXIT_PIPE, EXIT_RUN, EXIT_USER, RunFailure, UserError, describe_os_error

# command -> its module, which defines add_parser(subparsers) registering the command with set_defaults(func=run).
# (train's is train_cli: `brims_rl.train` must stay the API function.)
COMMANDS = {"train": "brims_rl.train_cli", "evaluate": "brims_rl.evaluation", "compare": "brims_rl.compare",
            "bench": "brims_rl.bench"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        self.exit(2, f"brims-rl: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="brims-rl", description=__doc__)
    parser.add_argument("--version", action="version", version=f"brims-rl {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in COMMANDS.values():
        importlib.import_module(module).add_parser(subparsers)
    return parser


def _quiet_writer_thread_errors(args: threading.ExceptHookArgs) -> None:
    """TensorBoard's writer thread re-raises its I/O error in the main thread at the next write, flush or close,
    where it becomes the one error line; its own traceback would only repeat it."""
    if issubclass(args.exc_type, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
        return
    _default_thread_hook(args)


_default_thread_hook = threading.excepthook


def _discard_stdout() -> None:
    """Point stdout's file descriptor at /dev/null, so that Python's flush at exit does not fail on the closed pipe
    and print its own message."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, AttributeError, ValueError):  # stdout without a file descriptor: nothing will flush to a pipe
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    threading.excepthook = _quiet_writer_thread_errors
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"brims-rl: error: {exc}", file=sys.stderr)
        return EXIT_USER
    except RunFailure as exc:
        print(f"brims-rl: error: {exc}", file=sys.stderr)
        return EXIT_RUN
    except BrokenPipeError:  # stdout's reader went away (`... --dry-run | head`): stop quietly, like other tools
        _discard_stdout()
        return EXIT_PIPE
    except OSError as exc:  # disk full, permission denied, a vanished folder: anywhere, in any command
        print(f"brims-rl: error: I/O error: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_IO
    except KeyboardInterrupt:  # a second Ctrl-C during training, or one outside it
        print("brims-rl: interrupted", file=sys.stderr)
        return 130
    finally:
        threading.excepthook = _default_thread_hook
