"""Every message whole: what the CLI and the API say when a run, a path or a setting does not fit (one line, exit 2,
naming what was expected and what was found), and the warnings that say what a run will do instead."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import brims_rl as br
from brims_rl import checkpoint
from brims_rl.cli import main
from brims_rl.configure import compose_config
from brims_rl.evaluation.cli import _number

MEMORY = "CueMemory-v0"
TINY = ["--num-envs", "2", "--set", "ppo.num_steps=32", "--set", "ppo.num_minibatches=2", "--set",
        "ppo.update_epochs=1", "--set", "latest_every_s=0"]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def memory_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("messages") / "memory"
    assert main(["train", "--env", MEMORY, "--total-steps", "64", "--run-dir", str(run), *TINY]) == 0
    return run


# ---- checkpoints that do not fit -------------------------------------------------------------------------------------
def test_resuming_with_another_model_size_names_every_mismatched_key(memory_run, capsys):
    capsys.readouterr()
    code = main(["train", "--resume", str(memory_run), "--total-steps", "128", "--set",
                 "core.options.hidden_size=64"])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and line.startswith("brims-rl: error: the checkpoint does not fit this run's model: "
                                         "different shapes: ")
    assert "core.rnn.weight_hh_l0 [512, 128] in the checkpoint, [256, 64] in the model" in line
    assert "Error(s) in loading" not in line and not line.endswith(":")


def test_the_mismatch_names_missing_unexpected_and_reshaped_keys():
    expected = {"a": np.zeros((2, 3)), "b": np.zeros(4), "c": np.zeros(1)}
    weights = {"a": np.zeros((3, 3)), "c": np.zeros(1), "d": np.zeros(2)}
    assert checkpoint.weights_mismatch(expected, weights) == (
        "missing b; unexpected d; different shapes: a [3, 3] in the checkpoint, [2, 3] in the model")
    assert checkpoint.weights_mismatch(expected, dict(expected)) is None
    many = checkpoint.weights_mismatch({f"k{i}": np.zeros(1) for i in range(9)}, {})
    assert many == "missing k0, k1, k2, k3, k4, k5 and 3 more"


def test_evaluating_a_run_trained_on_another_env_names_both_spaces(tmp_path, capsys):
    """br.train(env=...) on an env whose spaces differ from config.env's; evaluate rebuilds config.env."""
    config = br.make_config(total_steps=64, num_envs=2, overrides=["ppo.num_steps=32", "ppo.num_minibatches=2"])
    env = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync",
                       vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP})
    br.train(config, tmp_path / "run", env=env)
    env.close()
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), "--episodes", "1"]) == 2
    line = one_line(capsys.readouterr().err)
    assert re.search(r"env CueMemory-v0 gives observations Box\(.*\(3,\), float32\) and takes actions Discrete\(2\), "
                     r"but the policy was trained on observations Box\(.*\(4,\), float32\)", line), line


# ---- paths that are not checkpoints --------------------------------------------------------------------------------
def test_load_policy_takes_a_runs_config_json_or_checkpoints_folder(memory_run):
    policies = [br.load_policy(path) for path in (memory_run, memory_run / "config.json",
                                                  memory_run / "checkpoints", memory_run / "checkpoints" / "latest.pt")]
    assert {p.checkpoint for p in policies} == {memory_run / "checkpoints" / "latest.pt"}


def test_load_policy_says_what_a_path_holds(memory_run, tmp_path):
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.json").write_text((memory_run / "config.json").read_text())  # stopped before a checkpoint
    with pytest.raises(br.UserError, match=r"run folder .*started has no checkpoint yet"):
        br.load_policy(started)
    with pytest.raises(br.UserError, match=r"is not a brims-rl run folder \(no config.json\) and holds no checkpoint"):
        br.load_policy(tmp_path)
    events = next(memory_run.glob("events.out.tfevents.*"))
    with pytest.raises(br.UserError, match=r"is not a readable brims-rl checkpoint \(not a file torch.save wrote"):
        br.load_policy(events)


