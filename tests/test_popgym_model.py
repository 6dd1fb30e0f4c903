"""POPGym's model and observation under `--protocol popgym` (docs/popgym.md, "The model"): the input map, the heads
and the memory-256 presets, layer by layer and parameter by parameter against the numbers docs/popgym.md states
(each also computed here from the textbook formulas), and the previous action and is-first flag that popgym's own
wrappers add to the observation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn

from brims_rl import checkpoint
from brims_rl.agent import Agent, count_parameters
from brims_rl.cli import main
from brims_rl.config import EnvConfig
from brims_rl.configure import compose_config
from brims_rl.encoders import POPGymEncoder
from brims_rl.environments import make_vec_env
from brims_rl.errors import UserError
from brims_rl.presets import load_preset, load_protocol

pytest.importorskip("popgym")

from test_presets import modular_layer_parameters, rnn_parameters  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REPEAT = "popgym-RepeatPreviousEasy-v0"
OBS = 4 + 4 + 2  # RepeatPrevious' card (Discrete 4), the previous action (Discrete 4), the is-first flag (Discrete 2)
ACTIONS = 4
H = 128  # POPGym's h: the input map's and the heads' width


def documented_presets() -> dict[str, dict[str, int]]:
    """The table of docs/popgym.md's "The model" section: preset -> core parameters, total parameters, core output."""
    text = (ROOT / "docs" / "popgym.md").read_text()
    section = text[text.index("## The model"):]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`") and cells[0].endswith("-popgym`"):
            numbers = [int(c.replace(",", "")) for c in cells[2:]]
            rows[cells[0].strip("`")] = dict(zip(("core", "total", "output"), numbers))
        elif rows and not line.strip():
            break
    return rows


def modular_core_parameters(options: dict, input_size: int) -> int:
    """RIMs (one layer) or BRIMs (two layers, the lower reading the higher as one slot) from the textbook formula."""
    o = options
    args = (o["num_modules"], o["module_size"], o["cell"], o["heads"], o["input_key_size"], o["input_value_size"],
            o["comm_heads"], o["comm_key_size"], o["comm_value_size"])
    if o.get("num_layers", 1) == 1:
        return modular_layer_parameters(input_size, 0, *args)
    higher = o["num_modules"] * o["module_size"]  # top_down_slots "layer": the layer above is one slot
    return modular_layer_parameters(input_size, higher, *args) + modular_layer_parameters(o["module_size"], 0, *args)


def expected_core(preset: str) -> tuple[int, int]:
    """(core parameters, core output) of a POPGym preset on the 128-wide input map, from the formulas."""
    core = load_preset("agent", preset)["core"]
    o = core["options"]
    if core["name"] in ("lstm", "gru"):
        return rnn_parameters(4 if core["name"] == "lstm" else 3, H, o["hidden_size"]), o["hidden_size"]
    if core["name"] == "ff":
        return H * o["hidden_size"] + o["hidden_size"], o["hidden_size"]
    return modular_core_parameters(o, H), o.get("num_layers", 1) * o["num_modules"] * o["module_size"]


def head_parameters(inputs: int, outputs: int) -> int:
    return (inputs * H + H) + (H * H + H) + (H * outputs + outputs)


def popgym_agent(core: str) -> tuple[Agent, object]:
    config = compose_config(REPEAT, core, protocol="popgym")
    env = make_vec_env(config.env, 2, seed=0)
    agent = Agent(env.single_observation_space.shape, env.single_action_space, config, env.env_observation_space)
    env.close()
    return agent, config


def test_the_documented_presets_are_every_popgym_stand_in():
    documented = documented_presets()
    assert sorted(documented) == sorted(load_protocol("popgym")["agents"].values())
    assert sorted(documented) == ["brims-popgym", "ff-popgym", "gru-popgym", "lstm-popgym", "rims-popgym"]


@pytest.mark.parametrize("core", ["ff", "lstm", "gru", "rims", "brims"])
def test_popgyms_model_has_the_documented_layers_and_parameter_counts(core):
    agent, config = popgym_agent(core)
    preset = config.agent
    documented = documented_presets()[preset]
    core_params, core_out = expected_core(preset)
    assert (count_parameters(agent.core), agent.core.output_size) == (core_params, core_out)
    assert (documented["core"], documented["output"]) == (core_params, core_out)

    # input map: Linear(10, 128) + LayerNorm(128, no affine), Linear(128, 128) + LeakyReLU
    assert isinstance(agent.encoder, POPGymEncoder)
    layers = [m for m in agent.encoder.net if not isinstance(m, nn.Flatten)]
    assert [type(m) for m in layers] == [nn.Linear, nn.LayerNorm, nn.Linear, nn.LeakyReLU]
    assert (layers[0].in_features, layers[0].out_features, layers[2].in_features, layers[2].out_features) == (
        OBS, H, H, H)
    assert layers[1].normalized_shape == (H,) and not layers[1].elementwise_affine
    encoder = OBS * H + H + H * H + H
    assert count_parameters(agent.encoder) == encoder

    # heads: 2 x (Linear(128) + LeakyReLU) each, then Linear to the logits / the value
    for head, outputs in ((agent.actor, ACTIONS), (agent.critic, 1)):
        assert [type(m) for m in head] == [nn.Linear, nn.LeakyReLU, nn.Linear, nn.LeakyReLU, nn.Linear]
        assert [(m.in_features, m.out_features) for m in head if isinstance(m, nn.Linear)] == [
            (core_out, H), (H, H), (H, outputs)]
    total = encoder + core_params + head_parameters(core_out, ACTIONS) + head_parameters(core_out, 1)
    assert count_parameters(agent) == total == documented["total"]


