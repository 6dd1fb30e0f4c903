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
    err = capsys.readouterr().err
    assert "unknown core or agent preset 'lstmm'" in err and "lstm" in err


def test_bench_takes_agent_presets_and_bare_cores(capsys):
    """A preset name measures the preset's core and options (as train --agent); a bare core name, the core."""
    code = main(["bench", "--agents", "gru-512", "ff", "--env", MEMORY, "--num-envs", "2", "--updates", "1",
                 "--json", "--set", "ppo.num_steps=8", "--set", "ppo.num_minibatches=1"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)["cores"]
    assert list(report) == ["gru-512", "ff"]
    assert report["gru-512"]["core"] == "gru"
    assert report["gru-512"]["core_parameters"] == 3 * (512 * 512 + 512 * 512 + 2 * 512)  # torch GRU(512 -> 512)
    assert report["ff"]["core"] == "ff" and report["ff"]["core_parameters"] == 512 * 128 + 128


def test_bench_measures_every_shipped_preset_by_default(monkeypatch):
    from brims_rl import bench
    from brims_rl.presets import preset_names

    measured = {}

    def fake_measure(configs, updates):
        measured.update(configs)
        return {name: {"core": c.core.name, "parameters": 1, "core_parameters": 1, "rollout_sps": 1.0,
                       "update_sps": 1.0, "train_sps": 0.5} for name, c in configs.items()}

    monkeypatch.setattr(bench, "measure_cores", fake_measure)
    assert main(["bench", "--env", MEMORY, "--num-envs", "4", "--json"]) == 0
    assert list(measured) == preset_names("agent")
    assert {"rims-paper", "brims-paper", "gru-512", "lstm-512"} <= set(measured)
    assert measured["brims-paper"].core.options["module_size"] == 85


def test_bench_makes_room_for_every_compiled_cores_graphs_and_restores_the_limit():
    import torch._dynamo

    from brims_rl.cores.compile import room_for_compiled_cores

    config = torch._dynamo.config
    with config.patch(recompile_limit=8):  # torch's own scoped patching: the process's limit is restored after
        with room_for_compiled_cores(1):
            assert config.recompile_limit == 8
        with room_for_compiled_cores(4):  # e.g. rims, brims, rims-paper and brims-paper in one bench
            assert config.recompile_limit == 32
        assert config.recompile_limit == 8


@pytest.mark.parametrize("args,named", [(["--input-size", "0"], "argument --input-size: must be a positive whole "
                                                                  "number, got '0'"),
                                        (["--input-size", "-3"], "argument --input-size: must be a positive whole number"),
                                        (["--rounds", "0"], "argument --rounds: must be a positive whole number"),
                                        (["--start-every", "0"], "--start-every must be at least 1, got 0.0")])
def test_bench_shape_mode_refuses_sizes_below_one_in_one_line(args, named, capsys):
    try:
        code = main(["bench", "--minibatch", "2,4", "--cores", "ff", *args])
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err, err
