"""Videos of evaluation games: an RGB "twin" of env 0 stepped in lockstep with the policy's actions, written as mp4.

The policy sees preprocessed observations (84x84 grey stacks for Atari) that make a poor video. The twin is a second,
single environment with the same game, seed and protocol (evaluation: full games, unclipped rewards), whose
observations are full-size RGB frames (210x160 for Atari; `render("rgb_array")` for gymnasium envs). It receives env
0's action at every step, so it replays env 0's game exactly; `Recorder.step` checks that claim on every step (same
reward, same end of game) and reports whether it held.

The frames of one episode are: the first observation, then the observation after each agent step up to and including
the last one of the game, i.e. episode length + 1 frames, plus one frame per life the env started (evaluation with
life reset: the step that starts a new life is not an agent step, but its screen is part of the game). Frames are
streamed to the encoder, never all kept in memory.

With a `panel` (RIMs/BRIMs: module_views.ModulePanel), every frame gets a side panel to the right of the game showing
the modules that were active at the agent step that led to it (the first frame, before any step: none lit).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
from pathlib import Path

import numpy as np

from brims_rl.config import EnvConfig
from brims_rl.environments import resolve_env
from brims_rl.errors import UserError

ATARI_FRAME = (210, 160)  # the ALE screen, height x width
ATARI_FPS = 60  # frames per second of the Atari console; the video runs at 60 / frame_skip agent steps per second


def check_video_path(path: Path) -> Path:
    """Fail before a long evaluation, not after it: an .mp4 name in an existing, writable folder."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise UserError(f"--video must name an .mp4 file, got {path}")
    if path.is_dir():
        raise UserError(f"--video {path} is a folder; give a file name ending in .mp4")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"--video: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UserError(f"--video: folder {folder} is not writable")
    try:
        import imageio  # noqa: F401
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        raise UserError("--video needs imageio and imageio-ffmpeg (pip install imageio imageio-ffmpeg)") from None
    return path


def make_rgb_atari_twin(cfg: EnvConfig, seed: int, life_reset: bool = False):
    """One Atari env seeded like env 0 of `make_vec_env(cfg, n, seed, training=False)` whose observation is the
    full-size RGB screen, channels first [3, 210, 160] (same game, backend, frame skip, no-ops, sticky actions,
    fire reset, time limit; evaluation protocol, with the same life handling)."""
    spec = resolve_env(cfg.id)
    rgb_cfg = dataclasses.replace(cfg, grayscale=False, frame_stack=1)
    from brims_rl.environments.atari import AleVecEnv, EnvpoolVecEnv

    adapter = EnvpoolVecEnv if cfg.backend == "envpool" else AleVecEnv
    return adapter(spec, rgb_cfg, 1, seed, training=False, image_shape=ATARI_FRAME, life_reset=life_reset)


