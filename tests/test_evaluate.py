"""`brims-rl evaluate`: episode accounting, repeatable seeded scores, eval.json, the RGB video, bad input."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from brims_rl import checkpoint
from brims_rl.cli import main
from brims_rl.environments.base import VecStep
from brims_rl.agent import Agent
from brims_rl.config import Config
from brims_rl.evaluation.play import episode_quotas, play
from brims_rl.policy import Policy

MEMORY = "brims_rl.environments.memory:CueMemory-v0"
TINY = ["--num-envs", "2", "--total-steps", "128", "--set", "ppo.num_steps=32", "--set", "ppo.num_minibatches=2",
        "--set", "ppo.update_epochs=1"]
# A barely trained Breakout agent rarely presses FIRE after losing a life, so games would run to the 27k-step limit:
# cap them (a recorded evaluation setting) to keep the tests fast.
SHORT = ["--max-episode-steps", "25"]


@pytest.fixture(scope="module")
def breakout_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("evaluate") / "breakout"
    assert main(["train", "--env", "Breakout", "--run-dir", str(run), *TINY]) == 0
    return run


@pytest.fixture(scope="module")
def memory_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("evaluate") / "memory"
    assert main(["train", "--env", MEMORY, "--run-dir", str(run), *TINY]) == 0
    return run


def evaluate(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(["evaluate", *args])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def printed_scores(out: str) -> list[float]:
    return [float(m.group(1)) for m in re.finditer(r"^episode \d+: score (\S+) \|", out, re.MULTILINE)]


def printed_lengths(out: str) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(r"^episode \d+: .*\| length (\d+) steps", out, re.MULTILINE)]


# ---- episode accounting ----------------------------------------------------------------------------------------
def test_episode_quotas_split_episodes_over_envs():
    assert episode_quotas(5, 2) == [3, 2]
    assert episode_quotas(4, 4) == [1, 1, 1, 1]
    assert episode_quotas(10, 3) == [4, 3, 3]
    assert sum(episode_quotas(7, 5)) == 7


class GamesVecEnv:
    """Env i's games last lengths[i] steps; game k of env i scores 100 * i + k. Next-step autoreset, like envpool."""

    def __init__(self, lengths: list[int]) -> None:
        self.num_envs = len(lengths)
        self.lengths = np.array(lengths)
        self.single_observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
        self.single_action_space = gym.spaces.Discrete(2)

    def reset(self) -> np.ndarray:
        self.t = np.zeros(self.num_envs, dtype=int)
        self.game = np.zeros(self.num_envs, dtype=int)
        self.done = np.zeros(self.num_envs, dtype=bool)
        return np.zeros((self.num_envs, 3), np.float32)

    def step(self, actions: np.ndarray) -> VecStep:
        ignored = self.done.copy()
        self.t = np.where(ignored, 0, self.t + 1)
        self.done = ~ignored & (self.t >= self.lengths)
        episodes = [(int(i), float(100 * i + self.game[i]), int(self.t[i])) for i in np.flatnonzero(self.done)]
        self.game += self.done
        zeros = np.zeros(self.num_envs, dtype=bool)
        return VecStep(obs=np.zeros((self.num_envs, 3), np.float32), reward=np.zeros(self.num_envs, np.float32),
                       terminated=self.done.copy(), truncated=zeros, ignored=ignored, first=ignored.copy(),
                       episodes=episodes)

    def close(self) -> None:
        pass


def recording_policy() -> tuple[Policy, list[np.ndarray]]:
    """An LSTM policy on GamesVecEnv's spaces, and the episode_starts its agent is given at every step."""
    config = Config()
    agent = Agent((3,), gym.spaces.Discrete(2), config)
    starts: list[np.ndarray] = []
    agent.register_forward_pre_hook(lambda module, args: starts.append(args[2][0].numpy().copy()))
    policy = Policy(agent, config, gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Discrete(2),
                    torch.device("cpu"))
    return policy, starts


