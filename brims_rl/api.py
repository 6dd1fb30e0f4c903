"""The Python API (`import brims_rl as br`): compose a config, train (or resume), load a trained policy, evaluate it.

    config = br.make_config("CueMemory-v0", core="lstm", total_steps=20_000)
    result = br.train(config, "runs/quickstart")
    policy = br.load_policy(result.run_dir)
    scores = br.evaluate(policy, episodes=20, greedy=True)

Runs are the CLI's run folders (run_folder.py), so `brims-rl evaluate` and `brims-rl compare` read them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import gymnasium as gym
import torch

from brims_rl.config import Config, validate
from brims_rl.configure import compose_config, record_changed_defaults
from brims_rl.cores import is_recorded_loadably, recorded_name, require_core
from brims_rl.distributed import DistContext
from brims_rl.environments.base import VecEnv
from brims_rl.environments.gym_env import GymVecEnv
from brims_rl.errors import UserError, warn
from brims_rl.evaluation.play import (SEED_OFFSET, EvalResult, check_fits, evaluate_policy, make_evaluation_env)
from brims_rl.policy import Policy, load_policy
from brims_rl.run_folder import RunFolder
from brims_rl.trainer import Callback, Trainer, check_new_run_dir, run_dir_for, stored_run


def make_config(env: str = "CueMemory-v0", *, core: str | None = None, agent: str | None = None,
                protocol: str | None = None, overrides: Iterable[str] = (), total_steps: int | None = None,
                num_envs: int | None = None, seed: int | None = None, device: str | None = None) -> Config:
    """The config `brims-rl train` would build from these flags: defaults <- env preset <- protocol <- agent preset
    (`agent`, or the preset named like `core`) <- these arguments <- `overrides` ("ppo.learning_rate=1e-3", ...).
    Unknown names raise UserError here; numbers are checked when training starts."""
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
    stopped: bool  # stopped before total_steps (the callback returned False)


# Settings a resumed run keeps: they decide the model and the envs its checkpoint belongs to.
KEPT_ON_RESUME = ("env.id", "env.num_envs", "core", "model", "agent", "protocol", "seed")


def train(config: Config | None = None, run_dir: Path | str | None = None, *, resume: bool = False,
          env: Any = None, progress: bool = False, callback: Callback | None = None) -> TrainResult:
    """Train a new run into `run_dir` (default runs/<env>__<core>__s<seed>__<time>), or with `resume=True` continue
    the run in `run_dir` (from its latest checkpoint, to `config.total_steps`); return where it ended.

    Resuming: `config` None continues with the run's stored config; a config given (e.g. the stored one,
    br.Config.load(run_dir / "config.json"), with a larger total_steps) replaces it, but may not change the
    settings in KEPT_ON_RESUME. `env`: train on this vector env instead of making config.env's: a brims-rl VecEnv,
    or a gymnasium VectorEnv with autoreset_mode NEXT_STEP (wrapped; not closed here); config.env should still
    describe it (evaluate rebuilds the env from the config). `progress`: print the CLI's header, progress line and
    end line. `callback(metrics)`: after every update, with the update's metrics (step, total_steps, steps_per_s,
    return, eta_s, updates, episodes, learning_rate, the losses policy_loss, value_loss, entropy, approx_kl,
    old_approx_kl, clipfrac, explained_variance, nonfinite_skips, and core/<key> for a core's diagnostics);
    returning False stops training after a final checkpoint; an exception raised in it saves a checkpoint, then
    propagates. No signal handler is installed, so this runs in any thread.
    """
    if config is not None and not isinstance(config, Config):
        hint = f" (br.make_config({config!r}, ...) builds one)" if isinstance(config, str) else ""
        raise UserError(f"train takes a br.Config{hint}, got {type(config).__name__}")
    if run_dir is not None and not isinstance(run_dir, (str, os.PathLike)):
        raise UserError(f"run_dir must be a path, got {type(run_dir).__name__}")
    state = None
    if resume:
        if run_dir is None:
            raise UserError("resume=True needs the run_dir of the run to continue")
        run_dir = Path(run_dir)
        stored, state = stored_run(run_dir)
        config = _resumed_config(stored, config, run_dir)
    else:
        if config is None:
            raise UserError("train needs a config (br.make_config(...)), or resume=True with a run_dir")
        config = record_changed_defaults(Config.from_dict(config.to_dict()))  # a copy: settings cannot change under it
        require_core(config.core.name)
        config.core.name = recorded_name(config.core.name)
        _warn_if_unloadable(config.core.name)
        run_dir = Path(run_dir) if run_dir is not None else run_dir_for(config)
        check_new_run_dir(run_dir)
    validate(config)
    vec_env = None if env is None else vector_env(env, config.seed, config.env.id, "train")
    trainer = Trainer(config, run_dir, DistContext(), state, env=vec_env, verbose=progress, callback=callback)
    trainer.train()
    returns = list(trainer.recent_returns)
    return TrainResult(step=trainer.global_step, last_return=sum(returns) / len(returns) if returns else math.nan,
                       episodes=trainer.episodes, run_dir=run_dir, checkpoint=RunFolder(run_dir).latest,
                       stopped=trainer.stopped)


def _resumed_config(stored: Config, given: Config | None, run_dir: Path) -> Config:
    if given is None:
        return stored
    config = record_changed_defaults(Config.from_dict(given.to_dict()))
    config.core.name = recorded_name(config.core.name)
    old, new = stored.to_dict(), config.to_dict()
    for key in KEPT_ON_RESUME:
        *parents, leaf = key.split(".")
        a, b = old, new
        for part in parents:
            a, b = a[part], b[part]
        if a[leaf] != b[leaf]:
            raise UserError(f"{key} cannot change when resuming (the run in {run_dir} has {a[leaf]!r}, the config "
                            f"{b[leaf]!r}); change total_steps, device, ppo, perf or checkpoint settings only")
    return config


def _warn_if_unloadable(name: str) -> None:
    if not is_recorded_loadably(name):
        warn(f"core {name!r} is recorded under its registered name, because its factory cannot be imported from a "
             "module (it is defined in __main__ or inside a function): another process (evaluate, resume, "
             "load_policy) must call br.register_core first; define the factory in an importable module to record "
             "it as module:factory")


def vector_env(env: Any, seed: int, name: str, purpose: str) -> VecEnv:
    """A brims-rl VecEnv as it is; a gymnasium VectorEnv wrapped (it must autoreset on the next step; env i is
    seeded seed + i at its first reset)."""
    if isinstance(env, gym.vector.VectorEnv):
        mode = env.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
        try:
            mode = gym.vector.AutoresetMode(mode)
        except ValueError:
            pass
        if mode != gym.vector.AutoresetMode.NEXT_STEP:
            raise UserError(f"{purpose} needs a gymnasium vector env with autoreset_mode NEXT_STEP (the step after an "
                            f"episode's end returns the next episode's first observation), got {mode}; make it with "
                            "gymnasium.make_vec(..., vector_kwargs={'autoreset_mode': "
                            "gymnasium.vector.AutoresetMode.NEXT_STEP}) (Policy.act takes either mode: see "
                            "docs/getting-started.md#python-api)")
        return GymVecEnv(env, seed=seed, name=name)
    if all(hasattr(env, name) for name in ("num_envs", "single_observation_space", "single_action_space", "reset",
                                            "step", "close")):
        return env
    raise UserError(f"env must be a brims-rl VecEnv or a gymnasium VectorEnv, got {type(env).__name__}")


def evaluate(run_or_policy: Policy | Path | str, env: Any = None, *, episodes: int = 10, greedy: bool = False,
             seed: int | None = None, num_envs: int = 8, device: str | torch.device = "cpu",
             life_reset: bool = True) -> EvalResult:
    """Whole-game scores of a policy (or of a run folder's or checkpoint's), by the evaluation `brims-rl evaluate`
    runs: no episodic life, unclipped rewards, min(episodes, num_envs) envs of which env i counts only its first
    games, env i seeded seed + i (default seed: the run's seed + 1000).

    `env`: None plays the run's env (config.env, under the evaluation protocol; `life_reset` as in training, see
    docs/evaluate-compare.md); an env id plays that env with the run's settings; a brims-rl VecEnv or a gymnasium
    VectorEnv (NEXT_STEP autoreset; not closed here) is played as it is, with its own number of envs. Sampled actions
    (greedy False) come from a generator seeded with the seed. Nothing is written to the run folder.
    """
    policy = run_or_policy if isinstance(run_or_policy, Policy) else load_policy(run_or_policy, device)
    config = policy.config
    seed = config.seed + SEED_OFFSET if seed is None else seed
    if episodes < 1 or num_envs < 1:
        raise UserError(f"episodes and num_envs must be at least 1, got {episodes} and {num_envs}")
    owned = env is None or isinstance(env, str)
    if owned:
        settings = config.env if env is None else Config.from_dict({"env": {**config.to_dict()["env"], "id": env}}).env
        vec_env = make_evaluation_env(settings, min(episodes, num_envs), seed, life_reset=life_reset).env
        name = settings.id
    else:
        name = config.env.id
        vec_env = vector_env(env, seed, name, "evaluate")
    try:
        check_fits(policy, vec_env, name)
        return evaluate_policy(policy, vec_env, episodes, greedy, seed)
    finally:
        if owned:
            vec_env.close()
