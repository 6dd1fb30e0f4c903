"""A core option whose default changes must not change old runs: stored configs without it load with the value they
were trained with (config.STORED_DEFAULTS), and every new run records today's value explicitly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import brims_rl.configure as configure
from brims_rl.config import STORED_DEFAULTS, Config
from brims_rl.cores.modular import DEFAULT_TOP_DOWN_SLOTS

OLD_BRIMS_RUN = Path(__file__).resolve().parent.parent / "docs" / "results" / "cpu" / "runs" / "breakout_brims"


def test_an_old_brims_config_without_the_layout_loads_as_trained():
    stored = json.loads((OLD_BRIMS_RUN / "config.json").read_text())
    assert "top_down_slots" not in stored["core"]["options"]  # written before the option existed
    config = Config.load(OLD_BRIMS_RUN / "config.json")
    assert config.core.options["top_down_slots"] == "modules"


def test_a_new_brims_config_records_todays_layout():
    config = configure.compose_config("CueMemory-v0", core="brims", overrides=["core.options.compile=false"])
    assert config.core.options["top_down_slots"] == DEFAULT_TOP_DOWN_SLOTS


def test_a_default_change_keeps_old_runs_and_records_the_new_value(monkeypatch, tmp_path):
    """Whatever today's default: a new run records it, an old stored config keeps "modules"."""
    monkeypatch.setitem(configure.CHANGED_DEFAULTS, "brims", {"top_down_slots": "layer"})
    new = configure.compose_config("CueMemory-v0", core="brims", overrides=["core.options.compile=false"])
    assert new.core.options["top_down_slots"] == "layer"
    new.save(tmp_path / "config.json")
    assert Config.load(tmp_path / "config.json").core.options["top_down_slots"] == "layer"
    assert Config.load(OLD_BRIMS_RUN / "config.json").core.options["top_down_slots"] == "modules"


@pytest.mark.parametrize("given", ["modules", "layer"])
def test_an_explicit_layout_is_never_overwritten(given, tmp_path):
    config = configure.compose_config("CueMemory-v0", core="brims",
                                      overrides=["core.options.compile=false", f"core.options.top_down_slots={given}"])
    config.save(tmp_path / "config.json")
    assert Config.load(tmp_path / "config.json").core.options["top_down_slots"] == given


def test_only_stored_configs_get_the_old_values():
    data = Config().to_dict()
    data["core"] = {"name": "brims", "options": {}}
    assert Config.from_dict(data).core.options == {}
    assert Config.from_dict(data, stored=True).core.options == STORED_DEFAULTS["brims"]
