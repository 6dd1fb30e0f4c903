"""Composing a run's Config the way `brims-rl train` does:
defaults <- env preset (Atari) <- protocol <- agent preset <- flags <- `--set` overrides."""

from __future__ import annotations

import copy
from typing import Any

from brims_rl.config import Config, apply_overrides, validate
from brims_rl.cores import require_core
from brims_rl.environments import resolve_env
from brims_rl.errors import UserError
from brims_rl.presets import load_preset, load_protocol, preset_names

Flags = dict[tuple[str, ...], Any]  # config path -> value (None: not given)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Merge `update` into `base` in place, table by table; a core's `options` table is replaced whole."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "options":
            merge(base[key], value)
        else:
            base[key] = value
    return base


def compose_config(env: str | None, core: str | None = None, agent: str | None = None, flags: Flags | None = None,
                   overrides: list[str] | tuple[str, ...] = (), protocol: str | None = None) -> Config:
    """Defaults <- env preset (Atari) <- protocol <- agent preset (`agent`, or the preset named like `core`) <- flags
    <- overrides. A protocol's [env] table applies to Atari games only; its [ppo] and run length to every env.
    A core named `module:factory` is imported and registered (cores.require_core)."""
    data = Config().to_dict()
    data["env"]["id"] = env_id = env or data["env"]["id"]
    is_atari = resolve_env(env_id).kind == "atari"
    if is_atari:
        merge(data, {"env": load_preset("env", "atari")["env"]})
    spec = load_protocol(protocol or "default")
    merge(data, {"env": spec["env"]} if is_atari else {})
    merge(data, {"ppo": spec["ppo"], "total_steps": spec["total_steps"], "protocol": protocol or "default",
                 "protocol_settings": copy.deepcopy(spec)})
    if core is not None:
        require_core(core)
    agent = agent or (core if core in preset_names("agent") else None) or "lstm"
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
    config = Config.from_dict(apply_overrides(data, list(overrides)))
    require_core(config.core.name)  # --set core.name=... or the agent preset may name it
    validate(config)
    return config
