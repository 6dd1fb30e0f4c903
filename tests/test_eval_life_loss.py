"""Evaluation as trained: at a life loss the core's state resets and the next life starts (FIRE), scores stay whole
games; `--no-life-reset` plays the lives as one episode; eval.json records which was used."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from brims_rl import checkpoint
from brims_rl.agent import Agent
from brims_rl.cli import main
from brims_rl.environments import make_vec_env
from brims_rl.evaluation.play import play
from brims_rl.policy import Policy
from brims_rl.run_folder import RunFolder
from brims_rl.configure import compose_config

FIRE = 1  # index of FIRE in the scripted game's action set (as in Breakout's minimal set)


class LivesGame:
    """A scripted stand-in for ale-py's C++ vector env (the `ale` backend's engine), with Breakout's life rules.

    Each env has `lives` lives of `life_steps` steps each, earning 1 point per step of play. The first life starts at
    reset (fire reset); after a life loss the game waits, scoring nothing, until FIRE is pressed; the game ends when
    the last life is lost, or at the frame limit. NEXT_STEP autoreset like ale-py. Every action received is logged.
    """

    def __init__(self, game: str, num_envs: int, *, stack_num: int, img_height: int, img_width: int,
                 max_num_frames_per_episode: int, frameskip: int, lives: int = 3, life_steps: int = 4, **_):
        self.num_envs, self.lives0, self.life_steps = num_envs, lives, life_steps
        self.max_steps = max_num_frames_per_episode // frameskip
        self.shape = (stack_num, img_height, img_width)
        self.single_observation_space = gym.spaces.Box(0, 255, self.shape, np.uint8)
        self.single_action_space = gym.spaces.Discrete(4)
        self.ale = self
        self.actions: list[np.ndarray] = []
        self.rng = np.random.default_rng(0)

    def get_action_set(self):
        import ale_py

        return [ale_py.Action.NOOP, ale_py.Action.FIRE, ale_py.Action.RIGHT, ale_py.Action.LEFT]

    def _obs(self) -> np.ndarray:  # random screens, so that a carried core state differs from a fresh one
        return self.rng.integers(0, 256, (self.num_envs, *self.shape), dtype=np.uint8)

    def _new_game(self, i: int) -> None:
        self.lives[i], self.in_play[i], self.played[i], self.steps[i] = self.lives0, True, 0, 0

    def reset(self, seed=None):
        self.lives = np.zeros(self.num_envs, dtype=np.int64)
        self.in_play = np.zeros(self.num_envs, dtype=bool)
        self.played = np.zeros(self.num_envs, dtype=np.int64)
        self.steps = np.zeros(self.num_envs, dtype=np.int64)
        self.over = np.zeros(self.num_envs, dtype=bool)
        for i in range(self.num_envs):
            self._new_game(i)
        return self._obs(), {"lives": self.lives.copy()}

    def step(self, actions):
        actions = np.asarray(actions)
        self.actions.append(actions.copy())
        reward = np.zeros(self.num_envs, dtype=np.float32)
        term, trunc = np.zeros(self.num_envs, dtype=bool), np.zeros(self.num_envs, dtype=bool)
        for i in range(self.num_envs):
            if self.over[i]:  # autoreset step: the action is ignored
                self._new_game(i)
                self.over[i] = False
                continue
            self.steps[i] += 1
            if not self.in_play[i]:
                self.in_play[i] = actions[i] == FIRE
            else:
                reward[i] = 1.0
                self.played[i] += 1
                if self.played[i] == self.life_steps:  # the ball is lost
                    self.lives[i] -= 1
                    self.played[i], self.in_play[i] = 0, False
            term[i] = self.lives[i] == 0
            trunc[i] = not term[i] and self.steps[i] >= self.max_steps
            self.over[i] = term[i] or trunc[i]
        return self._obs(), reward, term, trunc, {"lives": self.lives.copy()}

    def close(self) -> None:
        pass


class StateRecorder:
    """Watches an Agent through a forward hook: records each step's episode_starts and the core state it leaves, and
    what a fresh state (zeros) fed the same observation would have given; `policy` acts with the agent."""

    def __init__(self, agent: Agent, config, env) -> None:
        self.starts: list[np.ndarray] = []
        self.states: list[torch.Tensor] = []
        self.fresh: list[torch.Tensor] = []
        agent.register_forward_hook(self._record)
        self.policy = Policy(agent, config, env.single_observation_space, env.single_action_space,
                             torch.device("cpu"))

    def _record(self, agent, args, output) -> None:
        obs, _state, episode_starts = args
        _, _, new_state = output
        zeros = agent.initial_state(obs.shape[1])
        _, _, fresh = agent.forward(obs, zeros, torch.zeros_like(episode_starts))  # forward: no hook
        self.starts.append(episode_starts[0].numpy().copy())
        self.states.append(new_state[0].clone())
        self.fresh.append(fresh[0].clone())


def noop_agent(config, env) -> Agent:
    """The config's agent with a policy whose most likely action is always NOOP (action 0)."""
    torch.manual_seed(0)
    agent = Agent(env.single_observation_space.shape, int(env.single_action_space.n), config)
    with torch.no_grad():
        agent.actor.weight.zero_()
        agent.actor.bias.copy_(torch.tensor([1.0] + [0.0] * (agent.actor.bias.numel() - 1)))
    return agent.eval()


