"""The Python API (`import brims_rl as br`): make_config, train, load_policy; and old run folders and checkpoints
(written before checkpoints stored the spaces) still load."""

from __future__ import annotations

import json
import math
import signal
import threading
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import brims_rl as br
from brims_rl.config import STORED_DEFAULTS
from brims_rl import checkpoint
from brims_rl.agent import Agent
from brims_rl.cli import main
from brims_rl.configure import compose_config

ROOT = Path(__file__).resolve().parent.parent
OLD_RUNS = sorted((ROOT / "docs" / "results" / "cpu" / "runs").glob("*/config.json"))
SHORT = ["ppo.num_steps=32", "ppo.num_minibatches=2", "ppo.update_epochs=1", "latest_every_s=0"]


def test_the_public_names():
    for name in ("make_config", "train", "TrainResult", "load_policy", "Policy", "make_core", "register_core",
                 "core_names", "check_core", "CoreContractError", "Config", "UserError", "__version__"):
        assert hasattr(br, name), name
    assert set(br.__all__) <= set(dir(br))
    with pytest.raises(AttributeError):
        br.no_such_name  # noqa: B018


def test_make_config_is_the_cli_composition():
    config = br.make_config("CueMemory-v0", core="rims", overrides=["ppo.learning_rate=1e-3"], total_steps=4096,
                            num_envs=4, seed=3, device="cpu")
    flags = {("env", "num_envs"): 4, ("seed",): 3, ("total_steps",): 4096, ("device",): "cpu"}
    assert config == compose_config("CueMemory-v0", "rims", None, flags, ["ppo.learning_rate=1e-3"])
    assert (config.core.name, config.agent, config.ppo.learning_rate, config.seed) == ("rims", "rims", 1e-3, 3)
    paper = br.make_config("Breakout", agent="brims-paper", protocol="paper")
    assert paper.protocol == "paper" and paper.core.options["module_size"] == 85
    assert br.make_config().env.id == "CueMemory-v0"
    with pytest.raises(br.UserError, match="unknown core"):
        br.make_config(core="transformer")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short run trained through the API in a thread, with a callback, printing nothing."""
    run = tmp_path_factory.mktemp("api") / "run"
    config = br.make_config(core="lstm", total_steps=256, num_envs=2, overrides=SHORT)
    seen, box = [], {}
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def work():
        box["result"] = br.train(config, run, callback=seen.append)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=600)
    assert "result" in box, "training in a thread did not finish"
    assert {s: signal.getsignal(s) for s in before} == before  # no signal handler was installed
    return config, box["result"], seen


def test_train_returns_where_it_ended_and_writes_the_cli_run_folder(trained, capsys):
    config, result, seen = trained
    assert isinstance(result, br.TrainResult)
    assert result.step == 256 and result.run_dir.is_dir() and result.checkpoint == \
        result.run_dir / "checkpoints" / "latest.pt"
    assert result.episodes > 0 and -1.0 <= result.last_return <= 1.0
    assert br.Config.load(result.run_dir / "config.json") == config
    assert list(result.run_dir.glob("events.out.tfevents.*"))
    # one callback per update, with the progress line's numbers
    assert [n["step"] for n in seen] == [64, 128, 192, 256] and [n["updates"] for n in seen] == [1, 2, 3, 4]
    assert {"step", "total_steps", "steps_per_s", "return", "eta_s", "episodes", "learning_rate"} <= set(seen[-1])
    assert seen[-1]["episodes"] == result.episodes
    # the CLI reads the run
    assert main(["evaluate", str(result.run_dir), "--episodes", "2", "--num-envs", "2"]) == 0
    assert json.loads((result.run_dir / "eval.json").read_text())["global_step"] == 256


def test_train_prints_nothing_unless_asked(tmp_path, capfd):
    config = br.make_config(total_steps=64, num_envs=2, overrides=SHORT)
    br.train(config, tmp_path / "quiet")
    assert capfd.readouterr() == ("", "")
    br.train(config, tmp_path / "loud", progress=True)
    out, err = capfd.readouterr()
    assert "brims-rl: CueMemory-v0" in out and "finished at step 64" in out and "step 64/64" in err


def test_train_refuses_a_folder_that_holds_a_run(trained):
    config, result, _ = trained
    with pytest.raises(br.UserError, match="already holds a run"):
        br.train(config, result.run_dir)


def test_train_takes_a_gymnasium_vector_env_with_next_step_autoreset(tmp_path):
    config = br.make_config(total_steps=128, num_envs=2, overrides=SHORT)
    env = gym.make_vec("CueMemory-v0", num_envs=2,
                       vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP})
    result = br.train(config, tmp_path / "gym", env=env)
    assert result.step == 128 and result.episodes > 0
    env.step(np.zeros(2, dtype=np.int64))  # not closed: the caller owns it
    env.close()

    same_step = gym.make_vec("CueMemory-v0", num_envs=2,
                             vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
    with pytest.raises(br.UserError, match="autoreset_mode NEXT_STEP"):
        br.train(config, tmp_path / "same", env=same_step)
    four = gym.make_vec("CueMemory-v0", num_envs=4,
                         vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP})
    with pytest.raises(br.UserError, match="num_envs"):
        br.train(config, tmp_path / "four", env=four)
    assert not (tmp_path / "same").exists() and not (tmp_path / "four").exists()


def test_a_loaded_policy_acts_like_the_agent_in_the_checkpoint(trained):
    _, result, _ = trained
    policy = br.load_policy(result.run_dir)
    assert policy.observation_space == gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    assert policy.action_space == gym.spaces.Discrete(2) and policy.step == 256
    assert br.load_policy(result.checkpoint).step == 256

    env = gym.make_vec("CueMemory-v0", num_envs=3,
                       vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
    obs, _ = env.reset(seed=0)
    state, starts = policy.initial_state(3), np.ones(3, dtype=bool)
    agent_state = policy.agent.initial_state(3)
    for _ in range(12):
        actions, state = policy.act(obs, state, starts, greedy=True)
        assert isinstance(actions, np.ndarray) and actions.shape == (3,)
        with torch.no_grad():  # the same step through the agent itself
            logits, _, agent_state = policy.agent(torch.as_tensor(obs)[None], agent_state,
                                                  torch.as_tensor(starts)[None])
        assert np.array_equal(actions, logits[0].argmax(-1).numpy())
        obs, _, terminated, truncated, _ = env.step(actions)
        starts = terminated | truncated
    env.close()

    tensor_actions, _ = policy.act(torch.zeros(2, 3), policy.initial_state(2), torch.ones(2, dtype=torch.bool))
    assert isinstance(tensor_actions, torch.Tensor) and tensor_actions.shape == (2,)
    sampled, _ = policy.act(np.zeros((2, 1, 3), np.float64), policy.initial_state(2), [True, False])  # flattened
    assert set(sampled.tolist()) <= {0, 1}
    with pytest.raises(ValueError, match=r"observations must be a batch \[n, 3\]"):
        policy.act(np.zeros((2, 4)), policy.initial_state(2), np.ones(2, bool))
    with pytest.raises(ValueError, match="episode_start"):
        policy.act(np.zeros((2, 3)), policy.initial_state(2), np.ones(3, bool))


def test_load_policy_of_a_missing_or_corrupt_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(br.UserError, match="not found"):
        br.load_policy(tmp_path / "nothing")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(br.UserError, match="not a readable brims-rl checkpoint"):
        br.load_policy(bad)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(br.UserError, match="has no checkpoint"):
        br.load_policy(tmp_path / "run")


# ---- old formats ---------------------------------------------------------------------------------------------------
def test_old_config_json_files_load(tmp_path):
    """config.json files as earlier versions wrote them (the committed CPU result runs) load, keep every setting and
    are written back unchanged."""
    assert len(OLD_RUNS) >= 3
    for path in OLD_RUNS:
        data = json.loads(path.read_text())
        config = br.Config.load(path)
        loaded = config.to_dict()
        added = STORED_DEFAULTS.get(data["core"]["name"], {})  # options whose default changed: filled as trained
        assert loaded["core"]["options"] == {**added, **data["core"]["options"]}
        loaded["core"]["options"] = data["core"]["options"]
        for key, value in data.items():  # keys added since keep their defaults; every key written is kept
            if isinstance(value, dict) and key not in ("protocol_settings",):
                assert {k: loaded[key][k] for k in value} == value, key
            else:
                assert loaded[key] == value, key
        config.save(tmp_path / "config.json")
        assert br.Config.load(tmp_path / "config.json") == config


def old_checkpoint(path: Path, config: br.Config, obs_shape: tuple[int, ...], actions: int) -> None:
    """A checkpoint as written before the spaces were stored (no "observation", no "actions")."""
    agent = Agent(obs_shape, actions, config)
    optimizer = torch.optim.Adam(agent.parameters())
    payload = {"model": agent.state_dict(), "optimizer": optimizer.state_dict(), "config": config.to_dict(),
               "global_step": 1024, "updates": 1, "rng": {"torch": torch.get_rng_state()}}
    path.parent.mkdir(parents=True)
    checkpoint.save_atomic(payload, path)


def test_an_old_atari_checkpoint_gets_its_spaces_from_config_and_weights(tmp_path):
    config = br.Config.load(ROOT / "docs" / "results" / "cpu" / "runs" / "breakout_lstm" / "config.json")
    config.device = "cpu"
    file = tmp_path / "run" / "checkpoints" / "latest.pt"
    old_checkpoint(file, config, (4, 84, 84), 4)
    assert "observation" not in checkpoint.load(file)
    policy = br.load_policy(tmp_path / "run")
    assert policy.observation_space == gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    assert policy.action_space == gym.spaces.Discrete(4)
    frames = np.random.default_rng(0).integers(0, 256, (2, 4, 84, 84), dtype=np.uint8)
    actions, state = policy.act(frames, policy.initial_state(2), np.ones(2, bool))
    assert actions.shape == (2,) and all(0 <= a < 4 for a in actions)
    hwc, _ = policy.act(frames.transpose(0, 2, 3, 1), policy.initial_state(2), np.ones(2, bool), greedy=True)
    chw, _ = policy.act(frames, policy.initial_state(2), np.ones(2, bool), greedy=True)
    assert np.array_equal(hwc, chw)  # a gymnasium HWC image batch is the same observation


def test_an_old_vector_checkpoint_gets_its_spaces_from_its_weights(tmp_path):
    config = br.make_config(core="gru", overrides=["model.encoder_size=16"])
    file = tmp_path / "run" / "checkpoints" / "latest.pt"
    old_checkpoint(file, config, (7,), 5)
    policy = br.load_policy(file)
    assert policy.observation_space.shape == (7,) and policy.observation_space.dtype == np.float32
    assert policy.action_space.n == 5 and policy.step == 1024
    assert not math.isnan(float(policy.act(np.zeros((1, 7)), policy.initial_state(1), [True])[0][0]))


def test_new_checkpoints_store_their_spaces(trained):
    _, result, _ = trained
    payload = checkpoint.load(result.checkpoint)
    assert payload["observation"] == {"shape": [3], "dtype": "float32"} and payload["actions"] == {"n": 2}


def test_importing_every_command_leaves_the_api_names_alone():
    """`brims_rl.train` is the API function even after the CLI's modules are imported (a submodule import sets the
    package attribute of its name, so no module may be named like an exported name)."""
    from brims_rl import cli

    cli.build_parser()
    assert callable(br.train) and br.train.__module__ == "brims_rl.api"
    assert br.make_config.__module__ == "brims_rl.api" and br.load_policy.__module__ == "brims_rl.policy"
