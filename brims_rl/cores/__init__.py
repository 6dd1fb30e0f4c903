"""Recurrent policy cores behind one contract (docs/cores.md has the contract in full):

    core = make_core(name, input_size, **options)     # a built-in, registered or `module:factory` core
    core.output_size                                  # int
    core.initial_state(batch_size, device)            # tuple of zero tensors, each [B, ...]
    y, state = core(x, state, episode_starts)         # x [T, B, in], episode_starts [T, B] bool, y [T, B, out]

`episode_starts[t, b]` zeroes row b's state before x[t, b] is consumed. A core may add optional features, declared
once in cores/features.py and asked for only through its functions: discrete choices per step that a replay can be
given back (`decision_size`, `last_decisions`, `decisions=`), acting statistics (`diagnostics()`), a module trace
for module views (`module_counts`, `trace_modules()`, `module_trace()`), and what a captured CUDA graph may do with
it (`capturable_diagnostics`, `capturable_replay`). PPO reads none of them; nothing outside a core reads more of it.

`register_core(name, factory)` adds a core (factory(input_size, **options) -> nn.Module); a name of the form
`module:factory` (e.g. `--core my_core:make_elman`) is imported and registered under that full name on first use.
A run records a registered core by the `module:factory` name of its factory when the factory can be imported from
its module (`recorded_name`), so that another process rebuilds it.
Every core that is not built in is checked against the contract (contract.check_core) each time it is made.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Callable

import torch.nn as nn

from brims_rl.cores.contract import CoreContractError, check_core
from brims_rl.cores.features import diagnostics
from brims_rl.cores.feedforward import FeedForwardCore
from brims_rl.cores.modular import DEFAULT_TOP_DOWN_SLOTS, ModularCore, RIMsCore
from brims_rl.cores.rnn import GRUCore, LSTMCore
from brims_rl.errors import UserError
from brims_rl.user_code import FactoryRegistry

CoreFactory = Callable[..., nn.Module]  # factory(input_size, **options) -> core

_BUILT_IN: dict[str, CoreFactory] = {
    "ff": FeedForwardCore,
    "lstm": LSTMCore,
    "gru": GRUCore,
    "rims": RIMsCore,
    "brims": ModularCore,
}
_registry = FactoryRegistry("core", _BUILT_IN, "factory(input_size, **options) -> nn.Module")
# Today's value of every built-in core option whose default changed (config.STORED_DEFAULTS holds the value older
# runs were trained with): a new run records it explicitly (configure.record_changed_defaults).
CURRENT_DEFAULTS: dict[str, dict[str, Any]] = {"brims": {"top_down_slots": DEFAULT_TOP_DOWN_SLOTS}}


def core_names() -> list[str]:
    """Every registered core name: the built-in ones first, then those registered since, in order."""
    return _registry.names()


def is_built_in(name: str) -> bool:
    return _registry.is_built_in(name)


def register_core(name: str, factory: CoreFactory, *, overwrite: bool = False) -> None:
    """Make `factory(input_size, **options) -> nn.Module` available as core `name` (config core.name, --core).
    A name already registered raises ValueError unless `overwrite`."""
    _registry.register(name, factory, overwrite=overwrite)


def require_core(name: str) -> None:
    """Raise UserError for a name that is not a core, suggesting close ones; a `module:factory` name is imported
    and registered under that full name."""
    _registry.require(name)


def require_stored_core(name: str, where: str) -> None:
    """As require_core, for the core a stored run (`where`: its folder or checkpoint) was trained with: an unknown
    name says how to make it loadable in this process."""
    if name in _registry.factories or ":" in name:
        require_core(name)
        return
    raise UserError(f"{where} was trained with core {name!r}, which is not registered in this process: register it "
                    f"first (br.register_core({name!r}, factory)), or train with a factory defined in an importable "
                    "module, which the run records as module:factory (--core my_pkg.my_module:make_core) so that "
                    "any process can rebuild it")


def recorded_name(name: str) -> str:
    """The name a run records for core `name`: `module:factory` for a registered factory that can be imported from
    its module under its own name (so that a new process can rebuild the core), else `name` itself."""
    if name in _BUILT_IN or ":" in name or name not in _registry.factories:
        return name
    factory = _registry.factories[name]
    module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        return name
    try:
        found = functools.reduce(getattr, qualname.split("."), importlib.import_module(module))
    except (ImportError, AttributeError):
        return name
    return f"{module}:{qualname}" if found is factory else name


def is_recorded_loadably(name: str) -> bool:
    """Whether a new process can rebuild core `name` from the name alone (built in, or module:factory)."""
    return name in _BUILT_IN or ":" in name


def make_core(name: str, input_size: int, **options: Any) -> nn.Module:
    """Build the core registered under `name`; unknown names, options it does not take and bad options raise
    UserError. A core that is not built in must pass check_core (else UserError naming the broken rule)."""
    require_core(name)
    factory = _registry.factories[name]
    built_in = is_built_in(name)
    _registry.check_options(name, options)
    try:
        core = factory(input_size, **options)
    except TypeError as exc:
        if built_in:
            raise UserError(f"bad options for core {name!r}: {exc}") from None
        raise UserError(f"core {name!r} failed to build: TypeError: {exc}") from None
    except Exception as exc:
        if built_in:
            raise  # ValueError for bad option values: the caller words it
        raise UserError(f"core {name!r} failed to build: {type(exc).__name__}: {exc}") from None
    if built_in:
        return core
    if not isinstance(core, nn.Module):
        raise UserError(f"core {name!r}: the factory must return a torch.nn.Module, got {type(core).__name__}")
    try:
        check_core(core, input_size)
    except CoreContractError as exc:
        raise UserError(f"core {name!r} breaks the core contract ({exc})") from None
    except Exception as exc:
        raise UserError(f"core {name!r} failed the contract check: {type(exc).__name__}: {exc}") from None
    diagnostics(core)  # drop what the check gathered (diagnostics() returns and clears)
    return core


__all__ = ["CURRENT_DEFAULTS", "CoreContractError", "check_core", "core_names", "is_recorded_loadably", "make_core",
           "recorded_name", "register_core", "require_core", "require_stored_core"]