def test_rims_and_brims_stand_ins_are_sized_to_the_gru_256():
    gru = documented_presets()["gru-popgym"]["core"]
    assert gru == rnn_parameters(3, H, 256) == 296_448
    for preset, module_size in (("rims-popgym", 43), ("brims-popgym", 29)):
        options = load_preset("agent", preset)["core"]["options"]
        base = load_preset("agent", preset.removesuffix("-popgym"))["core"]["options"]
        assert {k: v for k, v in options.items() if k != "module_size"} == \
            {k: v for k, v in base.items() if k != "module_size"}  # the shipped preset's layout, resized
        assert options["module_size"] == module_size
        # the closest module size: one smaller or larger misses GRU(128, 256) by more
        miss = {size: abs(modular_core_parameters({**options, "module_size": size}, H) - gru)
                for size in (module_size - 1, module_size, module_size + 1)}
        assert miss[module_size] < min(miss[module_size - 1], miss[module_size + 1])
        assert miss[module_size] / gru < 0.01


def test_the_heads_and_input_map_start_as_popgyms():
    agent, _ = popgym_agent("gru")
    final = agent.actor[4].weight.detach()
    # output layers: normal with std 0.01 (512 draws: the sample std is within 15% of it with overwhelming odds)
    assert 0.0085 < float(final.std()) < 0.0115 and float(agent.critic[4].weight.detach().abs().max()) < 0.06
    hidden = agent.actor[2].weight.detach()  # orthogonal, gain 1
    assert float((hidden @ hidden.T - torch.eye(H)).abs().max()) < 1e-5


# ---- the previous action -----------------------------------------------------------------------------------------
def test_the_previous_action_and_first_flag_join_the_observation_through_popgyms_wrappers():
    config = compose_config(REPEAT, "gru", protocol="popgym")
    env = make_vec_env(config.env, 3, seed=0)
    assert env.env_observation_space == gym.spaces.Tuple((gym.spaces.Discrete(4), gym.spaces.Discrete(4),
                                                          gym.spaces.Discrete(2)))
    inner = env.env.envs[0]
    assert type(inner).__name__ == "Antialias" and type(inner.env).__name__ == "PreviousAction"
    obs = env.reset()
    assert obs.shape == (3, OBS)
    np.testing.assert_array_equal(obs[:, 4:8], np.tile([1, 0, 0, 0], (3, 1)))  # the null action, 0
    np.testing.assert_array_equal(obs[:, 8:], np.tile([0, 1], (3, 1)))  # the first observation
    rng = np.random.default_rng(0)
    for _ in range(12):
        actions = rng.integers(0, 4, 3)
        step = env.step(actions)
        for i in range(3):
            if step.ignored[i]:  # an autoreset step returns a first observation with the null action
                np.testing.assert_array_equal(step.obs[i, 4:], [1, 0, 0, 0, 0, 1])
            else:
                np.testing.assert_array_equal(step.obs[i, 4:8], np.eye(4)[actions[i]])
                np.testing.assert_array_equal(step.obs[i, 8:], [1, 0])
    env.close()


def test_previous_action_is_for_popgym_ids_only():
    with pytest.raises(UserError, match="env.previous_action applies to POPGym ids"):
        make_vec_env(EnvConfig(id="CartPole-v1", previous_action=True), 2, seed=0)


def test_the_popgym_protocol_documents_its_model_keys():
    docs = (ROOT / "docs" / "popgym.md").read_text()
    spec = load_protocol("popgym")
    for key in spec["model"]:
        assert f"`model.{key}`" in docs, key
    assert "`env.previous_action`" in docs


def test_train_builds_popgyms_model_with_the_previous_action(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--env", REPEAT, "--core", "gru", "--protocol", "popgym", "--num-envs", "8",
                 "--set", "ppo.num_steps=16", "--set", "ppo.update_epochs=1", "--total-steps", "128",
                 "--run-dir", str(run), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((run / "config.json").read_text())
    assert saved["agent"] == "gru-popgym" and saved["core"]["options"] == {"hidden_size": 256}
    assert saved["model"]["encoder"] == "popgym" and saved["model"]["heads"] == "popgym"
    assert saved["env"]["previous_action"] is True and saved["total_steps"] == 128
    payload = checkpoint.load(run / "checkpoints" / "latest.pt")
    assert payload["observation"]["shape"] == [OBS]
    assert [s["type"] for s in payload["observation"]["space"]["spaces"]] == ["Discrete"] * 3
    assert payload["model"]["encoder.net.1.weight"].shape == (H, OBS)
    assert payload["model"]["actor.4.weight"].shape == (ACTIONS, H)
    assert main(["evaluate", str(run), "--episodes", "2", "--num-envs", "2"]) == 0
    assert re.search(r"score -?\d", capsys.readouterr().out)