def test_play_counts_each_envs_first_games_not_the_first_games_to_finish():
    env, (policy, recorded) = GamesVecEnv([2, 7]), recording_policy()
    games = play(env, policy, [2, 2], greedy=False, generator=torch.Generator().manual_seed(0))
    # env 0 finishes 4+ short games before env 1's second long one ends; only its first two count
    assert games == [[(0.0, 2), (1.0, 2)], [(100.0, 7), (101.0, 7)]]
    starts = np.array(recorded)
    assert starts[0].all()  # every env starts an episode at reset
    # env 0 (2-step games): steps 0, 1 of a game, then the ignored autoreset step whose obs starts the next game
    assert starts[:9, 0].tolist() == [True, False, False, True, False, False, True, False, False]
    assert starts[:9, 1].tolist() == [True] + [False] * 7 + [True]


# ---- the command on a tiny Breakout run ------------------------------------------------------------------------
def test_greedy_seeded_evaluation_is_repeatable_and_eval_json_holds_the_printed_numbers(breakout_run, capsys):
    args = ["--episodes", "3", "--num-envs", "2", "--greedy", "--seed", "3", *SHORT]
    code, out_a, _ = evaluate(capsys, str(breakout_run), *args)
    assert code == 0, out_a
    code, out_b, _ = evaluate(capsys, str(breakout_run), *args)
    assert code == 0
    scores = printed_scores(out_a)
    assert len(scores) == 3 and scores == printed_scores(out_b)
    assert printed_lengths(out_a) == printed_lengths(out_b)

    record = json.loads((breakout_run / "eval.json").read_text())
    assert record["format"] == "brims-rl-eval/1"
    assert record["scores"] == scores and record["lengths"] == printed_lengths(out_a)
    assert len(record["episodes"]) == 3 and [e["env"] for e in record["episodes"]] == [0, 0, 1]
    assert record["mean"] == pytest.approx(float(np.mean(scores)), abs=0)
    assert record["std"] == pytest.approx(float(np.std(scores)), abs=0)  # population std
    mean_std = re.search(r"^score (\S+) ± (\S+) \(mean ± population std", out_a, re.MULTILINE)
    assert mean_std and mean_std.groups() == (f"{record['mean']:.2f}", f"{record['std']:.2f}")
    assert all(length <= 25 for length in record["lengths"])
    assert record["checkpoint"] == str((breakout_run / "checkpoints" / "latest.pt").resolve())
    assert record["global_step"] == 128
    settings = record["settings"]
    assert settings["episodes"] == 3 and settings["greedy"] is True and settings["seed"] == 3
    assert settings["device"] == "cpu" and settings["num_envs"] == 2
    assert settings["env"]["id"] == "Breakout" and settings["env"]["protocol"] == "evaluation"
    assert settings["env"]["episodic_life"] is False and settings["env"]["reward_clip"] is False
    assert settings["env"]["max_episode_steps"] == 25

    # the checkpoint file itself: same checkpoint, same numbers, eval.json in the same run folder
    (breakout_run / "eval.json").unlink()
    code, out_c, _ = evaluate(capsys, str(breakout_run / "checkpoints" / "latest.pt"), *args)
    assert code == 0 and printed_scores(out_c) == scores
    assert json.loads((breakout_run / "eval.json").read_text())["scores"] == scores


