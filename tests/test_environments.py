"""Environments: name resolution, the envpool / ale / gymnasium adapters' next-step autoreset semantics, full-game
episode statistics, and the CueMemory task."""

from __future__ import annotations

import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest

from brims_rl.config import EnvConfig
from brims_rl.environments import EpisodeTracker, make_vec_env, resolve_env
from brims_rl.environments.gym_env import GymVecEnv
from brims_rl.environments.memory import CueMemoryEnv
from brims_rl.errors import UserError

BACKENDS = ["envpool", "ale"]


# ----------------------------------------------------------------------------------------------- name resolution


@pytest.mark.parametrize("name", ["MsPacman", "ALE/MsPacman-v5", "MsPacman-v5", "MsPacmanNoFrameskip-v4", "ms_pacman"])
def test_atari_aliases_resolve_to_the_same_game(name):
    spec = resolve_env(name)
    assert (spec.kind, spec.name, spec.envpool_task, spec.ale_game) == ("atari", "MsPacman", "MsPacman-v5", "ms_pacman")


def test_gym_ids_resolve_to_gym():
    spec = resolve_env("CartPole-v1")
    assert (spec.kind, spec.gym_id, spec.module) == ("gym", "CartPole-v1", None)
    # Legacy ALE ids with other semantics (sticky actions, random frame skip) stay plain gymnasium ids.
    assert resolve_env("Pong-v4").kind == "gym"


def test_module_form_imports_the_module_first(tmp_path, monkeypatch):
    module = "brims_test_tmp_envmod"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            """
            import gymnasium as gym
            gym.register(id="BrimsTmpEnv-v0", entry_point="gymnasium.envs.classic_control:CartPoleEnv")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "BrimsTmpEnv-v0" not in gym.registry
    try:
        spec = resolve_env(f"{module}:BrimsTmpEnv-v0")
        assert (spec.kind, spec.gym_id, spec.module) == ("gym", "BrimsTmpEnv-v0", module)
    finally:
        gym.registry.pop("BrimsTmpEnv-v0", None)
        sys.modules.pop(module, None)
    spec = resolve_env("brims_rl.environments.memory:CueMemory-v0")
    assert (spec.kind, spec.gym_id) == ("gym", "CueMemory-v0")


@pytest.mark.parametrize(
    ("name", "expected"),
    [("MsPacmn", "MsPacman"), ("Breakot", "Breakout"), ("CartPol-v1", "CartPole-v1"), ("CueMemroy-v0", "CueMemory-v0")],
)
def test_unknown_name_is_one_line_with_close_matches(name, expected):
    with pytest.raises(UserError) as info:
        resolve_env(name)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"unknown env '{name}'; did you mean: ")
    assert expected in message.split("did you mean: ")[1]


def test_unknown_name_without_close_matches():
    with pytest.raises(UserError, match=r"^unknown env 'qqqqqqqqqqqqqqqqqqqqqq'$"):
        resolve_env("qqqqqqqqqqqqqqqqqqqqqq")


def test_unknown_module_is_a_user_error():
    with pytest.raises(UserError, match="cannot import module 'brims_no_such_module'") as info:
        resolve_env("brims_no_such_module:Foo-v0")
    assert "\n" not in str(info.value)


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="backend"):
        make_vec_env(EnvConfig(id="Breakout", backend="nope"), 2, seed=1)
    with pytest.raises(UserError, match="seed"):
        make_vec_env(EnvConfig(id="CartPole-v1"), 2, seed=-1)
    env = make_vec_env(EnvConfig(id="Pendulum-v1"), 2, seed=1)  # Box actions are supported (docs/spaces.md)
    env.close()


@pytest.mark.parametrize(("backend", "module"), [("envpool", "envpool"), ("ale", "ale_py.vector_env")])
def test_missing_backend_is_a_user_error(backend, module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(UserError, match=f"backend '{backend}' is not installed"):
        make_vec_env(EnvConfig(id="Pong", backend=backend), 1, seed=1)


def test_game_missing_from_envpool_points_to_ale():
    with pytest.raises(UserError, match="use backend 'ale'"):
        make_vec_env(EnvConfig(id="Combat", backend="envpool"), 1, seed=1)


# ----------------------------------------------------------------------------------------------------- Atari


class Recorder:
    """Wraps the backend env's step to keep what the raw backend returned (rewards, lives, real game ends)."""

    def __init__(self, env, backend):
        self.backend, self.raw_step = backend, env.env.step
        self.rewards, self.lives, self.game_over = [], [], []
        env.env.step = self

    def __call__(self, actions, *args):
        out = self.raw_step(actions, *args)
        obs, reward, term, trunc, info = out
        if self.backend == "envpool":  # envpool's own reward may be clipped; info has the raw one
            self.rewards.append(np.asarray(info["reward"], dtype=np.float64))
            self.game_over.append(info["terminated"].astype(bool) | trunc)
        else:
            self.rewards.append(np.asarray(reward, dtype=np.float64))
            self.game_over.append(term | trunc)
        self.lives.append(np.array(info["lives"]))
        return out


