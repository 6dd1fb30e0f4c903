"""POPGym as a benchmark: ids without `module:`, the suites, `--protocol popgym`, MMER in compare, bench."""

from __future__ import annotations

import csv
import json
import shlex
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from brims_rl.cli import main
from brims_rl.compare import aggregates, grid
from brims_rl.compare.runs import MMER_MIN_EPISODES, max_mean_episodic_return, update_windows, window_means
from brims_rl.config import EnvConfig
from brims_rl.configure import compose_config
from brims_rl.environments import is_popgym_id, make_vec_env, resolve_env
from brims_rl.errors import UserError
from brims_rl.presets import load_protocol

popgym = pytest.importorskip("popgym")  # in the [dev] extra; the missing-package test simulates its absence

from test_compare import cli, make_run, md_tables  # noqa: E402  (after the skip: it needs tensorboard only)

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["Autoencode", "RepeatPrevious", "RepeatFirst", "CountRecall", "PositionOnlyCartPole", "PositionOnlyPendulum",
         "VelocityOnlyCartpole", "NoisyPositionOnlyCartPole", "NoisyPositionOnlyPendulum", "MultiarmedBandit",
         "HigherLower", "Battleship", "Concentration", "MineSweeper"]
LEVELS = ["Easy", "Medium", "Hard"]
REPEAT = "popgym-RepeatPreviousEasy-v0"


@pytest.fixture(autouse=True)
def few_bootstrap_reps(monkeypatch):
    monkeypatch.setattr(aggregates, "DEFAULT_REPS", 200)


# --- ids --------------------------------------------------------------------------------------------------------


def test_popgym_ids_resolve_without_the_module_prefix():
    spec = resolve_env(REPEAT)
    assert (spec.kind, spec.gym_id, spec.module) == ("gym", REPEAT, None)
    assert resolve_env(f"popgym:{REPEAT}").gym_id == REPEAT  # the module: form still works
    assert is_popgym_id(REPEAT) and is_popgym_id(f"popgym:{REPEAT}") and not is_popgym_id("CartPole-v1")
    env = make_vec_env(EnvConfig(id=REPEAT), 3, seed=1)
    obs = env.reset()
    assert obs.shape == (3, 4)  # Discrete(4) card, one-hot
    step = env.step(np.zeros(3, dtype=np.int64))
    assert step.obs.shape == (3, 4) and np.all(np.abs(step.reward) <= 1.0)
    env.close()


def test_popgym_typo_gets_popgym_suggestions():
    with pytest.raises(UserError, match="unknown env 'popgym-RepeatPreviusEasy-v0'.*popgym-RepeatPreviousEasy-v0"):
        resolve_env("popgym-RepeatPreviusEasy-v0")


def test_missing_popgym_is_one_line_with_the_install_command(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "popgym", None)  # `import popgym` now raises ImportError
    with pytest.raises(UserError, match=r'pip install "brims-rl\[popgym\]"'):
        resolve_env(REPEAT)
    code, _, err = cli(capsys, "train", "--env", REPEAT, "--total-steps", "16")
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("brims-rl: error: ") and 'pip install "brims-rl[popgym]"' in lines[0]
    assert resolve_env("CartPole-v1").gym_id == "CartPole-v1"  # other envs are unaffected


# --- suites -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_difficulty_suites_list_all_14_tasks(level):
    import gymnasium as gym

    games = grid.expand_env(f"popgym-{level.lower()}")
    assert games == [f"popgym-{task}{level}-v0" for task in TASKS]
    assert all(game in gym.registry for game in games)
    registered = {info["id"] for info in popgym.envs.ALL.values() if info["id"].endswith(f"{level}-v0")}
    assert set(games) == registered  # every POPGym task of popgym 1.0.7 at that difficulty
    text = tomllib.loads((ROOT / "envs" / f"popgym-{level.lower()}.toml").read_text())
    assert text["description"]


