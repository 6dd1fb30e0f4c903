"""`brims-rl bench` prints the measured figures per core (numbers are not asserted: speed is for reports)."""

from __future__ import annotations

import json

import pytest

from brims_rl.cli import main

MEMORY = "brims_rl.environments.memory:CueMemory-v0"


def test_bench_json_reports_every_stage_per_core(capsys):
    code = main(["bench", "--cores", "ff", "lstm", "--env", MEMORY, "--num-envs", "4", "--updates", "1", "--json",
                 "--set", "ppo.num_steps=16"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device"] == "cpu" and report["env_sps"] > 0 and report["peak_rss_mb"] > 0
    assert set(report["cores"]) == {"ff", "lstm"}
    for core in report["cores"].values():
        for key in ("rollout_sps", "update_sps", "train_sps"):
            assert core[key] > 0
        # end-to-end time is rollout time + update time
        assert 1 / core["train_sps"] == pytest.approx(1 / core["rollout_sps"] + 1 / core["update_sps"])


def test_bench_table_and_bad_core(capsys):
    assert main(["bench", "--cores", "gru", "--env", MEMORY, "--num-envs", "4", "--updates", "1",
                 "--set", "ppo.num_steps=16"]) == 0
    out = capsys.readouterr().out
    assert "env-only" in out and "gru" in out
    assert main(["bench", "--cores", "lstmm", "--env", MEMORY]) == 2
    assert "unknown core 'lstmm'" in capsys.readouterr().err
