"""Atari random and average-human reference scores (atari57_scores.csv, source cited in the file) and
human-normalised scores: (score - random) / (human - random), so 0 = random play and 1 = the human tester."""

from __future__ import annotations

import csv
import functools
import importlib.resources
import re

DATA_FILE = "atari57_scores.csv"
# The names that mean an Atari game under this library's protocol: "MsPacman", "MsPacman-v5", "ALE/MsPacman-v5",
# "MsPacmanNoFrameskip-v4" (other ids, e.g. "Pong-v4", are plain gymnasium envs with their own protocol).
_GAME = re.compile(r"^(?:ALE/(?P<ale>[A-Za-z0-9_]+)-v5|(?P<game>[A-Za-z0-9_]+?)(?:-v5|NoFrameskip-v4)?)$")


def _key(name: str) -> str:
    return name.replace("_", "").lower()


@functools.lru_cache(maxsize=1)
def reference_scores() -> dict[str, tuple[str, float, float]]:
    """Game key (lower case, no underscores) -> (game name, random score, human score), for the 57 games."""
    text = importlib.resources.files("brims_rl.compare").joinpath(DATA_FILE).read_text()
    rows = csv.DictReader(line for line in text.splitlines() if line and not line.startswith("#"))
    return {_key(row["game"]): (row["game"], float(row["random"]), float(row["human"])) for row in rows}


def reference_for(env: str) -> tuple[str, float, float] | None:
    """(game, random, human) for an env name that means one of the 57 Atari games, else None."""
    match = _GAME.match(env.strip())
    if match is None:
        return None
    return reference_scores().get(_key(match.group("ale") or match.group("game")))


def human_normalised(env: str, score: float) -> float:
    """The human-normalised score of `score` in `env`; KeyError for an env without reference scores."""
    reference = reference_for(env)
    if reference is None:
        raise KeyError(env)
    _, random, human = reference
    return (score - random) / (human - random)
