"""The Python API (`import brims_rl as br`): make_config, train, load_policy; and old run folders and checkpoints
(written before checkpoints stored the spaces) still load."""

from __future__ import annotations

import json
import math
import re
import signal
import threading
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import brims_rl as br
import user_cores
from brims_rl.config import STORED_DEFAULTS
from brims_rl import checkpoint, cores
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
    with pytest.raises(br.UserError, match=r"observations must be a batch \[n, 3\]"):
        policy.act(np.zeros((2, 4)), policy.initial_state(2), np.ones(2, bool))
    with pytest.raises(br.UserError, match="episode_start"):
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


# ---- Policy: inputs checked, value, distribution, module trace, repr ------------------------------------------------
def untrained_policy(core: str, **options) -> br.Policy:
    """A policy of `core` on CueMemory's spaces (3 floats in, Discrete(2) out), straight from a fresh agent."""
    config = br.make_config(core=core)
    config.core.options.update(options)
    torch.manual_seed(0)
    agent = Agent((3,), gym.spaces.Discrete(2), config).eval()
    return br.Policy(agent, config, gym.spaces.Box(-np.inf, np.inf, (3,), np.float32), gym.spaces.Discrete(2),
                     torch.device("cpu"))


def test_act_names_a_state_for_another_batch_size():
    policy = untrained_policy("lstm")
    with pytest.raises(br.UserError, match=r"the state holds 3 rows but 4 observations were given; .*"
                                           r"policy.initial_state\(4\)"):
        policy.act(np.zeros((4, 3)), policy.initial_state(3), np.zeros(4, bool))


@pytest.mark.parametrize("given,into", [("brims", "lstm"), ("lstm", "brims"), ("lstm", "gru"),
                                        ("gru", "user_cores:Elman")])
def test_act_names_a_state_of_another_core(given, into):
    policy, other = untrained_policy(into), untrained_policy(given)
    expected = policy.initial_state(2)
    with pytest.raises(br.UserError) as raised:
        policy.act(np.zeros((2, 3)), other.initial_state(2), np.zeros(2, bool))
    message = str(raised.value)
    assert f"does not fit this policy's core '{policy.config.core.name}'" in message
    assert f"it keeps {len(expected)} tensor" in message and f"got {len(other.initial_state(2))} tensor" in message
    shape = f"[{', '.join(map(str, expected[0].shape))}] float32"
    assert shape in message.split("got")[0] and "\n" not in message  # what is expected, against what was given


def test_act_takes_no_state_as_new_episodes_and_a_numpy_state_that_fits():
    policy = untrained_policy("gru")
    obs = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    fresh_actions, fresh_state = policy.act(obs, None, None, greedy=True)
    actions, state = policy.act(obs, policy.initial_state(2), np.ones(2, bool), greedy=True)
    assert np.array_equal(fresh_actions, actions) and all(torch.equal(a, b) for a, b in zip(fresh_state, state))
    numpy_state = tuple(s.numpy() for s in state)
    again, _ = policy.act(obs, numpy_state, np.zeros(2, bool), greedy=True)
    assert again.shape == (2,)
    with pytest.raises(br.UserError, match=r"got 1 tensor \[2, 1, 128\] float64"):
        policy.act(obs, tuple(s.astype(np.float64) for s in numpy_state), np.zeros(2, bool))
    with pytest.raises(br.UserError, match="state must be the tuple of tensors act returned"):
        policy.act(obs, numpy_state[0], np.zeros(2, bool))


def test_act_refuses_non_finite_and_non_numeric_observations():
    policy = untrained_policy("lstm")
    obs = np.zeros((3, 3), np.float32)
    obs[1, 2] = np.nan
    with pytest.raises(br.UserError, match="observation 1 holds NaN"):
        policy.act(obs)
    obs[1, 2] = np.inf
    with pytest.raises(br.UserError, match="observation 1 holds an infinite value"):
        policy.act(obs)
    with pytest.raises(br.UserError, match="observations must be numbers"):
        policy.act(np.array([["a", "b", "c"]]))
    with pytest.raises(br.UserError, match="episode_start must hold booleans"):
        policy.act(np.zeros((2, 3)), None, np.array([0.5, 0.0]))