# ---- the command line ----------------------------------------------------------------------------------------------
def test_version():
    proc = subprocess.run([sys.executable, "-m", "brims_rl", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"brims-rl {br.__version__}"


def test_total_steps_below_one_update_says_what_the_run_will_do(tmp_path, capsys):
    code = main(["train", "--env", MEMORY, "--total-steps", "16", "--run-dir", str(tmp_path / "run"), *TINY])
    err = capsys.readouterr().err
    assert code == 0
    warning = [line for line in err.splitlines() if "warning" in line]
    assert warning == ["brims-rl: warning: total_steps 16 ends inside the first update, which is 2 envs x 32 steps = "
                       "64 env steps: training that one update, to step 64"]
    assert "(100%)" in err and "%)" not in err.replace("(100%)", "")
    assert checkpoint.load(tmp_path / "run" / "checkpoints" / "latest.pt")["global_step"] == 64


@pytest.mark.parametrize("value,shown", [("nan", "nan"), ("NaN", "nan"), ("inf", "inf"), ("-Infinity", "-inf"),
                                         ("1e400", "inf")])
def test_a_setting_that_is_not_a_finite_number_is_named_as_such(value, shown, tmp_path, capsys):
    code = main(["train", "--env", MEMORY, "--total-steps", "64", "--run-dir", str(tmp_path / "run"), *TINY,
                 "--set", f"ppo.learning_rate={value}"])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and line == f"brims-rl: error: config.ppo.learning_rate must be a finite number, got {shown}"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,named", [(["--set", "env.frame_stack=2"], "env.frame_stack"),
                                        (["--env-backend", "ale"], "--env-backend"),
                                        (["--set", "env.sticky_actions=0.25", "--set", "env.noop_max=0"],
                                         "env.sticky_actions, env.noop_max apply")])
def test_atari_settings_on_a_gymnasium_env_are_refused(args, named, tmp_path, capsys):
    code = main(["train", "--env", MEMORY, "--total-steps", "64", "--run-dir", str(tmp_path / "run"), *TINY, *args])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and named in line and f"to Atari games only; {MEMORY} is a gymnasium env" in line
    assert not (tmp_path / "run").exists()


def test_atari_settings_are_refused_on_resume_of_a_gymnasium_run_and_taken_for_atari(memory_run, capsys):
    capsys.readouterr()
    assert main(["train", "--resume", str(memory_run), "--set", "env.frame_stack=2"]) == 2
    assert "env.frame_stack applies to Atari games only" in one_line(capsys.readouterr().err)
    assert compose_config("Breakout", overrides=["env.frame_stack=2"]).env.frame_stack == 2
    assert compose_config(MEMORY, overrides=["env.kwargs.delay=2"]).env.kwargs == {"delay": 2}


def test_scores_print_rounded_and_eval_json_keeps_them_exact():
    assert _number(-1187.239871) == "-1187.24" and _number(3.0) == "3" and _number(-0.5) == "-0.50"


def test_a_continuous_control_evaluation_prints_rounded_scores(tmp_path, capsys):
    run = tmp_path / "pendulum"
    assert main(["train", "--env", "Pendulum-v1", "--total-steps", "64", "--run-dir", str(run), *TINY]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--episodes", "1", "--greedy"]) == 0
    out = capsys.readouterr().out
    (score,) = re.findall(r"^episode 1: score (\S+) \|", out, re.MULTILINE)
    assert re.fullmatch(r"-?\d+\.\d\d", score), out
    exact = json.loads((run / "eval.json").read_text())["scores"][0]
    assert score == f"{exact:.2f}"


def test_train_with_a_same_step_env_points_at_how_to_act_in_either_mode(tmp_path):
    config = br.make_config(total_steps=64, num_envs=2, overrides=["ppo.num_minibatches=2"])
    env = gym.make_vec(MEMORY, num_envs=2, vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
    with pytest.raises(br.UserError, match=r"autoreset_mode NEXT_STEP .*Policy.act takes either mode: see "
                                           r"docs/getting-started.md#python-api"):
        br.train(config, tmp_path / "run", env=env)
    env.close()