def run_random(env, steps, seed=0):
    rng = np.random.default_rng(seed)
    first_obs = env.reset()
    out = [env.step(rng.integers(0, env.single_action_space.n, env.num_envs)) for _ in range(steps)]
    return first_obs, out


def check_next_step_autoreset(steps):
    """ignored[t] == done[t-1], first == ignored, ignored steps carry reward 0 and no done flag."""
    done_before = np.zeros_like(steps[0].ignored)
    for s in steps:
        np.testing.assert_array_equal(s.ignored, done_before)
        np.testing.assert_array_equal(s.first, s.ignored)
        assert not (s.terminated & s.truncated).any()
        assert not ((s.terminated | s.truncated) & s.ignored).any()
        assert (s.reward[s.ignored] == 0).all()
        done_before = s.terminated | s.truncated


def check_episodes(steps, rec):
    """Episodes are full games with the unclipped score, tracked here independently from the raw backend."""
    n = steps[0].reward.shape[0]
    returns, lengths = np.zeros(n), np.zeros(n, dtype=int)
    autoreset = np.zeros(n, dtype=bool)
    found = 0
    for t, s in enumerate(steps):
        returns += np.where(autoreset, 0.0, rec.rewards[t])
        lengths += ~s.ignored
        expected = [(int(i), returns[i], int(lengths[i])) for i in np.flatnonzero(rec.game_over[t])]
        assert [(i, pytest.approx(r), length) for i, r, length in expected] == s.episodes
        found += len(expected)
        returns[rec.game_over[t]] = 0
        lengths[rec.game_over[t]] = 0
        autoreset = rec.game_over[t]
    return found


@pytest.mark.parametrize("backend", BACKENDS)
def test_atari_training_protocol_life_loss_and_full_game_episodes(backend):
    env = make_vec_env(EnvConfig(id="Breakout", backend=backend), 4, seed=3, training=True)
    rec = Recorder(env, backend)
    first_obs, steps = run_random(env, 700)
    env.close()
    assert first_obs.shape == (4, 4, 84, 84) and first_obs.dtype == np.uint8
    assert env.single_observation_space.shape == (4, 84, 84)
    assert all(s.obs.shape == (4, 4, 84, 84) and s.obs.dtype == np.uint8 for s in steps)
    check_next_step_autoreset(steps)

    life_losses = 0
    for t in range(1, len(steps) - 1):
        for i in np.flatnonzero(steps[t].terminated & ~rec.game_over[t]):  # episodic life: a life lost, game goes on
            life_losses += 1
            after = steps[t + 1]
            assert after.ignored[i] and after.first[i] and after.reward[i] == 0
            assert rec.lives[t][i] < rec.lives[t - 1][i]
            assert rec.lives[t + 1][i] == rec.lives[t][i]  # the game continued: no reset to full lives
    assert life_losses >= 8
    # Clipped training rewards (Breakout pays 1, 4 or 7 points; the clipped ones are the signs).
    rewards = np.stack([s.reward for s in steps])
    assert set(np.unique(rewards)) <= {-1.0, 0.0, 1.0}
    assert check_episodes(steps, rec) >= 4
    # Training episodes (lives) are many more than the reported games.
    assert sum(int(s.terminated.sum()) for s in steps) > sum(len(s.episodes) for s in steps)