def test_act_names_discrete_observations_outside_their_space_and_takes_whole_floats():
    space = gym.spaces.Discrete(4, start=1)
    config = br.make_config(core="gru")
    torch.manual_seed(0)
    agent = Agent((4,), gym.spaces.Discrete(2), config).eval()
    policy = br.Policy(agent, config, gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Discrete(2),
                       torch.device("cpu"), env_observation_space=space)
    for bad, named in [([0, 2], "a Discrete value outside its space (0..3 after subtracting start)"),
                       ([5], "a Discrete value outside its space"),
                       ([1.5, 2.0], "a Discrete value that is not a whole number")]:
        with pytest.raises(br.UserError, match=re.escape(f"observations must be a batch of {space} for this policy; "
                                                         f"got {named}")):
            policy.act(np.array(bad))
    ints, _ = policy.act(np.array([1, 4]), greedy=True)
    floats, _ = policy.act(np.array([1.0, 4.0]), greedy=True)
    assert np.array_equal(ints, floats)


def test_the_api_names_arguments_of_the_wrong_kind():
    with pytest.raises(br.UserError, match=re.escape("train takes a br.Config (br.make_config('CueMemory-v0', ...) "
                                                     "builds one), got str")):
        br.train("CueMemory-v0")
    with pytest.raises(br.UserError, match="run_dir must be a path, got int"):
        br.train(br.make_config(), run_dir=3)
    with pytest.raises(br.UserError, match="load_policy takes the path of a run folder or checkpoint, got int"):
        br.load_policy(3)
    policy = untrained_policy("lstm")
    for n in (-1, 1.5, True):
        with pytest.raises(br.UserError, match="initial_state takes the number of episodes"):
            policy.initial_state(n)
    assert [s.shape[0] for s in policy.initial_state(0)] == [0, 0]


def test_value_and_distribution_are_the_agents():
    policy = untrained_policy("lstm")
    obs = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    starts = np.array([True, False, True, False])
    state = policy.act(obs, None, None)[1]  # a state that is not all zeros
    with torch.no_grad():
        logits, values, _ = policy.agent(torch.as_tensor(obs)[None], state, torch.as_tensor(starts)[None])
    assert np.array_equal(policy.value(obs, state, starts), values[0].numpy())
    dist = policy.distribution(obs, state, starts)
    assert isinstance(dist, torch.distributions.Categorical)
    assert torch.equal(dist.logits, torch.log_softmax(logits[0], -1))
    assert torch.equal(policy.value(torch.as_tensor(obs), state, torch.as_tensor(starts)), values[0])


def test_trace_modules_reads_a_modular_core_and_names_a_core_without_one():
    with pytest.raises(br.UserError, match="core 'lstm' keeps no module trace"):
        untrained_policy("lstm").trace_modules()
    policy = untrained_policy("rims")
    policy.trace_modules()
    state = None
    for _ in range(3):
        _, state = policy.act(np.zeros((2, 3), np.float32), state)
    (layer,) = policy.module_trace()
    assert layer["active"].shape == (3, 2, 6) and bool((layer["active"].sum(-1) == 4).all())


def test_a_policy_says_what_it_is(trained):
    _, result, _ = trained
    text = repr(br.load_policy(result.run_dir))
    assert text.startswith("Policy(env='CueMemory-v0', core='lstm' (") and "step 256" in text
    assert "Discrete(2)" in text and str(result.checkpoint) in text


# ---- br.evaluate ----------------------------------------------------------------------------------------------------
def test_evaluate_from_python_is_the_clis_evaluation(trained):
    _, result, _ = trained
    assert main(["evaluate", str(result.run_dir), "--episodes", "5", "--num-envs", "2", "--seed", "4"]) == 0
    written = json.loads((result.run_dir / "eval.json").read_text())
    scores = br.evaluate(result.run_dir, episodes=5, num_envs=2, seed=4)
    assert isinstance(scores, br.EvalResult) and scores.scores == written["scores"]
    assert scores.lengths == written["lengths"] and scores.mean == written["mean"] and scores.std == written["std"]
    policy = br.load_policy(result.run_dir)
    greedy = br.evaluate(policy, episodes=3, greedy=True, seed=0)
    assert greedy.scores == br.evaluate(policy, episodes=3, greedy=True, seed=0).scores and len(greedy.episodes) == 3
    assert [e.episode for e in greedy.episodes] == [1, 2, 3] and greedy.step == 256


