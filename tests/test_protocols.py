"""Published protocols (`--protocol NAME`): their settings reach config.json and the envs; flags and --set win."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from brims_rl.cli import main
from brims_rl.environments import make_vec_env
from brims_rl.errors import UserError
from brims_rl.presets import load_protocol, preset_names, protocol_names
from brims_rl.configure import compose_config

PROTOCOL_DIR = Path(__file__).resolve().parent.parent / "envs" / "protocols"

# What each protocol must say, from the published sources (docs/configuration.md, "Protocols").
PUBLISHED = {
    "paper": {"total_steps": 40_000_000, "env.max_episode_steps": 100_000, "env.frame_stack": 4,
              "env.sticky_actions": 0.0, "env.episodic_life": True, "env.num_envs": 8, "ppo.clip_coef": 0.1,
              "ppo.learning_rate": 2.5e-4, "ppo.anneal_lr": True, "ppo.ent_coef": 0.01, "ppo.vf_coef": 0.5,
              "ppo.gae_lambda": 0.95, "ppo.num_steps": 128, "ppo.update_epochs": 4, "ppo.num_minibatches": 4},
    "cleanrl": {"total_steps": 10_000_000, "env.max_episode_steps": 27_000, "env.frame_stack": 1,
                "env.sticky_actions": 0.0, "env.episodic_life": True, "env.num_envs": 8, "ppo.clip_coef": 0.1,
                "ppo.learning_rate": 2.5e-4, "ppo.num_steps": 128},
    "machado": {"env.sticky_actions": 0.25, "env.full_action_space": True, "env.episodic_life": False},
    "popgym": {"total_steps": 15_000_000, "env.num_envs": 64, "ppo.num_steps": 1024, "ppo.num_minibatches": 8,
               "ppo.update_epochs": 30, "ppo.learning_rate": 5e-5, "ppo.anneal_lr": False, "ppo.gamma": 0.99,
               "ppo.gae_lambda": 1.0, "ppo.clip_coef": 0.3, "ppo.ent_coef": 0.0, "model.mlp_hidden": 128,
               "model.encoder_size": 128, "model.encoder": "popgym", "model.heads": "popgym",
               "model.head_hidden": 128},
    "minigrid": {"total_steps": 1_000_000, "env.num_envs": 16, "ppo.num_steps": 128, "ppo.num_minibatches": 8,
                 "ppo.update_epochs": 4, "ppo.learning_rate": 1e-4, "ppo.anneal_lr": False, "ppo.adam_eps": 1e-8,
                 "ppo.clip_coef": 0.2, "ppo.ent_coef": 0.01, "ppo.vf_coef": 1.0, "ppo.max_grad_norm": 0.5,
                 "ppo.norm_adv": False, "ppo.gae_lambda": 0.95},
    "default": {"total_steps": 10_000_000, "env.max_episode_steps": 27_000, "env.frame_stack": 4,
                "env.sticky_actions": 0.0, "env.full_action_space": False, "env.episodic_life": True},
}


def setting(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def test_every_protocol_file_is_listed_and_loads():
    assert protocol_names() == sorted(p.stem for p in PROTOCOL_DIR.glob("*.toml"))
    assert set(PUBLISHED) <= set(protocol_names())
    for name in protocol_names():
        spec = load_protocol(name)
        assert spec["description"] and spec["source"]
        text = tomllib.loads((PROTOCOL_DIR / f"{name}.toml").read_text())
        assert (spec["env"], spec["ppo"], spec["total_steps"]) == (text["env"], text["ppo"], text["total_steps"])
        assert (spec["model"], spec["agents"]) == (text.get("model", {}), text.get("agents", {}))
        for preset in spec["agents"].values():  # every stand-in preset the protocol names is shipped
            assert preset in preset_names("agent"), preset


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_protocol_settings_reach_the_config(name):
    config = compose_config("Breakout", "lstm", protocol=name)
    for dotted, value in PUBLISHED[name].items():
        assert setting(config, dotted) == value, dotted
    assert config.protocol == name
    assert config.protocol_settings == load_protocol(name)


def test_no_protocol_is_the_default_protocol():
    assert compose_config("Breakout", "lstm").to_dict() == compose_config("Breakout", "lstm", protocol="default").to_dict()


def test_flags_and_set_beat_the_protocol():
    config = compose_config("Breakout", "lstm", flags={("total_steps",): 5000, ("env", "num_envs"): 4},
                         overrides=["env.frame_stack=2", "ppo.clip_coef=0.2"], protocol="paper")
    assert (config.total_steps, config.env.num_envs, config.env.frame_stack, config.ppo.clip_coef) == (5000, 4, 2, 0.2)
    assert config.env.max_episode_steps == 100_000  # untouched protocol values stay
    assert config.protocol == "paper"


def test_protocol_env_table_applies_to_atari_only():
    config = compose_config("CartPole-v1", "lstm", protocol="cleanrl")
    assert config.total_steps == 10_000_000 and config.ppo.clip_coef == 0.1
    assert config.env.frame_stack == compose_config("CartPole-v1", "lstm").env.frame_stack


def test_protocol_num_envs_applies_to_every_env():
    """env.num_envs is the one [env] key that reaches gymnasium envs too (configure.EVERY_ENV_KEYS)."""
    assert compose_config("CartPole-v1", "lstm", protocol="popgym").env.num_envs == 64
    assert compose_config("Breakout", "lstm", protocol="popgym").env.num_envs == 64
    assert compose_config("CartPole-v1", "lstm", protocol="popgym", flags={("env", "num_envs"): 16}).env.num_envs == 16


def test_unknown_protocol_is_a_user_error():
    with pytest.raises(UserError, match="unknown protocol 'nope'.*cleanrl"):
        compose_config("Breakout", "lstm", protocol="nope")
    with pytest.raises(UserError, match="unknown protocol"):
        load_protocol("../agents/lstm")


@pytest.mark.parametrize("backend", ["envpool", "ale"])
def test_protocol_reaches_the_env(backend):
    """What the env does: one frame per observation (cleanrl), all 18 actions (machado)."""
    cleanrl = compose_config("Breakout", "lstm", protocol="cleanrl", flags={("env", "backend"): backend})
    env = make_vec_env(cleanrl.env, 2, seed=1, training=True)
    try:
        assert env.reset().shape == (2, 1, 84, 84)
        assert env.single_action_space.n == 4  # Breakout's minimal set
    finally:
        env.close()
    machado = compose_config("Breakout", "lstm", protocol="machado", flags={("env", "backend"): backend})
    env = make_vec_env(machado.env, 2, seed=1, training=True)
    try:
        assert env.reset().shape == (2, 4, 84, 84)
        assert env.single_action_space.n == 18
    finally:
        env.close()


def test_envpool_receives_every_protocol_setting():
    config = compose_config("Pong", "lstm", protocol="machado", overrides=["env.max_episode_steps=12345"])
    env = make_vec_env(config.env, 1, seed=1, training=True)
    try:
        spec = env.env.spec.config
        assert spec.repeat_action_probability == pytest.approx(0.25)
        assert (spec.full_action_space, spec.episodic_life, spec.use_fire_reset) == (True, False, False)
        assert spec.max_episode_steps == 12345
    finally:
        env.close()


def test_train_records_the_protocol_and_resume_keeps_it(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--env", "Pong", "--protocol", "cleanrl", "--total-steps", "1024", "--num-envs", "4",
                 "--run-dir", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["protocol"] == "cleanrl"
    assert saved["protocol_settings"] == load_protocol("cleanrl")
    assert saved["env"]["frame_stack"] == 1 and saved["total_steps"] == 1024
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--protocol", "paper"]) == 2
    assert "--protocol cannot change when resuming" in capsys.readouterr().err
