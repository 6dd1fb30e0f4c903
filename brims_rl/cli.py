"""The single entry point: `brims-rl <command> ...` (also `python -m brims_rl`)."""

from __future__ import annotations

import argparse
import importlib
import sys

from brims_rl.errors import UserError

# Each command module defines add_parser(subparsers), which registers the command with set_defaults(func=run).
COMMANDS = ("train", "evaluate", "compare", "bench")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        self.exit(2, f"brims-rl: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="brims-rl", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"brims_rl.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"brims-rl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C during training, or one outside it
        print("brims-rl: interrupted", file=sys.stderr)
        return 130
