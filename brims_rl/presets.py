"""Agent and environment presets: TOML files in agents/ and envs/, shipped in the wheel, or a user's own file."""

from __future__ import annotations

import importlib.resources
import tomllib
from pathlib import Path
from typing import Any

from brims_rl.errors import UserError

_PACKAGES = {"agent": ("brims_rl.agent_presets", "agents"), "env": ("brims_rl.env_presets", "envs")}


def preset_dir(kind: str):
    """The folder of shipped presets: inside the installed wheel, or the checkout's top-level folder."""
    package, folder = _PACKAGES[kind]
    try:
        return importlib.resources.files(package)
    except ModuleNotFoundError:  # source checkout or editable install: read the top-level folder directly
        return Path(__file__).resolve().parent.parent / folder


def preset_names(kind: str) -> list[str]:
    return sorted(p.name[:-5] for p in preset_dir(kind).iterdir() if p.name.endswith(".toml"))


def protocol_names() -> list[str]:
    return sorted(p.name[:-5] for p in (preset_dir("env") / "protocols").iterdir() if p.name.endswith(".toml"))


PROTOCOL_KEYS = {"description", "source", "total_steps", "env", "model", "ppo", "agents"}


def load_protocol(name: str) -> dict[str, Any]:
    """A published training protocol (envs/protocols/NAME.toml): its [env], [model] and [ppo] settings, run length
    and [agents] table (which agent preset stands for a shipped one under this protocol, e.g. lstm = "lstm-popgym").

    Returns the whole file as a dict with the keys "description", "source", "total_steps", "env", "model", "ppo"
    and "agents" (a missing table is empty).
    """
    resource = preset_dir("env") / "protocols" / f"{name}.toml"
    if "/" in name or not resource.is_file():
        raise UserError(f"unknown protocol {name!r}; choose one of: {', '.join(protocol_names())}")
    data = tomllib.loads(resource.read_text())
    unknown = set(data) - PROTOCOL_KEYS
    if unknown:  # shipped files only, so this is a packaging bug rather than user input
        raise UserError(f"protocol {name} has unknown keys: {', '.join(sorted(unknown))}")
    return {"description": data.get("description", ""), "source": data.get("source", ""),
            "total_steps": int(data["total_steps"]), "env": dict(data.get("env", {})),
            "model": dict(data.get("model", {})), "ppo": dict(data.get("ppo", {})),
            "agents": dict(data.get("agents", {}))}


def load_preset(kind: str, name_or_path: str) -> dict[str, Any]:
    """Read a preset by name (e.g. 'brims') or by path to a .toml file."""
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise UserError(f"{kind} preset file {name_or_path} not found")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read {kind} preset file {name_or_path}: {exc}") from None
    else:
        resource = preset_dir(kind) / f"{name_or_path}.toml"
        if not resource.is_file():
            raise UserError(
                f"unknown {kind} preset {name_or_path!r}; choose one of: {', '.join(preset_names(kind))} or a .toml path"
            )
        text = resource.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{kind} preset {name_or_path} is not valid TOML: {exc}") from None
    data.pop("description", None)
    return data
