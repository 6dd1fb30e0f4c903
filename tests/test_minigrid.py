"""MiniGrid out of the box (docs/minigrid.md): its ids resolve once the `minigrid` extra is there (one line and exit 2
when it is not), its Dict observation (7x7x3 image, direction, mission) reaches the agent as the image and the
direction with the mission dropped, the grid encoder is chosen for it, the `minigrid` protocol holds torch-ac's
numbers with their sources, and a run trains, evaluates and compares from the CLI."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from brims_rl.agent import Agent
from brims_rl.cli import main
from brims_rl.configure import compose_config
from brims_rl.encoders import GridEncoder
from brims_rl.environments import is_minigrid_id, make_vec_env, resolve_env

pytest.importorskip("minigrid")  # in the [dev] extra; the missing-package test simulates its absence

ROOT = Path(__file__).resolve().parents[1]
MULTIROOM = "MiniGrid-MultiRoom-N4-S5-v1"
EMPTY = "MiniGrid-Empty-5x5-v0"
TINY = ["--num-envs", "8", "--set", "ppo.num_steps=16", "--set", "ppo.update_epochs=1", "--set", "latest_every_s=0"]


def test_minigrid_ids_resolve_and_are_recognised():
    assert resolve_env(MULTIROOM).gym_id == MULTIROOM and resolve_env("BabyAI-GoToLocal-v0").kind == "gym"
    assert is_minigrid_id(MULTIROOM) and is_minigrid_id(f"minigrid:{MULTIROOM}") and not is_minigrid_id("CartPole-v1")


def test_missing_minigrid_is_one_line_with_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "minigrid", None)  # `import minigrid` now raises ImportError
    code = main(["train", "--env", MULTIROOM, "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err == 'brims-rl: error: MiniGrid envs need the minigrid package: pip install ' \
                                '"brims-rl[minigrid]"\n', err
    assert not (tmp_path / "run").exists()


def test_the_dict_observation_reaches_the_agent_as_direction_and_image_without_the_mission(capsys):
    config = compose_config(MULTIROOM, "lstm", protocol="minigrid")
    env = make_vec_env(config.env, 2, seed=3)
    assert env.single_observation_space.shape == (4 + 7 * 7 * 3,)
    assert env.env_observation_space == gym.spaces.Dict({"direction": gym.spaces.Discrete(4),
                                                         "image": gym.spaces.Box(0, 255, (7, 7, 3), np.uint8)})
    assert capsys.readouterr().err == ""  # the note waits for the first reset, after the model is built
    obs = env.reset()
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and "the text in its observation (['mission']) is dropped" in note
    raw = gym.make_vec(MULTIROOM, num_envs=2, vectorization_mode="sync",
                       vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP})
    expected, _ = raw.reset(seed=3)
    np.testing.assert_array_equal(obs[:, :4], np.eye(4)[expected["direction"]])
    np.testing.assert_array_equal(obs[:, 4:].reshape(2, 7, 7, 3), expected["image"])
    step = env.step(np.array([2, 1]))  # forward, right
    expected, *_ = raw.step(np.array([2, 1]))
    np.testing.assert_array_equal(step.obs[:, 4:].reshape(2, 7, 7, 3), expected["image"])
    env.reset()
    assert capsys.readouterr().err == ""  # said once
    env.close()
    raw.close()


def test_the_grid_encoder_is_chosen_for_minigrid():
    config = compose_config(MULTIROOM, "lstm")
    env = make_vec_env(config.env, 1, seed=0)
    agent = Agent(env.single_observation_space.shape, env.single_action_space, config, env.env_observation_space)
    env.close()
    assert isinstance(agent.encoder, GridEncoder) and agent.encoder.output_size == 64 + 4
    assert agent.core.rnn.input_size == 68 and agent.actor.out_features == 7  # MiniGrid's seven actions


def test_an_agent_view_no_encoder_takes_is_one_line_and_exit_2(tmp_path, capsys):
    """MiniGrid's agent_view_size 5 gives a 5x5x3 image: smaller than the grid encoder's convolutions take."""
    code = main(["train", "--env", EMPTY, "--set", "env.kwargs.agent_view_size=5", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "no built-in encoder takes the image of shape (5, 5, 3) at ['image']" in err
    assert not (tmp_path / "r").exists()


def test_the_minigrid_protocol_holds_torch_acs_numbers_with_their_sources():
    config = compose_config(MULTIROOM, "lstm", protocol="minigrid")
    ppo = config.ppo
    assert config.env.num_envs == 16 and config.total_steps == 1_000_000
    assert (ppo.num_steps, ppo.num_minibatches, ppo.update_epochs) == (128, 8, 4)
    assert config.env.num_envs // ppo.num_minibatches * ppo.num_steps == 256  # torch-ac's batch
    assert (ppo.learning_rate, ppo.anneal_lr, ppo.adam_eps, ppo.gamma, ppo.gae_lambda) == (1e-4, False, 1e-8, 0.99, 0.95)
    assert (ppo.clip_coef, ppo.clip_vloss, ppo.ent_coef, ppo.max_grad_norm, ppo.norm_adv) == (0.2, True, 0.01, 0.5, False)
    assert ppo.vf_coef == 1.0  # torch-ac's 0.5 on a value loss without brims-rl's factor 1/2
    # the claim's model: LSTMCell(64), actor and critic of Linear(64) + Tanh + Linear
    assert (config.model.encoder, config.model.heads, config.model.head_hidden) == ("auto", "tanh", 64)
    assert config.agent == "lstm-minigrid" and config.core.options == {"hidden_size": 64}
    rims = compose_config(MULTIROOM, "rims", protocol="minigrid").core.options
    assert (rims["num_modules"], rims["top_k"], rims["module_size"], rims["input_value_size"]) == (4, 2, 16, 64)
    text = (ROOT / "envs" / "protocols" / "minigrid.toml").read_text()
    tomllib.loads(text)
    for line in text.splitlines():  # every setting names where it comes from
        if "=" in line and not line.lstrip().startswith("#") and not line.startswith(("description", "source")):
            assert any(tag in line for tag in ("[starter]", "[claim]", "[torch-ac]", "[ours]")), line
    for departure in ("recurrence", "truncated", "direction one-hot"):
        assert departure in text, departure
    assert text.count("DEPARTURE") >= 3


def test_minigrid_trains_evaluates_and_compares_from_the_cli(tmp_path, capsys):
    run = tmp_path / f"{MULTIROOM}__rims__minigrid__s1"
    code = main(["train", "--env", MULTIROOM, "--core", "rims", "--protocol", "minigrid", "--total-steps", "1024",
                 "--run-dir", str(run), *TINY, "--set", "core.options.compile=false"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((run / "config.json").read_text())
    assert saved["protocol"] == "minigrid" and saved["core"]["name"] == "rims"
    assert main(["evaluate", str(run), "--episodes", "2", "--num-envs", "2"]) == 0
    record = json.loads((run / "eval.json").read_text())
    assert len(record["scores"]) == 2 and all(0 <= s <= 1 for s in record["scores"])
    # transfer: the same policy on another MultiRoom (same spaces), into its own file; eval.json stays
    other = "MiniGrid-MultiRoom-N2-S4-v0"
    assert main(["evaluate", str(run), "--env", other, "--episodes", "2", "--num-envs", "2"]) == 0
    transfer = json.loads((run / f"eval__{other}.json").read_text())
    assert transfer["settings"]["env"]["id"] == other and len(transfer["scores"]) == 2
    assert json.loads((run / "eval.json").read_text()) == record
    capsys.readouterr()
    assert main(["evaluate", str(run), "--env", "CueMemory-v0", "--episodes", "1"]) == 2  # other spaces
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CueMemory-v0" in err[0]
    assert main(["compare", str(run), "--out", str(tmp_path / "table"), "--bootstrap-reps", "50"]) == 0
    assert MULTIROOM in (tmp_path / "table" / "compare.md").read_text()
