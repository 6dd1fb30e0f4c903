"""The Python API (`import brims_rl as br`): compose a config, train, and load a trained policy.

    config = br.make_config("CueMemory-v0", core="lstm", total_steps=20_000)
    result = br.train(config, "runs/quickstart")
    policy = br.load_policy(result.run_dir)

Runs are the CLI's run folders (config.json, TensorBoard events, checkpoints/), so `brims-rl evaluate` and
`brims-rl compare` read them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import gymnasium as gym

from brims_rl import checkpoint
from brims_rl.config import Config, validate
from brims_rl.configure import compose_config, record_changed_defaults
from brims_rl.cores import require_core
from brims_rl.distributed import DistContext
from brims_rl.environments.base import VecEnv
from brims_rl.environments.gym_env import GymVecEnv
from brims_rl.errors import UserError
from brims_rl.trainer import Trainer, default_run_dir


def make_config(env: str = "CueMemory-v0", *, core: str | None = None, agent: str | None = None,
                protocol: str | None = None, overrides: Iterable[str] = (), total_steps: int | None = None,
                num_envs: int | None = None, seed: int | None = None, device: str | None = None) -> Config:
    """The config `brims-rl train` would build from these flags: defaults <- env preset <- protocol <- agent preset
    (`agent`, or the preset named like `core`) <- these arguments <- `overrides` ("ppo.learning_rate=1e-3", ...)."""
    flags = {("env", "num_envs"): num_envs, ("seed",): seed, ("total_steps",): total_steps, ("device",): device}
    overrides = [overrides] if isinstance(overrides, str) else list(overrides)
    return compose_config(env, core, agent, flags, overrides, protocol=protocol)


@dataclass(frozen=True)
class TrainResult:
    step: int  # environment steps trained (all envs)
    last_return: float  # mean of the last 100 episodic returns of this training (nan if no episode ended)
    episodes: int  # episodes finished in this training
    run_dir: Path
    checkpoint: Path  # the run's latest checkpoint


def train(config: Config, run_dir: Path | str | None = None, *, env: Any = None, progress: bool = False,
          callback: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train a new run into `run_dir` (default runs/<env>__<core>__s<seed>__<time>) and return where it ended.

    `env`: train on this vector env instead of making config.env's: a brims-rl VecEnv, or a gymnasium VectorEnv with
    autoreset_mode NEXT_STEP (wrapped; not closed here); config.env should still describe it (evaluate rebuilds the env
    from the config). `progress`: print the CLI's header, progress line and end line. `callback(numbers)`: after every
    update, with the progress line's numbers (step, total_steps, steps_per_s, return, eta_s, updates, episodes,
    learning_rate). No signal handler is installed, so this runs in any thread.
    """
    config = record_changed_defaults(Config.from_dict(config.to_dict()))  # a copy: settings cannot change under it
    validate(config)
    require_core(config.core.name)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    if (run_dir / "config.json").exists():
        raise UserError(f"{run_dir} already holds a run; continue it with: brims-rl train --resume {run_dir}")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} is a file, not a folder")
    vec_env = None if env is None else _vector_env(env, config)
    trainer = Trainer(config, run_dir, DistContext(), None, env=vec_env, verbose=progress, callback=callback)
    trainer.train()
    returns = list(trainer.recent_returns)
    return TrainResult(step=trainer.global_step, last_return=sum(returns) / len(returns) if returns else math.nan,
                       episodes=trainer.episodes, run_dir=run_dir,
                       checkpoint=run_dir / "checkpoints" / checkpoint.LATEST)


def _vector_env(env: Any, config: Config) -> VecEnv:
    """A brims-rl VecEnv as it is; a gymnasium VectorEnv wrapped (it must autoreset on the next step)."""
    if isinstance(env, gym.vector.VectorEnv):
        mode = env.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
        try:
            mode = gym.vector.AutoresetMode(mode)
        except ValueError:
            pass
        if mode != gym.vector.AutoresetMode.NEXT_STEP:
            raise UserError(f"train needs a gymnasium vector env with autoreset_mode NEXT_STEP, got {mode}; make it "
                            "with gymnasium.make_vec(..., vector_kwargs={'autoreset_mode': "
                            "gymnasium.vector.AutoresetMode.NEXT_STEP})")
        return GymVecEnv(env, seed=config.seed, name=config.env.id)
    if all(hasattr(env, name) for name in ("num_envs", "single_observation_space", "single_action_space", "reset",
                                            "step", "close")):
        return env
    raise UserError(f"env must be a brims-rl VecEnv or a gymnasium VectorEnv, got {type(env).__name__}")