def scripted_env(monkeypatch, life_reset: bool, max_steps: int = 40):
    import ale_py.vector_env

    games: list[LivesGame] = []

    def factory(*args, **kwargs):
        games.append(LivesGame(*args, **kwargs))
        return games[-1]

    monkeypatch.setattr(ale_py.vector_env, "AtariVectorEnv", factory)
    config = compose_config("Breakout", "gru", flags={("env", "backend"): "ale", ("env", "max_episode_steps"): max_steps})
    assert config.env.episodic_life and config.env.fire_reset  # what training did
    env = make_vec_env(config.env, 2, seed=0, training=False, life_reset=life_reset)
    return config, env, games[0]


def test_life_loss_resets_the_core_and_presses_fire_and_the_score_is_the_whole_game(monkeypatch):
    config, env, game = scripted_env(monkeypatch, life_reset=True)
    recorder = StateRecorder(noop_agent(config, env), config, env)
    games = play(env, recorder.policy, [2, 1], greedy=True, generator=None)

    # 3 lives x 4 points; per life: 4 steps of play, then the forced FIRE step that starts the next life
    assert games == [[(12.0, 12), (12.0, 12)], [(12.0, 12)]]
    actions = np.array(game.actions)[:, 0]
    fire_steps = np.flatnonzero(actions == FIRE).tolist()
    assert fire_steps == [4, 9, 19, 24]  # right after each life lost (steps 3, 8; game 2: 18, 23); never otherwise
    starts = np.array(recorder.starts)[:, 0]
    # the core starts afresh at each life's first observation (after the FIRE step) and at each game's
    assert np.flatnonzero(starts).tolist() == [0, 5, 10, 15, 20, 25]
    for t, start in enumerate(starts):
        same = torch.allclose(recorder.states[t][0], recorder.fresh[t][0], atol=1e-6)
        assert same == bool(start), t  # reset exactly there; elsewhere the state carries over


def test_no_life_reset_plays_lives_as_one_episode_and_a_noop_policy_stalls(monkeypatch):
    config, env, game = scripted_env(monkeypatch, life_reset=False, max_steps=40)
    recorder = StateRecorder(noop_agent(config, env), config, env)
    games = play(env, recorder.policy, [1, 1], greedy=True, generator=None)
    assert games == [[(4.0, 40)], [(4.0, 40)]]  # one life played, then waiting for FIRE until the time limit
    assert not (np.array(game.actions) == FIRE).any()
    assert np.flatnonzero(np.array(recorder.starts)[:, 0]).tolist() == [0]


# ---- real Breakout through `brims-rl evaluate` -----------------------------------------------------------------
def noop_run(tmp_path: Path, backend: str, **env) -> Path:
    """A run folder whose checkpoint is a Breakout agent that always picks NOOP when greedy."""
    config = compose_config("Breakout", "ff", flags={("env", "backend"): backend})
    config = dataclasses.replace(config, env=dataclasses.replace(config.env, **env))
    probe = make_vec_env(config.env, 1, seed=0, training=False)
    agent = noop_agent(config, probe)
    probe.close()
    run = RunFolder(tmp_path / f"{backend}-run")
    run.checkpoints.mkdir(parents=True)
    checkpoint.save_atomic({"model": agent.state_dict(), "config": config.to_dict(), "global_step": 0,
                            "updates": 0}, run.latest)
    return run.path


def evaluate(run: Path, *args: str) -> dict:
    assert main(["evaluate", str(run), "--episodes", "1", "--num-envs", "1", "--greedy", "--device", "cpu",
                 *args]) == 0
    return json.loads((run / "eval.json").read_text())


@pytest.mark.parametrize("backend", ["envpool", "ale"])
def test_breakout_noop_game_ends_well_before_the_cap_only_with_life_reset(backend, tmp_path, capsys):
    run = noop_run(tmp_path, backend)
    record = evaluate(run)
    assert record["settings"]["life_reset"] is True
    assert "life reset on" in capsys.readouterr().out
    # 5 lives, each served by FIRE and lost by a paddle that never moves: a few hundred steps, not 27,000
    assert record["lengths"][0] < 500 and record["settings"]["env"]["max_episode_steps"] == 27_000

    # Without: after the first life loss nothing serves the ball; the game sits until the time limit.
    record = evaluate(run, "--no-life-reset", "--max-episode-steps", "1000")
    assert record["settings"]["life_reset"] is False
    assert record["lengths"] == [1000]


def test_a_run_trained_without_episodic_life_is_evaluated_without_life_reset(tmp_path):
    run = noop_run(tmp_path, "envpool", episodic_life=False)
    record = evaluate(run, "--max-episode-steps", "300")
    assert record["settings"]["life_reset"] is False and record["lengths"] == [300]


@pytest.mark.parametrize("backend", ["envpool", "ale"])
def test_video_of_a_game_with_life_resets_replays_it(backend, tmp_path, capsys):
    import imageio

    run = noop_run(tmp_path, backend)
    video = tmp_path / "game.mp4"
    capsys.readouterr()
    record = evaluate(run, "--video", str(video))
    length = record["lengths"][0]
    assert (f"video: {video} ({length + 5} frames: the first, one per step of episode 1's {length}, and one per "
            "life it started after a life loss (4))") in capsys.readouterr().out
    reader = imageio.get_reader(video, format="FFMPEG")
    frames = sum(1 for _ in reader)
    reader.close()
    # the first screen, one per agent step, and one per life started after a loss (Breakout: 5 lives, 4 restarts)
    assert frames == record["lengths"][0] + 1 + 4 == record["video"]["frames"]
    assert record["video"]["matched"] is True, record["video"]["mismatch"]
