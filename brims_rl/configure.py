"""Composing a run's Config the way `brims-rl train` does:
defaults <- env preset (Atari) <- protocol <- agent preset <- flags <- `--set` overrides.

A protocol's [env] keys are Atari preprocessing and reach Atari games only, except `env.num_envs`, which reaches every
env (POPGym's protocol sets 64), and `env.previous_action`, which reaches POPGym ids; its [model], [ppo] and run
length reach every env. Its [agents] table names the preset that stands for a shipped one under it (the popgym
protocol's `lstm = "lstm-popgym"`): `--core lstm` (or no core) then builds that preset, an explicit `--agent` is
taken as given."""

from __future__ import annotations

import copy
from typing import Any

from brims_rl.config import Config, apply_overrides
from brims_rl.cores import CURRENT_DEFAULTS, recorded_name, require_core
from brims_rl.encoders import require_encoder
from brims_rl.environments import ATARI_SETTINGS, is_popgym_id, resolve_env
from brims_rl.errors import UserError
from brims_rl.presets import load_preset, load_protocol, preset_names

Flags = dict[tuple[str, ...], Any]  # config path -> value (None: not given)
# The keys of a protocol's [env] table that apply to every env; the others (frame stack, sticky actions, episode
# cap, ...) are Atari preprocessing and apply to Atari games only.
EVERY_ENV_KEYS = frozenset({"num_envs"})
POPGYM_ENV_KEYS = frozenset({"previous_action"})  # ... and those that apply to POPGym ids
# Today's values of the core options listed in config.STORED_DEFAULTS: every new run records them explicitly, so
# that loading it never mistakes it for a run stored before the default changed.
CHANGED_DEFAULTS: dict[str, dict[str, Any]] = CURRENT_DEFAULTS


def record_changed_defaults(config: Config) -> Config:
    """Write today's value of every changed-default option the core's options leave out (in place)."""
    for key, value in CHANGED_DEFAULTS.get(config.core.name, {}).items():
        config.core.options.setdefault(key, value)
    return config


def _reaches(key: str, env_id: str, is_atari: bool) -> bool:
    """Whether a protocol's env.<key> applies to this env (see the module docstring)."""
    if key in EVERY_ENV_KEYS:
        return True
    if key in POPGYM_ENV_KEYS:
        return is_popgym_id(env_id)
    return is_atari


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Merge `update` into `base` in place, table by table; a core's `options` table is replaced whole."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "options":
            merge(base[key], value)
        else:
            base[key] = value
    return base


FLAG_NAMES = {("env", "backend"): "--env-backend"}  # how the CLI spells a flag whose setting it sets


def check_env_settings(env_id: str, flags: Flags, overrides: list[str] | tuple[str, ...]) -> None:
    """UserError when flags or `--set` overrides give an env setting that `env_id` does not read (the Atari protocol
    settings, ATARI_SETTINGS, on a gymnasium env)."""
    if resolve_env(env_id).is_atari:
        return
    given = [FLAG_NAMES.get(path, f"env.{path[1]}") for path, value in flags.items()
             if value is not None and len(path) == 2 and path[0] == "env" and path[1] in ATARI_SETTINGS]
    given += [f"env.{key.split('.')[1]}" for key in (item.partition("=")[0].strip() for item in overrides)
              if key.startswith("env.") and key.count(".") == 1 and key.split(".")[1] in ATARI_SETTINGS]
    if given:
        raise UserError(f"{', '.join(dict.fromkeys(given))} {'applies' if len(given) == 1 else 'apply'} to Atari "
                        f"games only; {env_id} is a gymnasium env, which reads env.id, env.num_envs and env.kwargs "
                        "(keyword arguments of gym.make)")


def compose_config(env: str | None, core: str | None = None, agent: str | None = None, flags: Flags | None = None,
                   overrides: list[str] | tuple[str, ...] = (), protocol: str | None = None) -> Config:
    """Defaults <- env preset (Atari) <- protocol <- agent preset (`agent`, or the preset named like `core`, or the
    protocol's stand-in for it) <- flags <- overrides. A protocol's [env] table applies to Atari games only, except
    `num_envs` (EVERY_ENV_KEYS), which applies to every env, and `previous_action` (POPGYM_ENV_KEYS), which applies
    to POPGym ids; its [model] and [ppo] tables and run length apply to every env; flags and overrides that set an
    Atari setting for another env are refused (check_env_settings).
    A core named `module:factory` is imported and registered (cores.require_core); a registered core is recorded by
    its importable module:factory name where it has one (cores.recorded_name). The numbers are not checked here:
    config.validate does that once, when a run starts."""
    data = Config().to_dict()
    data["env"]["id"] = env_id = env or data["env"]["id"]
    check_env_settings(env_id, flags or {}, overrides)
    is_atari = resolve_env(env_id).is_atari
    if is_atari:
        merge(data, {"env": load_preset("env", "atari")["env"]})
    spec = load_protocol(protocol or "default")
    env_table = {k: v for k, v in spec["env"].items() if _reaches(k, env_id, is_atari)}
    merge(data, {"env": copy.deepcopy(env_table), "model": copy.deepcopy(spec["model"])})
    merge(data, {"ppo": spec["ppo"], "total_steps": spec["total_steps"], "protocol": protocol or "default",
                 "protocol_settings": copy.deepcopy(spec)})
    if core is not None:
        require_core(core)
    if agent is None:  # the preset of the core's name (lstm without a core), or the protocol's stand-in for it
        agent = core if core in preset_names("agent") else "lstm"
        agent = spec["agents"].get(agent, agent)
    preset = load_preset("agent", agent)
    unknown = set(preset) - {"core", "ppo", "model"}
    if unknown:
        raise UserError(f"agent preset {agent} has unknown tables: {', '.join(sorted(unknown))}")
    merge(data, preset)
    data["agent"] = agent
    if core is not None and core != data["core"]["name"]:
        data["core"] = {"name": core, "options": {}}
    for path, value in (flags or {}).items():
        if value is not None:
            node = data
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = value
    config = record_changed_defaults(Config.from_dict(apply_overrides(data, list(overrides))))
    require_core(config.core.name)  # --set core.name=... or the agent preset may name it
    require_encoder(config.model.encoder)  # unknown: one line; module:factory is imported and registered
    config.core.name = recorded_name(config.core.name)
    return config