def test_memory_suite_is_the_diagnostic_tasks_at_easy():
    games = grid.expand_env("popgym-memory")
    assert games == ["popgym-RepeatPreviousEasy-v0", "popgym-RepeatFirstEasy-v0", "popgym-CountRecallEasy-v0",
                     "popgym-AutoencodeEasy-v0"]
    assert set(games) == {info["id"] for info in popgym.envs.DIAGNOSTIC_EASY.values()}
    assert "Why these four" in (ROOT / "envs" / "popgym-memory.toml").read_text()


def test_dry_run_prints_the_popgym_grid(tmp_path, capsys):
    out = tmp_path / "grid"
    code, stdout, err = cli(capsys, "compare", "--env", "popgym-easy", "--cores", "lstm", "brims", "--seeds", "3",
                            "--protocol", "popgym", "--out", out, "--dry-run")
    assert code == 0, err
    commands = [shlex.split(line) for line in stdout.strip().splitlines()]
    assert len(commands) == 84  # 14 tasks x 2 cores x 3 seeds
    expected = [["brims-rl", "train", "--env", f"popgym-{task}Easy-v0", "--core", core, "--seed", str(seed),
                 "--protocol", "popgym", "--total-steps", "15000000", "--run-dir",
                 str(out / f"popgym-{task}Easy-v0__{core}__popgym__s{seed}")]
                for task in TASKS for core in ("lstm", "brims") for seed in (1, 2, 3)]
    assert commands == expected
    assert not out.exists()
    code, stdout, _ = cli(capsys, "compare", "--env", "popgym-memory", "popgym-hard", "--cores", "gru", "--seeds", "1",
                          "--protocol", "popgym", "--out", out, "--dry-run")
    assert code == 0 and len(stdout.strip().splitlines()) == 4 + 14


# --- protocol ---------------------------------------------------------------------------------------------------


def test_popgym_protocol_reaches_a_popgym_config():
    config = compose_config(REPEAT, "lstm", protocol="popgym")
    ppo = config.ppo
    assert config.env.num_envs == 64 and config.total_steps == 15_000_000
    assert (ppo.num_steps, ppo.num_minibatches, ppo.update_epochs) == (1024, 8, 30)
    assert config.env.num_envs * ppo.num_steps == 65_536  # POPGym's train batch
    assert config.env.num_envs // ppo.num_minibatches * ppo.num_steps == 8_192  # its minibatch
    assert (ppo.learning_rate, ppo.anneal_lr, ppo.gamma, ppo.gae_lambda, ppo.clip_coef) == (5e-5, False, 0.99, 1.0, 0.3)
    assert (ppo.ent_coef, ppo.vf_coef, ppo.clip_vloss, ppo.adam_eps) == (0.0, 2.0, False, 1e-8)
    assert (ppo.kl_coef, ppo.kl_target) == (0.2, 0.01)  # RLlib's adaptive KL penalty
    assert ppo.max_grad_norm >= 1e9  # "no clipping"
    assert (config.model.mlp_hidden, config.model.encoder_size) == (128, 128)
    assert (config.model.encoder, config.model.heads, config.model.head_hidden) == ("popgym", "popgym", 128)
    assert config.env.previous_action is True
    assert config.agent == "lstm-popgym" and config.core.options["hidden_size"] == 256  # POPGym's memory width
    assert config.protocol == "popgym" and config.protocol_settings == load_protocol("popgym")
    # every shipped core has its POPGym stand-in; an explicit --agent is taken as given
    for core in ("ff", "lstm", "gru", "rims", "brims"):
        assert compose_config(REPEAT, core, protocol="popgym").agent == f"{core}-popgym"
    assert compose_config(REPEAT, protocol="popgym").agent == "lstm-popgym"
    assert compose_config(REPEAT, agent="gru", protocol="popgym").core.options == {"hidden_size": 128}
    # other protocols keep today's model and presets
    plain = compose_config(REPEAT, "lstm")
    assert (plain.agent, plain.model.encoder, plain.model.heads, plain.env.previous_action) == (
        "lstm", "auto", "linear", False)