def test_evaluation_plays_whole_games_with_unclipped_rewards(tmp_path, capsys, monkeypatch):
    """What the evaluation env does, not what its settings say: MsPacman's pellets score 10 (clipping would give 1)
    and the game goes on past the first life lost, where the training protocol, replaying the same actions on the
    same seed, ends its episode and clips every reward."""
    import brims_rl.evaluation.play as evaluate_module
    from brims_rl.environments import make_vec_env

    run = tmp_path / "pacman"
    assert main(["train", "--env", "MsPacman", "--run-dir", str(run), *TINY]) == 0
    seen: dict = {"rewards": [], "actions": []}

    def recording_env(cfg, num_envs, seed, training=True, **options):
        env = make_vec_env(cfg, num_envs, seed=seed, training=training, **options)
        seen.update(cfg=cfg, seed=seed)
        step = env.step

        def recorded(actions):
            result = step(actions)
            seen["actions"].append(int(actions[0]))
            seen["rewards"].append(float(result.reward[0]))
            return result

        env.step = recorded
        return env

    monkeypatch.setattr(evaluate_module, "make_vec_env", recording_env)
    code, out, err = evaluate(capsys, str(run), "--episodes", "1", "--num-envs", "1", "--seed", "5")
    assert code == 0, err
    (length,), (score,) = printed_lengths(out), printed_scores(out)
    rewards = seen["rewards"][:length]
    assert sum(rewards) == score and max(rewards) >= 10  # unclipped

    training_env = make_vec_env(seen["cfg"], 1, seed=seen["seed"], training=True)
    try:
        training_env.reset()
        clipped, ended_at = [], None
        for t, action in enumerate(seen["actions"][:length]):
            step = training_env.step(np.array([action]))
            clipped.append(float(step.reward[0]))
            if step.terminated[0] or step.truncated[0]:
                ended_at = t + 1
                break
    finally:
        training_env.close()
    assert ended_at is not None and ended_at < length  # a life lost ends a training episode, not the game
    assert clipped == [float(np.sign(r)) for r in rewards[:ended_at]]  # the same game up to there, clipped


def test_video_replays_episode_one_in_rgb(breakout_run, tmp_path, capsys):
    import imageio

    video = tmp_path / "game.mp4"
    # lives as one episode, so every frame is one agent step (life resets add a frame per life: test_eval_life_loss)
    code, out, err = evaluate(capsys, str(breakout_run), "--episodes", "2", "--num-envs", "2", "--seed", "5",
                              "--video", str(video), "--no-life-reset", *SHORT)
    assert code == 0, err
    record = json.loads((breakout_run / "eval.json").read_text())
    assert record["settings"]["greedy"] is False
    reader = imageio.get_reader(video, format="FFMPEG")
    frames = [frame for frame in reader]
    reader.close()
    assert len(frames) > 1 and all(frame.shape == (210, 160, 3) for frame in frames)
    assert np.ptp(frames[0]) > 0  # a real screen, not a blank frame
    first_length = record["lengths"][0]  # episode 1 = env 0's first game
    assert len(frames) == first_length + 1 == record["video"]["frames"]
    # the RGB env stepped in lockstep with env 0 had the same reward at every step and ended the game with it
    assert record["video"]["matched"] is True, record["video"]["mismatch"]
    assert "warning" not in err


def replay_env0_first_game(backend: str, twin_seed_offset: int) -> tuple[bool, tuple, list]:
    """Random actions on 2 eval envs (seed 3) and on the RGB twin of env 0 until env 0's first full game ends."""
    from brims_rl.config import EnvConfig
    from brims_rl.environments import make_vec_env
    from brims_rl.evaluation.video import make_rgb_atari_twin

    cfg = EnvConfig(id="Breakout", backend=backend, max_episode_steps=2000)
    env, twin = make_vec_env(cfg, 2, 3, training=False), make_rgb_atari_twin(cfg, 3 + twin_seed_offset)
    try:
        env.reset()
        assert twin.reset().shape == (1, 3, 210, 160)
        rng, same_rewards = np.random.default_rng(0), True
        while True:
            actions = rng.integers(0, int(env.single_action_space.n), size=2)
            step, twin_step = env.step(actions), twin.step(actions[:1])
            same_rewards &= bool(step.reward[0] == twin_step.reward[0])
            first_game = [e for e in step.episodes if e[0] == 0]
            if first_game or twin_step.episodes:
                return same_rewards, first_game[0] if first_game else (), twin_step.episodes
    finally:
        env.close()
        twin.close()


@pytest.mark.parametrize("backend", ["envpool", "ale"])
def test_rgb_twin_replays_env0s_full_game_and_a_differently_seeded_one_does_not(backend):
    same_rewards, game, twin_games = replay_env0_first_game(backend, 0)
    assert game[2] < 2000  # a real game over, not the time limit
    assert same_rewards and twin_games == [game]  # same rewards every step, same score and length
    same_rewards, game, twin_games = replay_env0_first_game(backend, 1)  # control: the check can fail
    assert not (same_rewards and twin_games == [game])


