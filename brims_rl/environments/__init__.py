"""Vectorised environments behind one interface (base.VecEnv / base.VecStep) with next-step autoreset.

`make_vec_env(cfg, num_envs, seed, training)` builds Atari games through envpool (default) or ale-py with the
configured protocol, and any gymnasium id (including `module:EnvId-v0`, and POPGym's `popgym-*` and MiniGrid's
`MiniGrid-*`/`BabyAI-*` ids, for which popgym or minigrid is imported first) through gymnasium's vector env; with
`previous_action`, POPGym envs are wrapped in popgym's Antialias(PreviousAction(env)) (previous_action.py).
"""

from __future__ import annotations

import numbers

from brims_rl.config import BACKENDS, EnvConfig
from brims_rl.environments import memory  # noqa: F401  (registers CueMemory-v0)
from brims_rl.environments.base import VecEnv, VecStep
from brims_rl.environments.previous_action import wrap_previous_action
from brims_rl.environments.registry import EnvSpec, is_minigrid_id, is_popgym_id, resolve_env
from brims_rl.environments.stats import EpisodeTracker
from brims_rl.errors import UserError

# The EnvConfig fields only Atari games read (the protocol's preprocessing and the backend); every env reads id,
# num_envs and, for gymnasium ids, kwargs.
ATARI_SETTINGS = frozenset({"backend", "frame_skip", "noop_max", "frame_stack", "image_size", "grayscale",
                            "sticky_actions", "full_action_space", "fire_reset", "episodic_life", "reward_clip",
                            "max_episode_steps", "threads"})
_MAX_SEED = 2**31 - 1  # envpool and ale seeds are 32-bit signed ints


def _check(num_envs: int, seed: int) -> None:
    """The call's own numbers (the settings in `cfg` are config.validate's, checked once when a run starts)."""
    if not (isinstance(num_envs, numbers.Integral) and num_envs >= 1):
        raise UserError(f"number of envs must be a positive integer, got {num_envs!r}")
    if not (isinstance(seed, numbers.Integral) and 0 <= seed and seed + num_envs <= _MAX_SEED):
        raise UserError(f"seed must be an integer in [0, {_MAX_SEED - num_envs}], got {seed!r}")


def make_vec_env(cfg: EnvConfig, num_envs: int, seed: int, training: bool = True,
                 life_reset: bool = False) -> VecEnv:
    """Build `num_envs` copies of `cfg.id`; env i is seeded from `seed` + i (same seed, same actions: same run).

    training=False is the evaluation protocol: no episodic life and no reward clipping, everything else identical.
    life_reset=True (Atari with cfg.episodic_life) keeps full-game scores but handles each life loss as training did:
    the next step starts the new life (FIRE with fire reset) and flags its observation `first`.
    Atari options apply to Atari games only; gymnasium ids always use gymnasium's synchronous vector env.
    """
    _check(num_envs, seed)
    num_envs, seed = int(num_envs), int(seed)
    spec = resolve_env(cfg.id)
    if spec.is_atari:
        if cfg.kwargs:
            raise UserError(f"env.kwargs is for gymnasium ids; {spec.name} is an Atari game (use the env.* settings)")
        if cfg.backend == "envpool":
            from brims_rl.environments.atari import EnvpoolVecEnv

            return EnvpoolVecEnv(spec, cfg, num_envs, seed, training, life_reset=life_reset)
        if cfg.backend == "ale":
            from brims_rl.environments.atari import AleVecEnv

            return AleVecEnv(spec, cfg, num_envs, seed, training, life_reset=life_reset)
        raise UserError(f"unknown env backend '{cfg.backend}'; choose one of: {', '.join(BACKENDS)}")
    if cfg.previous_action and not is_popgym_id(cfg.id):
        raise UserError(f"env.previous_action applies to POPGym ids (popgym-...) only, not to '{cfg.id}'")
    return _make_gym(spec, num_envs, seed, cfg.kwargs, previous_action=cfg.previous_action)


def _make_gym(spec: EnvSpec, num_envs: int, seed: int, kwargs: dict, previous_action: bool = False) -> VecEnv:
    import gymnasium as gym

    from brims_rl.environments.gym_env import GymVecEnv

    try:
        vec_env = gym.make_vec(
            spec.gym_id,
            num_envs=num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP},
            wrappers=[wrap_previous_action] if previous_action else None,
            **kwargs,
        )
    except (TypeError, ValueError) as exc:  # a keyword the env does not take, or a value it rejects
        raise UserError(f"cannot make env '{spec.name}' with env.kwargs {kwargs}: {exc}") from None
    except gym.error.Error as exc:
        raise UserError(f"cannot make env '{spec.name}': {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return GymVecEnv(vec_env, seed=seed, name=spec.name)


__all__ = ["ATARI_SETTINGS", "EnvSpec", "EpisodeTracker", "VecEnv", "VecStep", "is_minigrid_id", "is_popgym_id",
           "make_vec_env", "resolve_env"]
