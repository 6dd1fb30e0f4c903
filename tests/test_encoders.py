"""Encoders (brims_rl/encoders.py, docs/cores.md "Encoders and heads"): the registry and `--encoder module:factory`,
the contract check, `auto`'s choice, the grid encoder's maths on a Dict observation with an image leaf, the worked
example docs/examples/my_encoder.py from the CLI, and old runs' configs building the very model they trained."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn

import brims_rl as br
import space_envs  # noqa: F401  (registers the envs)
from brims_rl import encoders
from brims_rl.agent import Agent
from brims_rl.cli import main
from cli_refusal import refused
from brims_rl.config import Config, ModelConfig, PerfConfig
from brims_rl.configure import compose_config
from brims_rl.encoders import GridEncoder, MLPEncoder, NatureCNN, ObservationLayout, POPGymEncoder
from brims_rl.environments import make_vec_env
from brims_rl.environments.spaces import ObservationFlattener

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
TINY = ["--num-envs", "2", "--set", "ppo.num_steps=16", "--set", "ppo.num_minibatches=2", "--set",
        "ppo.update_epochs=1", "--set", "core.options.hidden_size=16", "--set", "latest_every_s=0"]
GRID_DICT = gym.spaces.Dict({"direction": gym.spaces.Discrete(4), "image": gym.spaces.Box(0, 255, (7, 7, 3), np.uint8)})


def layout(space: gym.Space) -> ObservationLayout:
    return ObservationLayout.of((ObservationFlattener(space).size,), space)


# ---- user encoders -------------------------------------------------------------------------------------------------
class Doubler(nn.Module):
    """A user encoder: 2 x the flat observation, then a linear layer."""

    def __init__(self, observation: ObservationLayout, size: int = 5):
        super().__init__()
        self.linear = nn.Linear(int(np.prod(observation.shape)), size)
        self.output_size = size

    def forward(self, obs):
        return self.linear(2 * obs.float().flatten(1))


class WrongWidth(Doubler):
    def forward(self, obs):
        return super().forward(obs)[:, :-1]


def make_wrong_width(observation):
    return WrongWidth(observation)


def make_not_a_module(observation):
    return lambda obs: obs


def test_register_encoder_adds_a_name_and_refuses_a_clash_unless_overwrite():
    br.register_encoder("doubler", Doubler)
    assert br.encoder_names()[:5] == ["auto", "nature_cnn", "mlp", "grid", "popgym"]
    assert "doubler" in br.encoder_names()
    encoder = br.make_encoder("doubler", ObservationLayout((3,)), size=4)
    assert isinstance(encoder, Doubler) and encoder.output_size == 4
    with pytest.raises(ValueError, match="already registered"):
        br.register_encoder("doubler", Doubler)
    with pytest.raises(ValueError, match="already registered"):
        br.register_encoder("mlp", Doubler)
    with pytest.raises(ValueError, match="other than 'auto'"):
        br.register_encoder("auto", Doubler)
    br.register_encoder("doubler", WrongWidth, overwrite=True)
    with pytest.raises(br.UserError, match=r"encoder 'doubler' breaks the encoder contract \(a batch \[2, \*\(3,\)\] "
                                           r"must give float features \[2, 5\], got \(2, 4\)\)"):
        br.make_encoder("doubler", ObservationLayout((3,)))  # checked whenever it is made


def test_a_registered_encoder_builds_the_agent_through_the_config():
    br.register_encoder("doubler", Doubler)
    config = compose_config("CueMemory-v0", "lstm", overrides=["model.encoder=doubler",
                                                               "model.encoder_options.size=7"])
    agent = Agent((3,), 2, config)
    assert isinstance(agent.encoder, Doubler) and agent.encoder.output_size == 7
    assert agent.core.rnn.input_size == 7
    obs = torch.rand(1, 2, 3)
    features = agent.encoder(obs[0])
    torch.testing.assert_close(features, agent.encoder.linear(2 * obs[0]), rtol=0, atol=0)


BAD_ENCODERS = [
    ("nope", "unknown encoder 'nope'; choose one of: auto, nature_cnn, mlp, grid, popgym (or module:factory for "
             "your own)"),
    ("gird", "unknown encoder 'gird'; did you mean grid?"),
    ("nosuchmodule_xyz:make", "cannot import module 'nosuchmodule_xyz' for encoder 'nosuchmodule_xyz:make'"),
    ("test_encoders:make_nothing", "module 'test_encoders' has no attribute 'make_nothing'"),
    ("test_encoders:make_wrong_width", "encoder 'test_encoders:make_wrong_width' breaks the encoder contract"),
    ("test_encoders:make_not_a_module", "the factory must return a torch.nn.Module"),
    ("nature_cnn", "the nature_cnn encoder takes whole-observation frames [C, H, W], not observations of shape (3,)"),
]


@pytest.mark.parametrize("encoder,message", BAD_ENCODERS, ids=[e for e, _ in BAD_ENCODERS])
def test_a_bad_encoder_is_one_line_and_exit_2(encoder, message, tmp_path, capsys):
    run = tmp_path / "run"
    err = refused(["train", "--env", "CueMemory-v0", "--encoder", encoder, "--total-steps", "32", "--run-dir", str(run),
                   *TINY], run, capsys)
    assert message in err, err


def make_doubler(observation, size: int = 5):
    return Doubler(observation, size)


def test_bench_takes_an_encoder(capsys):
    args = ["bench", "--cores", "gru", "--env", "CueMemory-v0", "--num-envs", "2", "--updates", "1", "--json",
            "--set", "ppo.num_steps=8", "--set", "ppo.num_minibatches=2", "--set", "core.options.hidden_size=4"]
    assert main([*args, "--encoder", "test_encoders:make_doubler"]) == 0
    report = json.loads(capsys.readouterr().out)["cores"]["gru"]
    gru = 3 * (5 * 4 + 4 * 4 + 2 * 4)  # GRU(5 -> 4)
    heads = (4 * 2 + 2) + (4 + 1)  # actor (2 actions), critic
    assert (report["core_parameters"], report["parameters"]) == (gru, 3 * 5 + 5 + gru + heads)
    assert main([*args, "--encoder", "nope"]) == 2
    assert "unknown encoder 'nope'" in capsys.readouterr().err


def test_bad_heads_are_one_line(tmp_path, capsys):
    code = main(["train", "--env", "CueMemory-v0", "--set", "model.heads=deep", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown heads 'deep'; choose one of: linear, popgym, tanh" in err and err.count("\n") == 1


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "brims_rl", *args], capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, f"brims-rl {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def test_the_example_encoder_trains_resumes_and_evaluates_from_a_module(tmp_path):
    """docs/examples/my_encoder.py on MiniGrid's Dict observation (image, direction, mission)."""
    run = tmp_path / "run"
    cli("train", "--env", "MiniGrid-Empty-5x5-v0", "--encoder", "my_encoder:make_embedding", "--core", "gru",
        "--total-steps", "64", "--run-dir", str(run), *TINY, "--set", "model.encoder_options.output_size=12")
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["encoder"] == "my_encoder:make_embedding"
    assert config["model"]["encoder_options"] == {"output_size": 12}
    cli("train", "--resume", str(run), "--total-steps", "96")
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert state["global_step"] == 96
    assert state["model"]["encoder.tables.weight"].shape == (3 * 16, 8)  # one table per channel, 16 indices each
    assert state["model"]["encoder.grid.weight"].shape == (12, 7 * 7 * 8)
    assert state["model"]["core.rnn.weight_ih_l0"].shape == (3 * 16, 12 + 4)  # embedding features + direction
    evaluated = cli("evaluate", str(run), "--episodes", "2", "--num-envs", "2")
    assert "score" in evaluated.stdout