class _AtariTwin:
    def __init__(self, cfg: EnvConfig, seed: int, life_reset: bool = False) -> None:
        self.env = make_rgb_atari_twin(cfg, seed, life_reset)
        self.fps = ATARI_FPS / cfg.frame_skip

    @staticmethod
    def _frame(obs: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(obs[0, -3:].transpose(1, 2, 0))  # [1, 3, H, W] -> [H, W, 3]

    def reset(self) -> np.ndarray:
        return self._frame(self.env.reset())

    def step(self, action: int) -> tuple[np.ndarray, float, bool]:
        step = self.env.step(np.array([action]))
        return self._frame(step.obs), float(step.reward[0]), bool(step.episodes)

    def close(self) -> None:
        self.env.close()


class _GymTwin:
    def __init__(self, gym_id: str, seed: int) -> None:
        import gymnasium as gym

        probe = gym.make(gym_id)
        modes = probe.metadata.get("render_modes") or []
        fps = probe.metadata.get("render_fps") or 30
        probe.close()
        if "rgb_array" not in modes:
            raise UserError(f"--video is not supported for env '{gym_id}': it cannot render rgb_array frames")
        try:
            self.env = gym.make(gym_id, render_mode="rgb_array")
        except Exception as exc:  # e.g. a renderer whose optional dependency (pygame) is missing
            raise UserError(f"--video: env '{gym_id}' cannot render ({type(exc).__name__}: {exc})") from None
        self.seed, self.fps = seed, float(fps)

    def _frame(self) -> np.ndarray:
        try:
            frame = np.asarray(self.env.render())
        except Exception as exc:  # gymnasium renderers import their optional dependencies (pygame) only here
            raise UserError(f"--video: env '{self.env.spec.id if self.env.spec else 'env'}' cannot render "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        if frame.ndim != 3 or frame.shape[-1] != 3:
            raise UserError(f"--video: env rendered frames of shape {frame.shape}, expected [H, W, 3]")
        return frame.astype(np.uint8, copy=False)

    def reset(self) -> np.ndarray:
        self.env.reset(seed=self.seed)  # gymnasium's vector env seeds env i with seed + i: env 0 gets `seed`
        return self._frame()

    def step(self, action) -> tuple[np.ndarray, float, bool]:
        """`action`: one env's action as the vector env received it (an int, or an array for MultiDiscrete/Box)."""
        action = action.item() if np.ndim(action) == 0 else np.asarray(action)
        _, reward, terminated, truncated, _ = self.env.step(action)
        return self._frame(), float(reward), bool(terminated or truncated)

    def close(self) -> None:
        self.env.close()


class Recorder:
    """Plays env 0's first episode again on the RGB twin and streams its frames to an mp4.

    Call `step(action, reward, episode_over)` with env 0's action, reward and whether its first game ended at
    that step, until `done`. `matched` stays True while the twin's rewards and end of game equal env 0's.
    """

    def __init__(self, cfg: EnvConfig, seed: int, path: Path, life_reset: bool = False, panel=None) -> None:
        self.panel = panel
        spec = resolve_env(cfg.id)
        self.twin = _AtariTwin(cfg, seed, life_reset) if spec.is_atari else _GymTwin(spec.gym_id, seed)
        self.path = Path(path)
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp{self.path.suffix}")
        try:
            first_frame = self.twin.reset()
        except BaseException:
            self.twin.close()
            raise
        import imageio

        # macro_block_size=1: keep 210x160 (or 210x320 with the panel) exactly (even, as yuv420p needs), no padding.
        self._writer = imageio.get_writer(self._tmp, format="FFMPEG", mode="I", fps=self.twin.fps, codec="libx264",
                                          macro_block_size=1, quality=8, ffmpeg_log_level="quiet")
        self.frames = 0
        self.matched = True
        self.mismatch: str | None = None
        self.done = False
        self._steps = 0
        self._append(first_frame)

    def _append(self, frame: np.ndarray, modules: list[np.ndarray] | None = None) -> None:
        if self.panel is not None:
            frame = np.concatenate([frame, self.panel.render(frame.shape[0], modules)], axis=1)
        self._writer.append_data(frame)
        self.frames += 1

    def step(self, action: int, reward: float, episode_over: bool, modules: list[np.ndarray] | None = None) -> None:
        """`modules`: per layer the active modules of the step that chose `action` (drawn in the panel)."""
        if self.done:
            return
        frame, twin_reward, twin_over = self.twin.step(action)
        self._steps += 1
        self._append(frame, modules)
        if self.matched and (twin_reward != reward or twin_over != episode_over):
            self.matched = False
            self.mismatch = (f"step {self._steps}: env 0 reward {reward:g}, game over {episode_over}; "
                             f"video env reward {twin_reward:g}, game over {twin_over}")
        if episode_over:
            self.done = True

    def finish(self) -> None:
        """Close the file and move it into place (atomically: a reader never sees half a video).

        ffmpeg's own write errors (disk full) do not reach Python, so the file is checked to hold every frame first;
        a short or unreadable one raises OSError naming the video (the caller's `abort` removes the temp file).
        """
        self._writer.close()
        self.twin.close()
        try:
            import imageio_ffmpeg

            whole = imageio_ffmpeg.count_frames_and_secs(str(self._tmp))[0] == self.frames
        except (RuntimeError, OSError):
            whole = False
        if not whole:
            raise OSError(errno.EIO, "the video encoder could not write the whole file (disk full or not writable?)",
                          str(self.path))
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(Exception):
            self.twin.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()


def frame_count(path: Path) -> int:
    """Frames in a video file, counted by decoding (used by tests and checks)."""
    import imageio

    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        return sum(1 for _ in reader)
    finally:
        reader.close()


__all__ = ["Recorder", "check_video_path", "frame_count", "make_rgb_atari_twin"]
