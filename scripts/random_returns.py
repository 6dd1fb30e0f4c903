"""Chance level of gymnasium tasks: the mean episodic return of a uniformly random policy.

    python scripts/random_returns.py ENV_ID [ENV_ID ...] [--episodes 2000] [--seed 1]

For each gymnasium env name, resolved as `brims-rl train --env` resolves it (POPGym ids, `module:EnvId-v0`):
`--episodes` episodes with actions drawn from the action space (seeded), and the mean return with its standard error.
This is the level a policy that has learned nothing scores, the reference line for short learning runs.
"""

from __future__ import annotations

import argparse
import math

import gymnasium as gym
import numpy as np

from brims_rl.environments.registry import resolve_env
from brims_rl.errors import UserError


def random_returns(env_id: str, episodes: int, seed: int) -> np.ndarray:
    """The returns of `episodes` episodes of uniformly random actions."""
    spec = resolve_env(env_id)
    if spec.kind != "gym":
        raise UserError(f"{env_id} is an Atari game; this script plays gymnasium envs")
    env = gym.make(spec.gym_id)
    env.action_space.seed(seed)
    returns = np.empty(episodes)
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            done = terminated or truncated
        returns[episode] = total
    env.close()
    return returns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("envs", nargs="+", metavar="ENV_ID")
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print("| env | random policy: mean return ± s.e. | episodes |")
    print("|---|---:|---:|")
    for env_id in args.envs:
        returns = random_returns(env_id, args.episodes, args.seed)
        sem = returns.std(ddof=1) / math.sqrt(len(returns))
        print(f"| {env_id} | {returns.mean():.3f} ± {sem:.3f} | {len(returns)} |")


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        raise SystemExit(f"random_returns.py: error: {exc}") from None