@pytest.mark.parametrize("backend", BACKENDS)
def test_atari_reward_clipping_is_training_only(backend):
    for training in (True, False):
        env = make_vec_env(EnvConfig(id="MsPacman", backend=backend), 2, seed=1, training=training)
        rec = Recorder(env, backend)
        _, steps = run_random(env, 150)
        env.close()
        raw = np.stack(rec.rewards)
        rewards = np.stack([s.reward for s in steps])
        ignored = np.stack([s.ignored for s in steps])
        assert raw.max() >= 10  # MsPacman pellets are worth 10
        expected = np.where(ignored, 0.0, np.sign(raw) if training else raw)
        np.testing.assert_array_equal(rewards, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_atari_evaluation_protocol_has_no_episodic_life(backend):
    env = make_vec_env(EnvConfig(id="Breakout", backend=backend), 4, seed=5, training=False)
    rec = Recorder(env, backend)
    _, steps = run_random(env, 700)
    env.close()
    check_next_step_autoreset(steps)
    lives = np.stack(rec.lives)
    assert (lives[1:] < lives[:-1]).sum() > 8  # lives were lost ...
    for t, s in enumerate(steps):
        np.testing.assert_array_equal(s.terminated, rec.game_over[t])  # ... yet only game overs terminate
        assert sorted(i for i, _, _ in s.episodes) == list(np.flatnonzero(rec.game_over[t]))
    assert check_episodes(steps, rec) >= 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_atari_time_limit_truncates_with_the_final_observation(backend):
    env = make_vec_env(EnvConfig(id="Pong", backend=backend, max_episode_steps=50), 2, seed=1)
    _, steps = run_random(env, 102)
    env.close()
    check_next_step_autoreset(steps)
    for t in (49, 100):  # 50 agent steps; the ignored reset step between games does not count
        assert steps[t].truncated.all() and not steps[t].terminated.any()
        assert sorted((i, length) for i, _, length in steps[t].episodes) == [(0, 50), (1, 50)]
        assert steps[t + 1].ignored.all() and steps[t + 1].first.all()
        # The truncated step's observation is the game's last frame stack, not a reset one; the next one is.
        assert not (steps[t].obs == steps[t + 1].obs).all()
    assert sum(len(s.episodes) for s in steps) == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_atari_same_seed_same_trajectory(backend):
    def observations(seed):
        env = make_vec_env(EnvConfig(id="Breakout", backend=backend), 2, seed=seed)
        first, steps = run_random(env, 200, seed=7)
        env.close()
        return np.concatenate([first[None]] + [s.obs[None] for s in steps])

    a, b, c = observations(11), observations(11), observations(12)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_envpool_and_ale_play_identical_games_in_evaluation():
    """Without random no-ops the two backends are the same emulator under the same protocol: identical frames
    (frame stack of a new game included, in grey and colour), rewards, flags and game reports, across game overs."""
    for grayscale, steps in ((True, 450), (False, 60)):
        runs = []
        for backend in BACKENDS:
            cfg = EnvConfig(id="Breakout", backend=backend, noop_max=0, grayscale=grayscale)
            env = make_vec_env(cfg, 2, seed=1, training=False)
            first, out = run_random(env, steps, seed=2)
            env.close()
            runs.append((first, out))
        (first_a, a), (first_b, b) = runs
        np.testing.assert_array_equal(first_a, first_b)
        for sa, sb in zip(a, b):
            for name in ("obs", "reward", "terminated", "truncated", "ignored", "first"):
                np.testing.assert_array_equal(getattr(sa, name), getattr(sb, name))
            assert sa.episodes == sb.episodes
        if grayscale:
            assert sum(len(s.episodes) for s in a) >= 2  # autoresets happened along the way


# --------------------------------------------------------------------------------------------- gymnasium adapter


class ScriptedEnv(gym.Env):
    """Plays a script of (reward, terminated, truncated) steps; obs = [episode number, step in episode]."""

    def __init__(self, script):
        self.script, self.pos, self.episode, self.t = script, 0, -1, 0
        self.observation_space = gym.spaces.Box(0, 1000, shape=(2,), dtype=np.float64)
        self.action_space = gym.spaces.Discrete(2)

    def _obs(self):
        return np.array([self.episode, self.t], dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return self._obs(), {}

    def step(self, action):
        reward, term, trunc = self.script[self.pos]
        self.pos, self.t = self.pos + 1, self.t + 1
        return self._obs(), reward, term, trunc, {}


def scripted_vec_env(scripts):
    vec = gym.vector.SyncVectorEnv(
        [lambda s=s: ScriptedEnv(s) for s in scripts], autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP
    )
    return GymVecEnv(vec, seed=0)


def test_gym_adapter_flags_and_episodes_on_a_scripted_env():
    # env 0: a 2-step episode (terminated), then a 3-step one (truncated); env 1: one 6-step episode.
    # Env 0's step 2 is the ignored autoreset step: its scripted entry is never used (ignored by gymnasium too).
    s0 = [(1.0, False, False), (2.0, True, False), (5.0, False, False), (4.0, False, False), (8.0, False, True)]
    s1 = [(1.0, False, False)] * 5 + [(3.0, True, False)]
    env = scripted_vec_env([s0, s1])
    obs = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (2, 2)
    np.testing.assert_array_equal(obs, [[0, 0], [0, 0]])
    steps = [env.step(np.zeros(2, dtype=np.int64)) for _ in range(6)]
    col = lambda name: np.array([getattr(s, name) for s in steps])  # noqa: E731  [T, N]
    np.testing.assert_array_equal(col("terminated"), [[0, 0], [1, 0], [0, 0], [0, 0], [0, 0], [0, 1]])
    np.testing.assert_array_equal(col("truncated"), [[0, 0], [0, 0], [0, 0], [0, 0], [0, 0], [1, 0]])
    np.testing.assert_array_equal(col("ignored"), [[0, 0], [0, 0], [1, 0], [0, 0], [0, 0], [0, 0]])
    np.testing.assert_array_equal(col("first"), col("ignored"))
    np.testing.assert_array_equal(col("reward"), [[1, 1], [2, 1], [0, 1], [5, 1], [4, 1], [8, 3]])
    assert col("reward").dtype == np.float32
    # The ignored step returns the next episode's first observation; the truncated step its final one.
    np.testing.assert_array_equal(steps[2].obs[0], [1, 0])
    np.testing.assert_array_equal(steps[5].obs[0], [1, 3])
    assert [s.episodes for s in steps] == [[], [(0, 3.0, 2)], [], [], [], [(0, 17.0, 3), (1, 8.0, 6)]]
    assert env.step(np.zeros(2, dtype=np.int64)).ignored.all()


def test_gym_adapter_images_are_uint8_channels_first():
    class ImageEnv(gym.Env):
        observation_space = gym.spaces.Box(0, 255, shape=(10, 12, 3), dtype=np.uint8)
        action_space = gym.spaces.Discrete(3)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            frame = np.zeros((10, 12, 3), dtype=np.uint8)
            frame[:, :, 2] = 7  # third channel marks the layout
            return frame, {}

        def step(self, action):
            return self.reset()[0], 0.0, False, False, {}

    vec = gym.vector.SyncVectorEnv([ImageEnv, ImageEnv], autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    env = GymVecEnv(vec, seed=0)
    obs = env.reset()
    assert env.single_observation_space.shape == (3, 10, 12) and obs.shape == (2, 3, 10, 12) and obs.dtype == np.uint8
    assert (obs[:, 2] == 7).all() and (obs[:, :2] == 0).all()


def test_gym_env_via_make_vec_env_is_deterministic():
    def run(seed):
        env = make_vec_env(EnvConfig(id="CartPole-v1"), 3, seed=seed)
        first, steps = run_random(env, 60, seed=1)
        env.close()
        return np.concatenate([first[None]] + [s.obs[None] for s in steps]), steps

    a, steps = run(4)
    assert a.dtype == np.float32 and a.shape == (61, 3, 4)
    np.testing.assert_array_equal(a, run(4)[0])
    assert not np.array_equal(a, run(5)[0])
    check_next_step_autoreset(steps)
    assert any(s.episodes for s in steps)


def test_episode_tracker():
    tracker = EpisodeTracker(3)
    assert tracker.update(np.array([1.0, 2.0, 3.0]), np.array([True, True, False]), np.zeros(3, bool)) == []
    assert tracker.update(np.array([1.0, 0.5, 0.0]), np.ones(3, bool), np.array([False, True, True])) == [
        (1, 2.5, 2),
        (2, 3.0, 1),
    ]
    assert tracker.update(np.zeros(3), np.ones(3, bool), np.ones(3, bool)) == [(0, 2.0, 3), (1, 0.0, 1), (2, 0.0, 1)]


# ------------------------------------------------------------------------------------------------- memory task


@pytest.mark.parametrize("delay", [0, 3])
def test_cue_memory_rewards(delay):
    env = gym.make("CueMemory-v0", delay=delay)
    for answer_right in (True, False):
        for seed in range(6):
            obs, info = env.reset(seed=seed)
            cue = info["cue"]
            np.testing.assert_array_equal(obs, np.eye(3, dtype=np.float32)[cue])
            for k in range(delay + 1):
                obs, reward, term, trunc, _ = env.step(1 - cue)  # actions before the query do not matter
                assert reward == 0 and not term and not trunc
                np.testing.assert_array_equal(obs, [0, 0, 1] if k == delay else [0, 0, 0])
            _, reward, term, _, _ = env.step(cue if answer_right else 1 - cue)
            assert term and reward == (1.0 if answer_right else -1.0)
    assert {CueMemoryEnv().reset(seed=s)[1]["cue"] for s in range(20)} == {0, 1}


def test_cue_memory_through_make_vec_env_needs_memory():
    env = make_vec_env(EnvConfig(id="brims_rl.environments.memory:CueMemory-v0"), 8, seed=0)
    assert env.single_observation_space.shape == (3,) and env.single_action_space.n == 2
    obs = env.reset()
    remembered = obs[:, :2].argmax(1)
    memory_returns, fixed = [], []
    for _ in range(200):
        step = env.step(remembered)
        remembered = np.where(step.first, step.obs[:, :2].argmax(1), remembered)
        memory_returns += [r for _, r, _ in step.episodes]
    assert len(memory_returns) > 100 and set(memory_returns) == {1.0}
    # A memoryless policy (always answer 0) is right only when the cue is 0: about half the time.
    env.reset()
    for _ in range(400):
        fixed += [r for _, r, _ in env.step(np.zeros(8, dtype=np.int64)).episodes]
    env.close()
    assert set(fixed) == {1.0, -1.0} and abs(np.mean(fixed)) < 0.2
