"""The previous action in a POPGym observation, through popgym's own wrappers (`env.previous_action`).

POPGym's baselines (popgym/baselines/ppo.py) wrap every env as `Antialias(PreviousAction(env))`: the observation
becomes a Tuple of the env's observation, the action taken before it (a null action, 0, after a reset) and an
is-first flag (Discrete(2), 1 on the first observation of an episode). popgym's wrappers require the bare POPGym
env, so the checker wrappers gymnasium's `make` puts around it (popgym registers its ids without a time limit or
order enforcing) are taken off first.
"""

from __future__ import annotations

import gymnasium as gym

from brims_rl.errors import UserError

_CHECKERS = (gym.wrappers.PassiveEnvChecker, gym.wrappers.OrderEnforcing)


def wrap_previous_action(env: gym.Env) -> gym.Env:
    """`Antialias(PreviousAction(env))` with popgym's classes, on the POPGym env inside gymnasium's checkers."""
    from popgym.core.env import POPGymEnv
    from popgym.wrappers import Antialias, PreviousAction

    inner = env
    while isinstance(inner, _CHECKERS):
        inner = inner.env
    if not isinstance(inner, POPGymEnv):
        raise UserError(f"env.previous_action needs a POPGym env, but {env} wraps {type(inner).__name__} in "
                        "wrappers popgym's PreviousAction cannot see through")
    return Antialias(PreviousAction(inner))