def test_the_example_encoder_looks_up_each_channel_in_its_own_table():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import my_encoder
    finally:
        sys.path.remove(str(EXAMPLES))
    observation = layout(GRID_DICT)
    encoder = my_encoder.make_embedding(observation, embed_size=3, output_size=5)
    encoders.check_encoder(encoder, observation, "my_encoder:make_embedding")
    image = np.zeros((1, 7, 7, 3), np.uint8)
    image[0, 2, 4] = [5, 1, 2]
    flat = torch.from_numpy(ObservationFlattener(GRID_DICT)({"direction": np.array([3]), "image": image}))
    with torch.no_grad():
        cells = encoder.tables.weight[torch.tensor([0, 16, 32])].sum(0).expand(7, 7, 3).clone()  # index 0 everywhere
        cells[2, 4] = encoder.tables.weight[5] + encoder.tables.weight[16 + 1] + encoder.tables.weight[32 + 2]
        expected = torch.relu(encoder.grid(cells.reshape(1, -1)))
        out = encoder(flat)
    tolerance = torch.finfo(torch.float32).eps * 7 * 7 * 3 * max(1.0, float(expected.abs().max()))  # fan-in 147
    torch.testing.assert_close(out[:, :5], expected, rtol=0, atol=tolerance)
    assert out[0, 5:].tolist() == [0, 0, 0, 1]


