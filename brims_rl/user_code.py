"""Importing a user's module named on the command line (`--env module:Env-v0`, `--core module:factory`)."""

from __future__ import annotations

import importlib
from types import ModuleType

from brims_rl.errors import UserError


def import_user_module(module: str, what: str) -> ModuleType:
    """Import `module` for `what` (e.g. "env 'mymod:Foo-v0'"); any failure is one UserError line."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"cannot import module '{module}' for {what} ({exc})") from None
    except Exception as exc:  # a user's module that fails while importing
        raise UserError(f"importing module '{module}' for {what} failed: {type(exc).__name__}: {exc}") from None