def test_popgym_protocol_names_its_sources_and_departures():
    text = (ROOT / "envs" / "protocols" / "popgym.toml").read_text()
    data = tomllib.loads(text)
    for line in text.splitlines():  # every setting names where it comes from
        if "=" in line and not line.lstrip().startswith("#") and not line.startswith(("description", "source")):
            key = line.split("=")[0].strip()
            if key not in ("clip_vloss",):  # its reason is in the comment above it
                assert any(tag in line for tag in ("[ppo.py]", "[model]", "[RLlib]", "[ours]")), line
    for departure in ("complete_episodes", "grad_clip", "vf_clip_param", "per minibatch", "stand-ins"):
        assert departure in text, departure
    assert text.count("DEPARTURE") >= 5
    docs = (ROOT / "docs" / "popgym.md").read_text()
    for key in data["ppo"]:
        assert f"`ppo.{key}`" in docs, key


def test_protocol_num_envs_reaches_every_env_but_atari_keys_only_atari(tmp_path):
    cartpole = compose_config("CartPole-v1", "lstm", protocol="popgym")
    assert cartpole.env.num_envs == 64
    assert cartpole.env.previous_action is False  # popgym's wrappers take POPGym envs only
    plain = compose_config("CartPole-v1", "lstm")
    # cleanrl's frame stack (1) and its other Atari keys stay off a gymnasium env
    cleanrl = compose_config("CartPole-v1", "lstm", protocol="cleanrl")
    for key in ("frame_stack", "max_episode_steps", "sticky_actions", "episodic_life", "fire_reset"):
        assert getattr(cleanrl.env, key) == getattr(plain.env, key), key
    assert compose_config("Breakout", "lstm", protocol="cleanrl").env.frame_stack == 1
    # flags and --set still win over the protocol's num_envs
    assert compose_config(REPEAT, "lstm", flags={("env", "num_envs"): 16}, protocol="popgym").env.num_envs == 16
    assert compose_config(REPEAT, "lstm", overrides=["env.num_envs=8"], protocol="popgym").env.num_envs == 8


def test_train_cli_takes_the_popgym_protocol(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--env", REPEAT, "--core", "gru", "--protocol", "popgym", "--num-envs", "8",
                       "--set", "ppo.num_steps=8", "--set", "ppo.update_epochs=1", "--total-steps", "64",
                       "--run-dir", run, "--device", "cpu")
    assert code == 0, err
    saved = json.loads((run / "config.json").read_text())
    assert saved["protocol"] == "popgym" and saved["env"]["num_envs"] == 8 and saved["ppo"]["gae_lambda"] == 1.0


# --- MMER -------------------------------------------------------------------------------------------------------


def test_update_windows_are_the_episodes_of_one_update_or_the_last_100():
    # update 1 (step 100): 3 episodes; update 2 (200): 150 episodes; update 3 (300): 2 episodes
    steps = np.array([100] * 3 + [200] * 150 + [300] * 2)
    assert update_windows(steps) == [(0, 3), (3, 153), (153 - (MMER_MIN_EPISODES - 2), 155)]
    returns = np.concatenate([[1.0, 0.0, 0.5], np.full(150, -0.5), [0.25, 0.75]])
    window_steps, means = window_means(steps, returns)
    assert window_steps.tolist() == [100, 200, 300]
    assert means == pytest.approx([0.5, -0.5, (98 * -0.5 + 0.25 + 0.75) / 100])
    assert max_mean_episodic_return(steps, returns) == pytest.approx(0.5)
    assert update_windows(np.array([], dtype=np.int64)) == []


def popgym_data(seed: int, core: str, updates: int = 12, per_update: int = 120):
    """Episodes of `updates` updates of 65,536 steps each, returns in [-1, 1] rising then falling (MMER > final)."""
    rng = np.random.default_rng(seed + 10 * len(core))
    steps = np.repeat(np.arange(1, updates + 1) * 65_536, per_update)
    level = np.repeat(np.sin(np.linspace(0, 2.5, updates)) * (0.5 + 0.1 * seed), per_update)
    returns = np.clip(np.round(level + rng.normal(0, 0.2, steps.size), 3), -1, 1)
    return steps, returns


