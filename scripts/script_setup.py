"""What the GPU-check scripts (replay_check.py, profile_update.py) share: their common arguments, and the config,
device and seeds those arguments give."""

from __future__ import annotations

import argparse

import torch

from brims_rl.config import Config
from brims_rl.configure import compose_config
from brims_rl.runtime import seed_everything


def script_parser(doc: str, env: str) -> argparse.ArgumentParser:
    """A parser with --env (default `env`), --agent, --device, --num-envs and --set, described by `doc`'s first line."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--env", default=env)
    p.add_argument("--agent", default="brims")
    p.add_argument("--device", default="cuda")
    p.add_argument("--num-envs", type=int, default=64)
    p.add_argument("--set", action="append", default=[])
    return p


def script_config(args: argparse.Namespace) -> tuple[Config, torch.device]:
    """The run config of these arguments (as `brims-rl train` builds it) and its device, with every seed set."""
    flags = {("device",): args.device, ("env", "num_envs"): args.num_envs}
    config = compose_config(args.env, agent=args.agent, flags=flags, overrides=args.set)
    seed_everything(config.seed, config.torch_deterministic, config.perf.tf32)
    return config, torch.device(args.device)
