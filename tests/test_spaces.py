"""Observation and action spaces end to end (docs/spaces.md): flattening maths and order, refused spaces (one line,
exit 2), and for every new observation and action space a tiny scripted env trained from the CLI, resumed,
evaluated (sampled and greedy) and acted on by `br.load_policy(...).act` with the env's own observations."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import brims_rl as br
import space_envs  # noqa: F401  (registers the envs)
from brims_rl import checkpoint
from brims_rl.cli import main
from brims_rl.environments.gym_env import GymVecEnv
from brims_rl.environments.spaces import ObservationFlattener, describe_space, space_from_description
from brims_rl.errors import RunFailure, UserError

TESTS = Path(__file__).resolve().parent
SMALL = ["--set", "ppo.num_steps=32", "--set", "ppo.num_minibatches=2", "--set", "ppo.update_epochs=2",
         "--set", "model.encoder_size=16", "--set", "model.mlp_hidden=16", "--set", "core.options.hidden_size=16"]


def vec(env_id: str, n: int = 2, **kwargs) -> gym.vector.VectorEnv:
    return gym.make_vec(env_id, num_envs=n, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}, **kwargs)


# ---- flattening ----------------------------------------------------------------------------------------------------
def test_a_nested_dict_is_flattened_in_sorted_key_order_with_one_hots():
    space = gym.spaces.Dict({"pos": gym.spaces.Box(-1, 1, (2, 2), np.float32),
                             "bit": gym.spaces.MultiDiscrete([2, 3]),
                             "nested": gym.spaces.Tuple((gym.spaces.MultiBinary(2), gym.spaces.Discrete(3, start=1)))})
    assert list(space.spaces) == ["bit", "nested", "pos"]  # gymnasium sorts a Dict's keys
    flatten = ObservationFlattener(space)
    assert flatten.size == 5 + 2 + 3 + 4 == 14
    batch = {"bit": np.array([[1, 2], [0, 0]]), "nested": (np.array([[0, 1], [1, 1]], np.int8), np.array([3, 1])),
             "pos": np.arange(8, dtype=np.float32).reshape(2, 2, 2)}
    out = flatten(batch)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[0], [0, 1, 0, 0, 1,  0, 1,  0, 0, 1,  0, 1, 2, 3])
    np.testing.assert_array_equal(out[1], [1, 0, 1, 0, 0,  1, 1,  1, 0, 0,  4, 5, 6, 7])


def test_tuple_multidiscrete_multibinary_and_discrete_leaves():
    space = gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.MultiDiscrete([[2, 2], [3, 1]], start=[[1, 0], [0, 5]]),
                              gym.spaces.MultiBinary([2, 2])))
    flatten = ObservationFlattener(space)
    batch = (np.array([1]), np.array([[[2, 1], [2, 5]]]), np.array([[[1, 0], [0, 1]]], np.int8))
    np.testing.assert_array_equal(flatten(batch)[0], [0, 1,  0, 1, 0, 1, 0, 0, 1, 1,  1, 0, 0, 1])
    with pytest.raises(TypeError):
        flatten(np.zeros((1, 14), np.float32))  # a flat batch is not a tuple of arrays


@pytest.mark.parametrize("space", [
    gym.spaces.Dict({"a": gym.spaces.Box(-1, 2, (3,), np.float32), "b": gym.spaces.Discrete(4, start=2)}),
    gym.spaces.Tuple((gym.spaces.MultiDiscrete([2, 5], start=[0, 1]), gym.spaces.MultiBinary(3))),
    gym.spaces.Box(0, 255, (4, 84, 84), np.uint8),
    gym.spaces.Box(np.array([-1.0, 0.0]), np.array([1.0, 3.0]), dtype=np.float32),
])
def test_spaces_survive_their_plain_data_description(space):
    data = describe_space(space)
    assert json.loads(json.dumps(data)) == data  # plain data, as weights_only loading needs
    assert space_from_description(data) == space


@pytest.mark.parametrize(("env_id", "match"), [
    ("TextObs-v0", "Text is not supported"),
    ("TinyImageInDict-v0", "no built-in encoder takes the image of shape (4, 4, 3) at ['screen']"),
    ("MatrixImageInDict-v0", "no built-in encoder takes the image of shape (8, 8) at ['screen']"),
    ("MultiBinaryAct-v0", "action space MultiBinary"),
])
def test_unsupported_spaces_are_one_line_and_exit_2(env_id, match, tmp_path, capsys):
    code = main(["train", "--env", f"space_envs:{env_id}", "--total-steps", "64", "--run-dir",
                 str(tmp_path / "run"), *SMALL])
    err = capsys.readouterr().err
    assert code == 2 and match in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_an_unsupported_space_from_the_command_line_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "brims_rl", "train", "--env", "space_envs:TinyImageInDict-v0",
                           "--run-dir", str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "no built-in encoder takes the image" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_an_image_leaf_is_a_box_of_rank_3_or_a_uint8_matrix_and_is_flattened_in_place():
    for leaf, image in [(gym.spaces.Box(0, 1, (4, 4, 1), np.float32), True),
                        (gym.spaces.Box(0, 255, (4, 4), np.uint8), True),
                        (gym.spaces.Box(0, 1, (4, 4), np.float32), False),
                        (gym.spaces.Box(0, 255, (16,), np.uint8), False)]:
        flatten = ObservationFlattener(gym.spaces.Tuple((leaf, gym.spaces.Discrete(2))))
        size = int(np.prod(leaf.shape))
        assert flatten.size == size + 2
        assert [(l.path, l.image, l.start, l.stop) for l in flatten.leaves] == [((0,), image, 0, size),
                                                                                 ((1,), False, size, size + 2)]
    # an [H, W, C] image leaf's values sit in the vector in C order, where `leaves` says
    space = gym.spaces.Dict({"direction": gym.spaces.Discrete(4), "image": gym.spaces.Box(0, 255, (7, 7, 3), np.uint8)})
    flatten = ObservationFlattener(space)
    image = np.random.default_rng(0).integers(0, 11, (2, 7, 7, 3)).astype(np.uint8)
    out = flatten({"direction": np.array([2, 0]), "image": image})
    assert out.shape == (2, 4 + 147) and [l.path for l in flatten.leaves] == [("direction",), ("image",)]
    np.testing.assert_array_equal(out[:, :4], [[0, 0, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(out[:, 4:].reshape(2, 7, 7, 3), image)


def test_text_inside_a_dict_is_dropped_and_elsewhere_refused():
    space = gym.spaces.Dict({"mission": gym.spaces.Text(10), "bit": gym.spaces.Discrete(2),
                             "inner": gym.spaces.Dict({"note": gym.spaces.Text(5), "x": gym.spaces.Box(0, 1, (2,))})})
    flatten = ObservationFlattener(space)
    assert flatten.dropped == [("inner", "note"), ("mission",)] and flatten.size == 4
    assert flatten.kept_space == gym.spaces.Dict({"bit": gym.spaces.Discrete(2),
                                                  "inner": gym.spaces.Dict({"x": gym.spaces.Box(0, 1, (2,))})})
    out = flatten({"mission": ("a", "b"), "bit": np.array([1, 0]),
                   "inner": {"note": ("c", "d"), "x": np.array([[0.5, 1.0], [0.0, 0.25]], np.float32)}})
    np.testing.assert_array_equal(out, [[0, 1, 0.5, 1.0], [1, 0, 0.0, 0.25]])
    unchanged = gym.spaces.Dict({"bit": gym.spaces.Discrete(2)})
    assert ObservationFlattener(unchanged).kept_space is unchanged and ObservationFlattener(unchanged).dropped == []
    with pytest.raises(UserError, match="Text at \\[1\\] is not supported"):  # a Tuple keeps its positions
        ObservationFlattener(gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Text(5))))
    with pytest.raises(UserError, match="holds no values"):
        ObservationFlattener(gym.spaces.Dict({"mission": gym.spaces.Text(5)}))


class OutOfSpaceEnv(gym.Env):
    """Claims Discrete(3) observations and returns 3: an env bug the adapter must name."""

    observation_space = gym.spaces.Discrete(3)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        return 3, {}

    def step(self, action):
        return 3, 0.0, False, False, {}


def test_an_observation_outside_its_space_stops_the_run_naming_the_env():
    env = GymVecEnv(gym.vector.SyncVectorEnv([OutOfSpaceEnv] * 2, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP),
                    seed=0, name="OutOfSpace-v0")
    named = "a Discrete value outside its space (0..2 after subtracting start)"
    with pytest.raises(RunFailure, match=re.escape(f"env OutOfSpace-v0 returned an observation with {named}")):
        env.reset()
    env.close()


def test_the_gym_adapter_flattens_what_the_vector_env_batches():
    env = GymVecEnv(vec("ObsCue-dict-v0", 3), seed=0)
    obs = env.reset()
    assert obs.shape == (3, 13) and obs.dtype == np.float32
    assert env.single_observation_space.shape == (13,)
    assert isinstance(env.env_observation_space, gym.spaces.Dict)
    step = env.step(np.zeros(3, dtype=np.int64))
    assert step.obs.shape == (3, 13)
    env.close()


# ---- end to end ----------------------------------------------------------------------------------------------------
def raw_batch(env_id: str, n: int = 3):
    env = vec(env_id, n)
    obs, _ = env.reset(seed=5)
    return env, obs


def check_actions(space: gym.Space, actions: np.ndarray, n: int) -> None:
    assert len(actions) == n
    for a in actions:
        if isinstance(space, gym.spaces.Discrete):
            assert space.contains(np.int64(a))
        else:
            assert space.contains(np.asarray(a, dtype=space.dtype)), (space, a)


@pytest.mark.parametrize("env_id", [f"ObsCue-{kind}-v0" for kind in space_envs.OBS_KINDS]
                         + ["MultiDiscreteAct-v0", "BoxAct-v0"])
def test_train_resume_evaluate_and_act_end_to_end(env_id, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--env", f"space_envs:{env_id}", "--core", "lstm", "--total-steps", "128",
                 "--num-envs", "2", "--run-dir", str(run), *SMALL]) == 0
    assert main(["train", "--resume", str(run), "--total-steps", "256"]) == 0
    payload = checkpoint.load(run / "checkpoints" / "latest.pt")
    assert payload["global_step"] == 256
    for greedy in ([], ["--greedy"]):
        assert main(["evaluate", str(run), "--episodes", "3", "--num-envs", "2", *greedy]) == 0
        record = json.loads((run / "eval.json").read_text())
        assert len(record["scores"]) == 3 and record["settings"]["greedy"] == bool(greedy)
        assert all(length == space_envs.EPISODE for length in record["lengths"])
    capsys.readouterr()

    policy = br.load_policy(run)
    env, obs = raw_batch(env_id)
    assert policy.action_space == env.single_action_space
    if not isinstance(env.single_observation_space, gym.spaces.Box):  # a Box stays the flat Box, as before
        # the env's own space, less a text leaf (the grid kind's mission), which the policy is given and ignores
        assert policy.env_observation_space == ObservationFlattener(env.single_observation_space).kept_space
    starts = np.ones(3, bool)
    for greedy in (False, True):
        actions, state = policy.act(obs, policy.initial_state(3), starts, greedy=greedy)
        check_actions(env.single_action_space, actions, 3)
    step = env.step(actions)
    actions2, _ = policy.act(step[0], state, np.zeros(3, bool), greedy=True)
    check_actions(env.single_action_space, actions2, 3)
    if not isinstance(env.single_observation_space, gym.spaces.Box):  # the flat batch the agent sees acts the same
        flat = ObservationFlattener(env.single_observation_space)(obs)
        same, _ = policy.act(flat, policy.initial_state(3), starts, greedy=True)
        np.testing.assert_array_equal(same, actions)
    env.close()


def test_a_checkpoint_records_the_env_spaces(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--env", "space_envs:ObsCue-tuple-v0", "--core", "ff", "--total-steps", "64",
                 "--num-envs", "2", "--run-dir", str(run), *SMALL]) == 0
    payload = checkpoint.load(run / "checkpoints" / "latest.pt")
    assert payload["observation"] == {"shape": [4], "dtype": "float32",
                                      "space": describe_space(gym.spaces.Tuple((gym.spaces.Discrete(2),
                                                                                 gym.spaces.Box(-1, 1, (2,), np.float32))))}
    assert payload["actions"] == {"n": 2}  # Discrete keeps the old format

    run2 = tmp_path / "box"
    assert main(["train", "--env", "space_envs:BoxAct-v0", "--core", "ff", "--total-steps", "64",
                 "--num-envs", "2", "--run-dir", str(run2), *SMALL]) == 0
    payload = checkpoint.load(run2 / "checkpoints" / "latest.pt")
    assert payload["actions"] == {"type": "Box", "shape": [2], "dtype": "float32", "low": -1.0, "high": 1.0}
    assert "observation" in payload and "space" not in payload["observation"]
    assert payload["model"]["action_head.log_std"].shape == (2,)  # the Gaussian's learnt log-std


def test_an_old_checkpoint_without_the_env_space_still_acts_on_flat_vectors(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--env", "space_envs:ObsCue-discrete-v0", "--core", "ff", "--total-steps", "64",
                 "--num-envs", "2", "--run-dir", str(run), *SMALL]) == 0
    file = run / "checkpoints" / "latest.pt"
    payload = checkpoint.load(file)
    del payload["observation"]["space"], payload["format"]
    checkpoint.save_atomic(payload, file)
    policy = br.load_policy(run)
    assert policy.env_observation_space == policy.observation_space == gym.spaces.Box(-np.inf, np.inf, (2,),
                                                                                        np.float32)
    actions, _ = policy.act(np.eye(2, dtype=np.float32), policy.initial_state(2), np.ones(2, bool))
    assert actions.shape == (2,)