def expected_mmer(steps, returns) -> float:
    """MMER by hand: the updates here log more than 100 episodes each, so a window is one update's episodes."""
    return max(float(np.mean(returns[steps == s])) for s in np.unique(steps))


def test_compare_reports_mmer_for_popgym_runs(tmp_path, capsys):
    envs, cores, seeds = ["popgym-RepeatPreviousEasy-v0", "popgym-RepeatFirstEasy-v0"], ["lstm", "brims"], [1, 2, 3]
    data, paths = {}, []
    for env in envs:
        for core in cores:
            for seed in seeds:
                data[env, core, seed] = popgym_data(seed + 7 * envs.index(env), core)
                paths.append(make_run(tmp_path / f"{env}-{core}-{seed}", env, core, seed, *data[env, core, seed],
                                      protocol="popgym"))
    out = tmp_path / "report"
    code, stdout, err = cli(capsys, "compare", *paths, "--out", out)
    assert code == 0, err
    table = md_tables(out / "compare.md")[0]
    assert table[0] == ["Env", "lstm", "lstm MMER", "brims", "brims MMER"]
    with open(out / "compare.csv", newline="") as f:
        rows = {(r["env"], r["core"]): r for r in csv.DictReader(f)}
    for env in envs:
        row = next(r for r in table if r[0] == env)
        for i, core in enumerate(cores):
            mmers = [expected_mmer(*data[env, core, s]) for s in seeds]
            finals = [float(np.mean(data[env, core, s][1][-100:])) for s in seeds]
            assert row[2 + 2 * i] == f"{np.mean(mmers):.3f} ± {np.std(mmers, ddof=1):.3f}"
            assert row[1 + 2 * i] == f"{np.mean(finals):.3f} ± {np.std(finals, ddof=1):.3f}"
            csv_row = rows[env, core]
            assert [float(m) for m in csv_row["mmers"].split(";")] == pytest.approx(mmers, abs=1e-6)
            assert float(csv_row["mmer"]) == pytest.approx(np.mean(mmers), abs=1e-6)
            assert np.mean(mmers) > np.mean(finals)  # the curves fall at the end
    text = (out / "compare.md").read_text()
    assert "### Aggregates over 2 games: POPGym final returns (raw, in [-1, 1])" in text
    assert "### Aggregates over 2 games: POPGym MMER" in text
    assert "human-normalised" not in text and "Optimality gap" in text
    with open(out / "compare_aggregates.csv", newline="") as f:
        agg_rows = list(csv.DictReader(f))
    assert {r["scores"] for r in agg_rows} == {"popgym-return", "popgym-mmer"}
    mean_mmer = {r["core"]: float(r["estimate"]) for r in agg_rows
                 if r["scores"] == "popgym-mmer" and r["metric"] == "Mean"}
    for core in cores:  # the mean over tasks of the per-task means of the runs' MMERs
        want = np.mean([np.mean([expected_mmer(*data[env, core, s]) for s in seeds]) for env in envs])
        assert mean_mmer[core] == pytest.approx(want, abs=1e-6)
    gap = {r["core"]: float(r["estimate"]) for r in agg_rows
           if r["scores"] == "popgym-mmer" and r["metric"] == "Optimality gap"}
    for core in cores:
        scores = np.array([[expected_mmer(*data[env, core, s]) for env in envs] for s in seeds])
        assert gap[core] == pytest.approx(np.mean(1.0 - np.minimum(scores, 1.0)), abs=1e-6)


def expected_auc(steps, returns) -> float:
    """The area under the curve by hand: every update here is 65,536 steps and logs over 100 episodes, so it is the
    plain mean over updates of each update's mean return."""
    return float(np.mean([np.mean(returns[steps == s]) for s in np.unique(steps)]))


