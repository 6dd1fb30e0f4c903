"""Atari through envpool (default) or ale-py's C++ vector env, both adapted to the same VecStep semantics.

Every preprocessing option is passed explicitly: the two libraries' defaults differ.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from brims_rl.config import EnvConfig
from brims_rl.environments.base import VecStep
from brims_rl.environments.registry import EnvSpec
from brims_rl.environments.stats import EpisodeTracker
from brims_rl.errors import UserError


def frame_size(cfg: EnvConfig) -> tuple[int, int]:
    """The policy's square frames, height x width."""
    return cfg.image_size, cfg.image_size


class EnvpoolVecEnv:
    """envpool's Atari pool in synchronous mode (batch_size == num_envs).

    Measured envpool 1.2.5 behaviour this adapter relies on: after ANY done (game over, time limit, or a life loss
    with episodic life) the next step ignores the action and returns reward 0 and the first observation of the next
    episode or life; info["reward"] is the unclipped reward, info["terminated"] the real game over, and the step
    count behind the time limit (info["elapsed_step"]) counts the agent steps of the whole game, ignored steps not
    included.
    """

    def __init__(self, spec: EnvSpec, cfg: EnvConfig, num_envs: int, seed: int, training: bool,
                 image_shape: tuple[int, int] | None = None) -> None:
        try:
            import envpool
        except ImportError:
            raise UserError("env backend 'envpool' is not installed (pip install envpool), or use backend 'ale'") from None
        if spec.envpool_task is None:
            raise UserError(f"envpool does not ship the Atari game '{spec.name}'; use backend 'ale'")
        self.spec = spec
        self.num_envs = num_envs
        self.env = envpool.make(
            spec.envpool_task,
            env_type="gymnasium",
            num_envs=num_envs,
            batch_size=num_envs,
            num_threads=cfg.threads,
            seed=seed,
            max_episode_steps=cfg.max_episode_steps,
            frame_skip=cfg.frame_skip,
            # envpool draws U{1..noop_max} no-op frames (one fewer with fire reset) and crashes on noop_max=0:
            # 1 is its "no no-ops" setting (at most one frame).
            noop_max=max(cfg.noop_max, 1),
            stack_num=cfg.frame_stack,
            img_height=(image_shape or frame_size(cfg))[0],
            img_width=(image_shape or frame_size(cfg))[1],
            gray_scale=cfg.grayscale,
            repeat_action_probability=cfg.sticky_actions,
            use_fire_reset=cfg.fire_reset,
            episodic_life=cfg.episodic_life and training,
            reward_clip=cfg.reward_clip and training,
            full_action_space=cfg.full_action_space,
            zero_discount_on_life_loss=False,
            use_inter_area_resize=True,
        )
        self.single_observation_space = self.env.observation_space
        self.single_action_space = self.env.action_space
        self._order = np.arange(num_envs)
        self._done = np.zeros(num_envs, dtype=bool)
        self._stats = EpisodeTracker(num_envs)

    def reset(self) -> np.ndarray:
        obs, info = self.env.reset()
        obs, info = self._in_order(obs, info)
        self._done = np.zeros(self.num_envs, dtype=bool)  # new arrays: returned VecSteps keep theirs
        self._stats.reset()
        return obs

    def _in_order(self, obs: np.ndarray, info: dict, *arrays: np.ndarray) -> tuple:
        """Results in env order (synchronous envpool already returns them so; checked, cheap)."""
        if np.array_equal(info["env_id"], self._order):
            return (obs, info, *arrays)
        perm = np.argsort(info["env_id"])
        info = {k: (v[perm] if isinstance(v, np.ndarray) and v.shape[:1] == (self.num_envs,) else v) for k, v in info.items()}
        return (obs[perm], info, *(a[perm] for a in arrays))

    def step(self, actions: np.ndarray) -> VecStep:
        obs, reward, term, trunc, info = self.env.step(np.asarray(actions))
        obs, info, reward, term, trunc = self._in_order(obs, info, reward, term, trunc)
        ignored = self._done
        terminated = term & ~ignored
        truncated = trunc & ~terminated & ~ignored
        game_over = (info["terminated"].astype(bool) | trunc) & ~ignored  # a real game over or the time limit
        self._done = terminated | truncated
        episodes = self._stats.update(np.where(ignored, np.float32(0), info["reward"]), ~ignored, game_over)
        return VecStep.autoreset(obs, reward, terminated, truncated, ignored, episodes)

    def close(self) -> None:
        close = getattr(self.env, "close", None)
        if close is not None:
            close()


