"""Environment names: Atari games (any backend) or gymnasium ids, with close-match suggestions for typos."""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass

import gymnasium as gym

from brims_rl.errors import UserError
from brims_rl.user_code import import_user_module


@dataclass(frozen=True)
class EnvSpec:
    """What an env name resolved to.

    kind "atari": `name` is the game in CamelCase ("MsPacman"), `envpool_task` the envpool task id ("MsPacman-v5",
    None when envpool does not ship the game) and `ale_game` the ale-py ROM id ("ms_pacman").
    kind "gym": `gym_id` is the gymnasium id; `module` was imported first when the name had the `module:` form.
    """

    kind: str
    name: str
    envpool_task: str | None = None
    ale_game: str | None = None
    gym_id: str | None = None
    module: str | None = None

    @property
    def is_atari(self) -> bool:
        """An Atari game: built by the Atari backends under the env.* protocol settings (ATARI_SETTINGS)."""
        return self.kind == "atari"


def _camel(rom_id: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in rom_id.split("_"))


def _key(name: str) -> str:
    return name.replace("_", "").lower()


@functools.lru_cache(maxsize=1)
def atari_games() -> dict[str, tuple[str, str | None, str | None]]:
    """Lower-cased game key -> (CamelCase name, envpool task id or None, ale-py ROM id or None)."""
    ale_ids: list[str] = []
    try:
        from ale_py import roms

        ale_ids = list(roms.get_all_rom_ids())
    except ImportError:
        pass
    envpool_tasks: set[str] = set()
    try:
        from envpool.registration import registry

        envpool_tasks = {task for task, entry in registry.specs.items() if entry[0] == "envpool.atari"}
    except ImportError:
        pass
    games: dict[str, tuple[str, str | None, str | None]] = {}
    for rom in ale_ids:
        name = _camel(rom)
        task = f"{name}-v5"
        games[_key(name)] = (name, task if task in envpool_tasks else None, rom)
    for task in envpool_tasks:
        name = task[: -len("-v5")]
        if _key(name) not in games:
            games[_key(name)] = (name, task, None)
    return games


# A bare game name, envpool's "Game-v5", gymnasium's "ALE/Game-v5" and the classic "GameNoFrameskip-v4" all mean the
# game under this library's protocol; other legacy ids ("Pong-v4", "ALE/Pong-ram-v5") stay gymnasium ids.
_ATARI_FORMS = re.compile(r"^(?:ALE/(?P<ale>[A-Za-z0-9_]+)-v5|(?P<game>[A-Za-z0-9_]+?)(?:-v5|NoFrameskip-v4)?)$")


def _atari_spec(name: str) -> EnvSpec | None:
    match = _ATARI_FORMS.match(name)
    if match is None:
        return None
    game = match.group("ale") or match.group("game")
    entry = atari_games().get(_key(game))
    if entry is None:
        return None
    camel, task, rom = entry
    return EnvSpec(kind="atari", name=camel, envpool_task=task, ale_game=rom)


def _is_ale_gym_id(env_id: str) -> bool:
    entry_point = gym.registry[env_id].entry_point
    return "ale_py" in str(entry_point)


def suggestions(name: str, limit: int = 5) -> list[str]:
    """Close matches among Atari game names and registered (non-ALE) gymnasium ids."""
    candidates = [camel for camel, _, _ in atari_games().values()]
    candidates += [env_id for env_id in gym.registry if not _is_ale_gym_id(env_id)]
    by_lower: dict[str, str] = {}
    for candidate in candidates:
        by_lower.setdefault(candidate.lower(), candidate)
    matches = difflib.get_close_matches(name.lower(), list(by_lower), n=limit, cutoff=0.6)
    return [by_lower[m] for m in matches]


def _unknown(name: str, shown: str | None = None) -> UserError:
    close = suggestions(name)
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    return UserError(f"unknown env '{shown or name}'{hint}")


POPGYM_PREFIX = "popgym-"
POPGYM_INSTALL = 'pip install "brims-rl[popgym]"'


def is_popgym_id(name: str) -> bool:
    """Whether an env name is a POPGym id (`popgym-RepeatPreviousEasy-v0`, also in the `module:` form)."""
    return isinstance(name, str) and name.strip().rpartition(":")[2].startswith(POPGYM_PREFIX)


def import_popgym() -> None:
    """Import popgym, which registers its `popgym-*` ids with gymnasium; UserError (one line) when it is missing."""
    try:
        import popgym  # noqa: F401
    except ImportError:
        raise UserError(f"POPGym envs need the popgym package: {POPGYM_INSTALL}") from None


MINIGRID_PREFIXES = ("MiniGrid-", "BabyAI-")
MINIGRID_INSTALL = 'pip install "brims-rl[minigrid]"'


def is_minigrid_id(name: str) -> bool:
    """Whether an env name is a MiniGrid or BabyAI id (`MiniGrid-MultiRoom-N4-S5-v1`, also in the `module:` form)."""
    return isinstance(name, str) and name.strip().rpartition(":")[2].startswith(MINIGRID_PREFIXES)


def import_minigrid() -> None:
    """Import minigrid, which registers its `MiniGrid-*` and `BabyAI-*` ids; UserError (one line) when missing."""
    try:
        import minigrid  # noqa: F401
    except ImportError:
        raise UserError(f"MiniGrid envs need the minigrid package: {MINIGRID_INSTALL}") from None


def resolve_env(name: str) -> EnvSpec:
    """Resolve a user's env name to an Atari game or a gymnasium id; UserError (one line) when unknown."""
    if not isinstance(name, str) or not name.strip():
        raise UserError("env name must be a non-empty string")
    name = name.strip()
    if name.startswith(POPGYM_PREFIX):  # popgym registers its ids when imported
        import_popgym()
    if name.startswith(MINIGRID_PREFIXES):  # so does minigrid
        import_minigrid()
    if ":" in name:
        module, _, env_id = name.partition(":")
        if not module or not env_id:
            raise UserError(f"env '{name}' must have the form module:EnvId-v0")
        import_user_module(module, f"env '{name}'")
        if env_id in gym.registry:
            return EnvSpec(kind="gym", name=env_id, gym_id=env_id, module=module)
        atari = _atari_spec(env_id)
        if atari is not None:
            return atari
        raise _unknown(env_id, shown=name)
    atari = _atari_spec(name)
    if atari is not None:
        return atari
    if name in gym.registry:
        return EnvSpec(kind="gym", name=name, gym_id=name)
    raise _unknown(name)