def test_compare_reports_normalised_mmer_and_the_area_under_the_curve(tmp_path, capsys):
    env, cores, seeds = "popgym-RepeatPreviousEasy-v0", ["lstm", "gru"], [1, 2]
    data, paths = {}, []
    for core in cores:
        for seed in seeds:
            data[core, seed] = popgym_data(seed, core)
            paths.append(make_run(tmp_path / f"{core}-{seed}", env, core, seed, *data[core, seed], protocol="popgym"))
    out = tmp_path / "report"
    code, _, err = cli(capsys, "compare", *paths, "--out", out)
    assert code == 0, err
    text = (out / "compare.md").read_text()
    assert "### Normalised MMER and area under the curve per game" in text
    table = md_tables(out / "compare.md")[1]
    assert table[0] == ["Env", "lstm norm. MMER", "lstm AUC", "gru norm. MMER", "gru AUC"]
    with open(out / "compare.csv", newline="") as f:
        rows = {r["core"]: r for r in csv.DictReader(f)}
    row = next(r for r in table if r[0] == env)
    for i, core in enumerate(cores):
        mmers = np.array([expected_mmer(*data[core, s]) for s in seeds])
        aucs = np.array([expected_auc(*data[core, s]) for s in seeds])
        normalised = 0.5 * mmers + 0.5
        assert row[1 + 2 * i] == f"{normalised.mean():.3f} ± {np.std(normalised, ddof=1):.3f}"
        assert row[2 + 2 * i] == f"{aucs.mean():.3f} ± {np.std(aucs, ddof=1):.3f}"
        assert float(rows[core]["mmer_normalised"]) == pytest.approx(normalised.mean(), abs=1e-9)
        assert [float(a) for a in rows[core]["aucs"].split(";")] == pytest.approx(aucs, abs=1e-9)
        assert aucs.mean() < mmers.mean()  # the curve's mean lies below its best update


def test_the_area_under_the_curve_weights_updates_by_their_env_steps():
    from brims_rl.compare.runs import area_under_curve

    # two updates of 100 steps at return 0, then one of 200 steps at return 1: half the steps at 1
    steps = np.repeat([100, 200, 400], 100)
    returns = np.repeat([0.0, 0.0, 1.0], 100)
    assert area_under_curve(steps, returns) == pytest.approx(0.5)


def test_mixed_groups_show_mmer_for_popgym_rows_only(tmp_path, capsys):
    paths = [make_run(tmp_path / "pop", REPEAT, "lstm", 1, *popgym_data(1, "lstm")),
             make_run(tmp_path / "cart", "CartPole-v1", "lstm", 1, [100, 200], [10.0, 30.0])]
    out = tmp_path / "report"
    code, _, err = cli(capsys, "compare", *paths, "--out", out)
    assert code == 0, err
    table = md_tables(out / "compare.md")[0]
    assert table[0] == ["Env", "lstm", "lstm MMER"]
    assert table[3] == ["CartPole-v1", "20.0 ± 0.0", "—"]
    text = (out / "compare.md").read_text()
    assert "raw returns (not normalised)" in text and "POPGym MMER" not in text  # no MMER aggregates when mixed
    with open(out / "compare.csv", newline="") as f:
        rows = {r["env"]: r for r in csv.DictReader(f)}
    assert rows["CartPole-v1"]["mmer"] == "" and rows[REPEAT]["mmer"] != ""


def test_atari_tables_are_unchanged(tmp_path, capsys):
    paths = [make_run(tmp_path / f"pong{s}", "Pong", "lstm", s, [100, 200], [1.0, 3.0]) for s in (1, 2)]
    out = tmp_path / "report"
    assert cli(capsys, "compare", *paths, "--out", out)[0] == 0
    assert md_tables(out / "compare.md")[0][0] == ["Env", "lstm"]
    assert "MMER" not in (out / "compare.md").read_text()


# --- bench ------------------------------------------------------------------------------------------------------


def test_bench_runs_on_popgym_with_its_protocol(capsys):
    code = main(["bench", "--cores", "ff", "gru", "--env", REPEAT, "--protocol", "popgym", "--num-envs", "8",
                 "--updates", "1", "--json", "--set", "ppo.num_steps=16", "--set", "ppo.update_epochs=1"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["protocol"], report["num_envs"], report["num_steps"]) == ("popgym", 8, 16)
    assert set(report["cores"]) == {"ff", "gru"} and all(c["update_sps"] > 0 for c in report["cores"].values())