def test_sampled_evaluation_is_repeatable_and_checkpoint_outside_a_run_writes_next_to_it(memory_run, tmp_path, capsys):
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(memory_run / "checkpoints" / "latest.pt", loose / "model.pt")
    code, out_a, _ = evaluate(capsys, str(loose / "model.pt"), "--episodes", "5", "--num-envs", "2", "--seed", "9")
    assert code == 0
    code, out_b, _ = evaluate(capsys, str(loose / "model.pt"), "--episodes", "5", "--num-envs", "2", "--seed", "9")
    assert code == 0 and printed_scores(out_a) == printed_scores(out_b)
    record = json.loads((loose / "eval.json").read_text())
    assert len(record["scores"]) == 5 and set(record["lengths"]) == {6}  # CueMemory games are delay + 2 steps
    assert set(record["scores"]) <= {-1.0, 1.0}
    assert [e["env"] for e in record["episodes"]] == [0, 0, 0, 1, 1]
    assert record["settings"]["seed"] == 9 and record["settings"]["env"]["kind"] == "gym"
    assert not (memory_run / "eval.json").exists()


class RenderProbeEnv(gym.Env):
    """Seeded random game lengths (3..7 steps), reward = action * t, rgb_array frames that show the step number."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(self, render_mode=None):
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.length = 0, int(self.np_random.integers(3, 8))
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.full(2, self.t / 8, np.float32), float(action) * self.t, self.t >= self.length, False, {}

    def render(self):
        return np.full((16, 16, 3), 30 * self.t, np.uint8)


def test_video_of_a_gymnasium_env_uses_its_rgb_array_render(tmp_path, capsys):
    import imageio

    if "EvalRenderProbe-v0" not in gym.registry:
        gym.register("EvalRenderProbe-v0", entry_point=RenderProbeEnv)
    run, video = tmp_path / "probe", tmp_path / "probe.mp4"
    assert main(["train", "--env", "EvalRenderProbe-v0", "--run-dir", str(run), *TINY]) == 0
    code, out, err = evaluate(capsys, str(run), "--episodes", "3", "--num-envs", "2", "--seed", "4",
                              "--video", str(video))
    assert code == 0, err
    record = json.loads((run / "eval.json").read_text())
    reader = imageio.get_reader(video, format="FFMPEG")
    frames = [frame for frame in reader]
    reader.close()
    assert len(frames) == record["lengths"][0] + 1 and frames[0].shape == (16, 16, 3)
    assert record["video"]["matched"] is True, record["video"]["mismatch"]


# ---- bad input --------------------------------------------------------------------------------------------------
def test_bad_inputs_exit_2_with_one_line(breakout_run, memory_run, tmp_path, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    mismatched = tmp_path / "mismatched.pt"
    payload = checkpoint.load(memory_run / "checkpoints" / "latest.pt")
    payload.pop("format")
    payload["config"]["core"] = {"name": "gru", "options": {}}
    checkpoint.save_atomic(payload, mismatched)
    (tmp_path / "empty").mkdir()
    cases = [
        [str(tmp_path / "missing")],
        [str(tmp_path / "empty")],
        [str(garbage)],
        [str(foreign)],
        [str(mismatched)],
        [str(memory_run), "--episodes", "0"],
        [str(memory_run), "--episodes", "-3"],
        [str(memory_run), "--video", str(tmp_path / "memory.mp4")],  # CueMemory cannot render
        [str(breakout_run), "--video", str(tmp_path / "no-such-folder" / "v.mp4")],
    ]
    before = (memory_run / "checkpoints" / "latest.pt").read_bytes()
    for args in cases:
        code, out, err = evaluate(capsys, *args)
        assert code == 2, (args, out, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("brims-rl: error: "), (args, err)
        assert "Traceback" not in err + out
    assert (memory_run / "checkpoints" / "latest.pt").read_bytes() == before
    assert not (memory_run / "eval.json").exists()
    assert not (tmp_path / "memory.mp4").exists()


def test_bad_input_from_the_shell_is_one_line(tmp_path):
    for args in ([str(tmp_path / "missing")], [str(tmp_path), "--episodes", "0"]):
        proc = subprocess.run([sys.executable, "-m", "brims_rl", "evaluate", *args], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