def test_evaluate_takes_a_gymnasium_env_and_names_one_that_does_not_fit(trained):
    _, result, _ = trained
    policy = br.load_policy(result.run_dir)
    env = gym.make_vec("CueMemory-v0", num_envs=2,
                       vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP})
    played = br.evaluate(policy, env, episodes=4, greedy=True, seed=1)
    assert len(played.scores) == 4 and all(s in (-1.0, 1.0) for s in played.scores)
    env.close()
    same_step = gym.make_vec("CueMemory-v0", num_envs=2,
                             vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
    with pytest.raises(br.UserError, match="evaluate needs a gymnasium vector env with autoreset_mode NEXT_STEP"):
        br.evaluate(policy, same_step, episodes=2)
    same_step.close()
    with pytest.raises(br.UserError, match=r"env CartPole-v1 gives observations .*\(4,\).* but the policy was "
                                           r"trained on observations .*\(3,\)"):
        br.evaluate(policy, "CartPole-v1", episodes=2)


# ---- br.train: resume, callbacks ------------------------------------------------------------------------------------
def test_train_resumes_a_run_folder(tmp_path):
    config = br.make_config(total_steps=128, num_envs=2, overrides=SHORT)
    run = tmp_path / "run"
    assert br.train(config, run).step == 128
    assert br.train(run_dir=run, resume=True).step == 128  # already there: nothing to do
    longer = br.Config.load(run / "config.json")
    longer.total_steps = 256
    resumed = br.train(longer, run, resume=True)
    assert resumed.step == 256 and checkpoint.load(resumed.checkpoint)["global_step"] == 256
    assert br.Config.load(run / "config.json").total_steps == 256
    other = br.Config.load(run / "config.json")
    other.env.num_envs = 4
    with pytest.raises(br.UserError, match=r"env.num_envs cannot change when resuming"):
        br.train(other, run, resume=True)
    with pytest.raises(br.UserError, match="is not a brims-rl run folder"):
        br.train(run_dir=tmp_path / "nothing", resume=True)
    with pytest.raises(br.UserError, match=r"resume=True\)"):
        br.train(config, run)  # a new run into a folder that holds one says how to continue it


def test_a_callback_sees_the_losses_and_stops_training_with_a_checkpoint(tmp_path):
    config = br.make_config(total_steps=640, num_envs=2, overrides=SHORT)
    seen = []

    def stop_after_two(metrics):
        seen.append(metrics)
        return metrics["updates"] < 2

    result = br.train(config, tmp_path / "run", callback=stop_after_two)
    assert result.stopped and result.step == 128 and [m["updates"] for m in seen] == [1, 2]
    assert checkpoint.load(result.checkpoint)["global_step"] == 128
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "old_approx_kl", "clipfrac",
                "explained_variance", "nonfinite_skips", "steps_per_s", "learning_rate", "step"):
        assert isinstance(seen[-1][key], (int, float)), key
    assert seen[0]["approx_kl"] >= 0 and seen[0]["nonfinite_skips"] == 0
    assert not br.train(config, tmp_path / "all", callback=lambda metrics: None).stopped


def test_an_exception_in_a_callback_saves_a_checkpoint_first(tmp_path):
    config = br.make_config(total_steps=640, num_envs=2, overrides=SHORT)

    def fail_at_three(metrics):
        if metrics["updates"] == 3:
            raise KeyError("the callback's own bug")

    with pytest.raises(KeyError, match="the callback's own bug"):
        br.train(config, tmp_path / "run", callback=fail_at_three)
    assert checkpoint.load(tmp_path / "run" / "checkpoints" / "latest.pt")["global_step"] == 192


# ---- cores registered from Python -----------------------------------------------------------------------------------
def test_a_registered_importable_core_is_recorded_as_module_factory(tmp_path):
    br.register_core("elman-api", user_cores.Elman)
    config = br.make_config(core="elman-api", num_envs=2, total_steps=64, overrides=SHORT)
    assert config.core.name == "user_cores:Elman"


def test_a_core_registered_from_main_warns_and_names_the_fix_when_it_is_missing(tmp_path, capsys):
    def make_local(input_size, hidden_size=8):  # a factory no other process can import
        return user_cores.Elman(input_size, hidden_size)

    br.register_core("gatedgru-test", make_local)
    config = br.make_config(core="gatedgru-test", num_envs=2, total_steps=64, overrides=SHORT)
    assert config.core.name == "gatedgru-test"
    result = br.train(config, tmp_path / "run")
    assert "core 'gatedgru-test' is recorded under its registered name" in capsys.readouterr().err
    del cores._registry.factories["gatedgru-test"]  # as in a new process
    for load in (lambda: br.load_policy(result.run_dir), lambda: br.train(run_dir=result.run_dir, resume=True)):
        with pytest.raises(br.UserError, match=r"trained with core 'gatedgru-test', which is not registered in this "
                                               r"process: register it first \(br.register_core\('gatedgru-test', "
                                               r"factory\)\).*module:factory"):
            load()