class AleVecEnv:
    """ale-py's threaded C++ vector env, with episodic life and reward clipping done here.

    ale-py's own episodic life resets the whole game on a life loss and its info carries no unclipped reward, so the
    C++ env runs without either, and this adapter (training protocol only) ends the training episode on a life loss
    (terminated), keeps the game running and makes the next step an ignored one, like envpool: that step sends FIRE
    (with fire reset, where the game has FIRE) or NOOP instead of the agent's action, its reward is not trained on,
    and its observation is the first of the new life. Rewards are clipped to their sign here.
    """

    def __init__(self, spec: EnvSpec, cfg: EnvConfig, num_envs: int, seed: int, training: bool,
                 image_shape: tuple[int, int] | None = None) -> None:
        try:
            import ale_py
            from ale_py.vector_env import AtariVectorEnv
        except ImportError:
            raise UserError("env backend 'ale' is not installed (pip install ale-py)") from None
        if spec.ale_game is None:
            raise UserError(f"ale-py does not ship the Atari game '{spec.name}'; use backend 'envpool'")
        self.spec = spec
        self.num_envs = num_envs
        self._seed = seed
        self._episodic_life = cfg.episodic_life and training
        self._clip = cfg.reward_clip and training
        self._color = not cfg.grayscale
        self.env = AtariVectorEnv(
            spec.ale_game,
            num_envs,
            batch_size=num_envs,
            num_threads=cfg.threads,
            thread_affinity_offset=-1,
            # ale counts agent steps x frame skip here (reset no-ops are not counted), i.e. envpool's limit; the
            # forced step after each life loss (training only) counts too, so games may end up to lives-1 steps early.
            max_num_frames_per_episode=cfg.max_episode_steps * cfg.frame_skip,
            repeat_action_probability=cfg.sticky_actions,
            full_action_space=cfg.full_action_space,
            continuous=False,
            autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP,
            img_height=(image_shape or frame_size(cfg))[0],
            img_width=(image_shape or frame_size(cfg))[1],
            grayscale=cfg.grayscale,
            stack_num=cfg.frame_stack,
            frameskip=cfg.frame_skip,
            maxpool=True,
            noop_max=cfg.noop_max,
            episodic_life=False,
            life_loss_info=False,
            reward_clipping=False,
            use_fire_reset=cfg.fire_reset,
        )
        action_set = list(self.env.ale.get_action_set())
        self._life_start_action = (
            action_set.index(ale_py.Action.FIRE) if cfg.fire_reset and ale_py.Action.FIRE in action_set else 0
        )
        shape = self.env.single_observation_space.shape
        if self._color:  # [stack, H, W, 3] -> [stack * 3, H, W], envpool's layout
            shape = (shape[0] * 3, shape[1], shape[2])
        self.single_observation_space = gym.spaces.Box(0, 255, shape=shape, dtype=np.uint8)
        self.single_action_space = self.env.single_action_space
        self._backend_done = np.zeros(num_envs, dtype=bool)  # the C++ env autoresets on the next step
        self._life_start = np.zeros(num_envs, dtype=bool)  # next step is the forced first step of a new life
        self._lives = np.zeros(num_envs, dtype=np.int64)
        self._reset_seed: int | None = seed
        self._stack = cfg.frame_stack
        self._game_steps = np.zeros(num_envs, dtype=np.int64)  # steps since each game's first observation
        self._stats = EpisodeTracker(num_envs)

    def _obs(self, obs: np.ndarray) -> np.ndarray:
        # ale-py pads the frame stack of a new game with zero frames, envpool with copies of the first frame: pad
        # like envpool (only the envs within stack-1 steps of a game's start pay for this).
        young = np.flatnonzero(self._game_steps < self._stack - 1)
        for i in young:
            oldest = self._stack - 1 - self._game_steps[i]
            obs[i, :oldest] = obs[i, oldest]
        if self._color:
            n, stack, h, w, c = obs.shape
            obs = obs.transpose(0, 1, 4, 2, 3).reshape(n, stack * c, h, w)
        return obs

    def reset(self) -> np.ndarray:
        obs, info = self.env.reset(seed=self._reset_seed)
        self._reset_seed = None  # seeded once; later resets continue the envs' own random streams
        self._lives = info["lives"].astype(np.int64)
        self._backend_done = np.zeros(self.num_envs, dtype=bool)  # new arrays: returned VecSteps keep theirs
        self._life_start = np.zeros(self.num_envs, dtype=bool)
        self._stats.reset()
        self._game_steps[:] = 0
        return self._obs(obs)

    def step(self, actions: np.ndarray) -> VecStep:
        actions = np.asarray(actions, dtype=np.int64)
        life_start = self._life_start
        if life_start.any():
            actions = actions.copy()
            actions[life_start] = self._life_start_action
        obs, raw, term, trunc, info = self.env.step(actions)
        raw = raw.astype(np.float32)
        autoreset = self._backend_done
        ignored = autoreset | life_start
        lives = info["lives"]
        if self._episodic_life:
            life_lost = (lives < self._lives) & ~autoreset
        else:
            life_lost = np.zeros(self.num_envs, dtype=bool)
        self._lives = lives.astype(np.int64)
        game_over = term | trunc
        terminated = (term | life_lost) & ~ignored
        truncated = trunc & ~terminated & ~ignored
        self._backend_done = game_over
        self._life_start = life_lost & ~game_over
        reward = np.sign(raw) if self._clip else raw
        # The game score counts every frame the game ran, the forced life-start step included.
        episodes = self._stats.update(np.where(autoreset, np.float32(0), raw), ~ignored, game_over)
        self._game_steps += 1
        self._game_steps[autoreset] = 0
        return VecStep.autoreset(self._obs(obs), reward, terminated, truncated, ignored, episodes)

    def close(self) -> None:
        self.env.close()