# ---- built-in encoders ---------------------------------------------------------------------------------------------
def test_auto_picks_by_the_observation():
    model, perf = ModelConfig(), PerfConfig()
    frames = encoders.build_encoder(ObservationLayout((4, 84, 84)), model, perf)
    assert isinstance(frames, NatureCNN) and frames.output_size == 512
    vector = encoders.build_encoder(ObservationLayout((13,)), model, perf)
    assert isinstance(vector, MLPEncoder) and vector.output_size == 512
    assert vector.net[1].in_features == 13 and vector.net[1].out_features == 64
    grid = encoders.build_encoder(layout(GRID_DICT), model, perf)
    assert isinstance(grid, GridEncoder) and grid.output_size == 64 + 4
    small_frames = encoders.build_encoder(ObservationLayout((3, 7, 7)), model, perf)  # MiniGrid's image alone
    assert isinstance(small_frames, GridEncoder) and small_frames.output_size == 64
    popgym = encoders.build_encoder(ObservationLayout((10,)), ModelConfig(encoder="popgym", encoder_size=32), perf)
    assert isinstance(popgym, POPGymEncoder) and popgym.output_size == 32


@pytest.mark.parametrize("height,width,features", [(7, 7, 64), (9, 7, 128), (11, 11, 64 * 9), (32, 32, 64 * 169)])
def test_grid_features_follow_the_convolutions(height, width, features):
    """2x2 conv (H-1), 2x2 max pool (floor half), two 2x2 convs (-1 each), 64 channels."""
    assert encoders.grid_features(height, width) == features == 64 * ((height - 1) // 2 - 2) * ((width - 1) // 2 - 2)
    convs = encoders.grid_convolutions(3)
    assert convs(torch.zeros(2, 3, height, width)).shape == (2, features)


def test_the_grid_encoder_reads_the_image_leaf_channels_last_and_passes_the_vectors():
    """On a Dict of a [7, 7, 3] image and a Discrete(4) direction: the features are the convolutions of the image
    as [3, 7, 7] (channel c of cell (i, j) at [c, i, j]) followed by the direction's one-hot, exactly."""
    encoder = GridEncoder(layout(GRID_DICT))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 11, (3, 7, 7, 3)).astype(np.uint8)
    direction = np.array([0, 3, 1])
    flat = torch.from_numpy(ObservationFlattener(GRID_DICT)({"direction": direction, "image": image}))
    chw = torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 1, 2))).float()  # unscaled, as MiniGrid's
    with torch.no_grad():
        out = encoder(flat)
        expected = encoder.convs[0](chw)
    assert out.shape == (3, 68)
    # the same sums in another memory layout: float32 rounding of the largest fan-in (32 x 2 x 2) over 3 layers
    tolerance = torch.finfo(torch.float32).eps * 128 * 3 * max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(out[:, :64], expected, rtol=0, atol=tolerance)
    np.testing.assert_array_equal(out[:, 64:].numpy(), np.eye(4)[direction])
    # a change in one cell's channel changes the features; the direction leaf does not reach them
    image2 = image.copy()
    image2[1, 3, 6, 0] += 1
    flat2 = torch.from_numpy(ObservationFlattener(GRID_DICT)({"direction": direction, "image": image2}))
    with torch.no_grad():
        out2 = encoder(flat2)
    assert torch.equal(out2[[0, 2]], out[[0, 2]]) and not torch.equal(out2[1, :64], out[1, :64])


def test_the_grid_encoder_takes_several_image_leaves_and_split_vectors():
    space = gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Box(0, 9, (8, 7, 2), np.uint8),
                              gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Box(0, 9, (7, 9, 1), np.uint8)))
    encoder = GridEncoder(layout(space))
    assert encoder.output_size == encoders.grid_features(8, 7) + encoders.grid_features(7, 9) + 2 + 3
    assert [conv[0].in_channels for conv in encoder.convs] == [2, 1]
    assert encoder.vector_slices == [(0, 2), (2 + 112, 2 + 112 + 3)]
    encoders.check_encoder(encoder, layout(space), "grid")


@pytest.mark.parametrize("shape", [(6, 6, 3), (33, 7, 3), (4, 4, 3), (8, 8), (2, 7, 7, 3)])
def test_an_image_leaf_no_encoder_takes_is_one_user_error(shape):
    space = gym.spaces.Dict({"screen": gym.spaces.Box(0, 255, shape, np.uint8), "bit": gym.spaces.Discrete(2)})
    with pytest.raises(br.UserError, match=rf"no built-in encoder takes the image of shape {shape}"
                                           r" at \['screen'\]".replace("(", r"\(").replace(")", r"\)")):
        encoders.build_encoder(layout(space), ModelConfig(), PerfConfig())
    with pytest.raises(br.UserError, match="no built-in encoder takes the image of shape"):
        encoders.build_encoder(ObservationLayout((3, 20, 20)), ModelConfig(encoder="nature_cnn"), PerfConfig())


