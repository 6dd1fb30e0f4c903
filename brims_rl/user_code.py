"""Importing a user's module named on the command line (`--env module:Env-v0`, `--core module:factory`), and the
registry of factories by name that cores and encoders share."""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
from types import ModuleType
from typing import Any, Callable

from brims_rl.errors import UserError


def import_user_module(module: str, what: str) -> ModuleType:
    """Import `module` for `what` (e.g. "env 'mymod:Foo-v0'"); any failure is one UserError line."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"cannot import module '{module}' for {what} ({exc})") from None
    except Exception as exc:  # a user's module that fails while importing
        raise UserError(f"importing module '{module}' for {what} failed: {type(exc).__name__}: {exc}") from None


class FactoryRegistry:
    """A registry of factories by name, with the built-in ones first, as cores and encoders have: `register` adds
    one, `require` accepts a known name or imports a `module:factory` name (and registers it under that full name),
    and refuses anything else with close matches.

    `kind`: what the factories make ("core", "encoder"); `signature`: how one is called, for messages;
    `reserved`: names that are valid without being registered (an encoder's `auto`)."""

    def __init__(self, kind: str, built_in: dict[str, Callable[..., Any]], signature: str,
                 reserved: tuple[str, ...] = ()) -> None:
        self.kind, self.signature, self.reserved = kind, signature, reserved
        self.built_in = dict(built_in)
        self.factories: dict[str, Callable[..., Any]] = dict(built_in)

    def names(self) -> list[str]:
        """The reserved names, the built-in factories, then those registered since, in order."""
        return [*self.reserved, *self.factories]

    def is_built_in(self, name: str) -> bool:
        return name in self.built_in and self.factories.get(name) is self.built_in[name]

    def register(self, name: str, factory: Callable[..., Any], *, overwrite: bool = False) -> None:
        """ValueError for an empty or reserved name, or a taken one without `overwrite`; TypeError for a factory
        that is not callable."""
        if not isinstance(name, str) or not name.strip() or name in self.reserved:
            other = f" other than {', '.join(map(repr, self.reserved))}" if self.reserved else ""
            raise ValueError(f"a{'n' if self.kind[0] in 'aeiou' else ''} {self.kind} name must be a non-empty "
                             f"string{other}, got {name!r}")
        if not callable(factory):
            raise TypeError(f"the factory of {self.kind} {name!r} must be callable, got {type(factory).__name__}")
        if name in self.factories and not overwrite:
            raise ValueError(f"a{'n' if self.kind[0] in 'aeiou' else ''} {self.kind} named {name!r} is already "
                             "registered (pass overwrite=True to replace it)")
        self.factories[name] = factory

    def require(self, name: str, hint: str = "") -> None:
        """UserError for a name that is not known, suggesting close ones (and `hint`); a `module:factory` name is
        imported and registered under that full name."""
        if name in self.reserved or name in self.factories:
            return
        if ":" in name:
            self.register(name, self.import_factory(name))
            return
        raise UserError(f"unknown {self.kind} {name!r}; {self.close_names(name)}{hint}")

    def close_names(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=3)
        return f"did you mean {' or '.join(close)}?" if close else f"choose one of: {', '.join(self.names())}"

    def import_factory(self, name: str) -> Callable[..., Any]:
        """The callable a `module:attribute` name points to (the module imported as `--env module:Env-v0` is)."""
        module_name, _, attribute = name.partition(":")
        what = f"{self.kind} '{name}'"
        if not module_name or not attribute:
            raise UserError(f"{what} must have the form module:factory")
        module = import_user_module(module_name, what)
        try:
            factory = functools.reduce(getattr, attribute.split("."), module)
        except AttributeError:
            raise UserError(f"module '{module_name}' has no attribute '{attribute}' ({what})") from None
        if not callable(factory):
            raise UserError(f"{what} is not callable (a {self.signature})")
        return factory

    def check_options(self, name: str, options: dict[str, Any]) -> None:
        """UserError naming the options that factory `name` does not take, with those it does, read from its
        signature (after its first argument). Silent when the options fit or the signature cannot tell."""
        try:
            signature = inspect.signature(self.factories[name])
            signature.bind(None, **options)
            return
        except ValueError:  # no signature to read (some builtins)
            return
        except TypeError:  # the options do not fit: say which, if it is their names
            pass
        parameters = list(signature.parameters.values())[1:]
        known = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = [key for key in options if key not in known]
        if unknown and not any(p.kind is p.VAR_KEYWORD for p in parameters):
            takes = f"its options are: {', '.join(known)}" if known else "it takes none"
            raise UserError(f"{self.kind} {name!r} has no option{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(map(repr, unknown))}; {takes}")