def test_the_grid_encoder_needs_an_image():
    with pytest.raises(br.UserError, match="the grid encoder needs an image"):
        encoders.build_encoder(ObservationLayout((5,)), ModelConfig(encoder="grid"), PerfConfig())


def test_the_popgym_encoder_is_popgyms_input_map():
    encoder = POPGymEncoder((10,), 128)
    linear1, norm, linear2, act = encoder.net[1], encoder.net[2], encoder.net[3], encoder.net[4]
    assert (linear1.in_features, linear1.out_features, linear2.in_features, linear2.out_features) == (10, 128, 128, 128)
    assert isinstance(norm, nn.LayerNorm) and not norm.elementwise_affine and isinstance(act, nn.LeakyReLU)
    assert sum(p.numel() for p in encoder.parameters()) == 10 * 128 + 128 + 128 * 128 + 128  # the norm learns nothing
    # orthogonal weights of gain 1: W W^T = I for the square map, W^T W = I for the tall one
    eye = torch.eye(128)
    torch.testing.assert_close(linear2.weight @ linear2.weight.T, eye, rtol=0, atol=1e-5)
    torch.testing.assert_close(linear1.weight.T @ linear1.weight, torch.eye(10), rtol=0, atol=1e-5)
    x = torch.randn(4, 10)
    z = torch.nn.functional.layer_norm(x @ linear1.weight.T + linear1.bias, (128,))
    expected = torch.nn.functional.leaky_relu(z @ linear2.weight.T + linear2.bias, 0.01)
    torch.testing.assert_close(encoder(x), expected)


# ---- old runs -----------------------------------------------------------------------------------------------------
OLD_RUNS = {  # committed config.json files of runs trained before model.encoder/heads and env.previous_action existed
    "docs/results/cpu/runs/breakout_lstm": ((4, 84, 84), 4, {
        "encoder.convs.0.weight": (32, 4, 8, 8), "encoder.convs.0.bias": (32,),
        "encoder.convs.2.weight": (64, 32, 4, 4), "encoder.convs.2.bias": (64,),
        "encoder.convs.4.weight": (64, 64, 3, 3), "encoder.convs.4.bias": (64,),
        "encoder.fc.0.weight": (512, 3136), "encoder.fc.0.bias": (512,),
        "core.rnn.weight_ih_l0": (512, 512), "core.rnn.weight_hh_l0": (512, 128),
        "core.rnn.bias_ih_l0": (512,), "core.rnn.bias_hh_l0": (512,),
        "actor.weight": (4, 128), "actor.bias": (4,), "critic.weight": (1, 128), "critic.bias": (1,)}),
    "docs/results/cpu/popgym-long/popgym-RepeatPreviousEasy-v0__gru__popgym__s1": ((4,), 4, {
        "encoder.net.1.weight": (128, 4), "encoder.net.1.bias": (128,),
        "encoder.net.3.weight": (128, 128), "encoder.net.3.bias": (128,),
        "core.rnn.weight_ih_l0": (384, 128), "core.rnn.weight_hh_l0": (384, 128),
        "core.rnn.bias_ih_l0": (384,), "core.rnn.bias_hh_l0": (384,),
        "actor.weight": (4, 128), "actor.bias": (4,), "critic.weight": (1, 128), "critic.bias": (1,)}),
}


@pytest.mark.parametrize("run", sorted(OLD_RUNS))
def test_an_old_runs_config_builds_the_model_it_trained(run):
    data = json.loads((ROOT / run / "config.json").read_text())
    assert "encoder" not in data["model"] and "heads" not in data["model"] and "previous_action" not in data["env"]
    config = Config.load(ROOT / run / "config.json")
    assert (config.model.encoder, config.model.heads, config.env.previous_action) == ("auto", "linear", False)
    obs_shape, actions, expected = OLD_RUNS[run]
    env_space = None
    if config.env.id.startswith("popgym-"):  # the env it trained on, as it trained: no previous action
        env = make_vec_env(config.env, 1, seed=0)
        assert env.single_observation_space.shape == obs_shape
        env_space = env.env_observation_space
        env.close()
    agent = Agent(obs_shape, actions, config, env_space)
    assert {key: tuple(value.shape) for key, value in agent.state_dict().items()} == expected
    assert isinstance(agent.actor, nn.Linear) and isinstance(agent.critic, nn.Linear)
    # CleanRL's head initialisation, as before: orthogonal rows of gain 0.01 (actor) and 1 (critic), zero bias
    torch.testing.assert_close(agent.actor.weight @ agent.actor.weight.T, 1e-4 * torch.eye(4), rtol=0, atol=1e-9)
    assert torch.count_nonzero(agent.actor.bias) == 0 and torch.count_nonzero(agent.critic.bias) == 0
