"""`brims-rl bench`: environment, rollout, update and end-to-end training throughput per core, side by side."""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from typing import Any

import numpy as np
import torch

from brims_rl.agent import Agent, count_parameters
from brims_rl.config import Config
from brims_rl.cores import CORES
from brims_rl.distributed import DistContext
from brims_rl.environments import make_vec_env
from brims_rl.errors import UserError
from brims_rl.ppo import make_optimizer, ppo_update
from brims_rl.rollout import Collector
from brims_rl.train import count, make_config, resolve_device, seed_everything


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="measure env, rollout, update and training steps/s per core",
                              description="Throughput of each stage with the default PPO settings, per core.")
    p.add_argument("--cores", nargs="+", default=["ff", "lstm", "rims", "brims"], help="cores to measure")
    p.add_argument("--env", default="Pong", help="environment (default Pong)")
    p.add_argument("--env-backend", choices=["envpool", "ale"], default="envpool")
    p.add_argument("--num-envs", type=count, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--updates", type=count, default=5, help="timed PPO iterations per core (after one warm-up)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting for every core, as in train (e.g. ppo.num_steps=64)")
    p.set_defaults(func=run)


def measure_env(config: Config, steps: int) -> float:
    env = make_vec_env(config.env, config.env.num_envs, seed=config.seed, training=True)
    env.reset()
    rng = np.random.default_rng(0)
    actions = rng.integers(0, env.single_action_space.n, size=(steps, env.num_envs))
    env.step(actions[0])
    start = time.perf_counter()
    for t in range(1, steps):
        env.step(actions[t])
    elapsed = time.perf_counter() - start
    env.close()
    return (steps - 1) * env.num_envs / elapsed


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_core(config: Config, updates: int) -> dict[str, Any]:
    """Rollout, update and end-to-end steps/s of one core; peak memory so far."""
    device = resolve_device(config.device, DistContext())
    seed_everything(config.seed, config.torch_deterministic)
    env = make_vec_env(config.env, config.env.num_envs, seed=config.seed, training=True)
    agent = Agent(env.single_observation_space.shape, int(env.single_action_space.n), config).to(device)
    optimizer = make_optimizer(agent, config.ppo, device)
    collector = Collector(env, agent, config.ppo.num_steps, device)
    generator = torch.Generator().manual_seed(config.seed)
    batch = config.ppo.num_steps * config.env.num_envs
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    rollout_s = update_s = 0.0
    for i in range(updates + 1):  # iteration 0 warms up
        synchronize(device)
        t0 = time.perf_counter()
        collector.collect()
        synchronize(device)
        t1 = time.perf_counter()
        ppo_update(agent, optimizer, collector.rollout, config.ppo, generator)
        synchronize(device)
        t2 = time.perf_counter()
        if i > 0:
            rollout_s += t1 - t0
            update_s += t2 - t1
    env.close()
    result = {
        "parameters": count_parameters(agent),
        "rollout_sps": updates * batch / rollout_s,
        "update_sps": updates * batch / update_s,
        "train_sps": updates * batch / (rollout_s + update_s),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device.type == "cuda":
        result["peak_device_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def run(args: argparse.Namespace) -> int:
    unknown = [c for c in args.cores if c not in CORES]
    if unknown:
        raise UserError(f"unknown core {unknown[0]!r}; choose from: {', '.join(sorted(CORES))}")
    if args.updates <= 0 or args.num_envs <= 0:
        raise UserError("--updates and --num-envs must be positive")
    flags = {("env", "backend"): args.env_backend, ("env", "num_envs"): args.num_envs, ("device",): args.device}
    configs = {core: make_config(args.env, core, flags=flags, overrides=args.set) for core in args.cores}
    first = next(iter(configs.values()))
    device = resolve_device(first.device, DistContext())
    report: dict[str, Any] = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "env": args.env, "backend": args.env_backend, "num_envs": args.num_envs,
        "env_sps": measure_env(first, steps=max(200, 4096 // args.num_envs)),
        "cores": {},
    }
    for core, config in configs.items():
        report["cores"][core] = measure_core(config, args.updates)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


def print_table(report: dict[str, Any]) -> None:
    print(f"device {report['device']} | {report['machine']} | {report['env']} ({report['backend']}) x "
          f"{report['num_envs']} envs | env-only {report['env_sps']:,.0f} steps/s")
    header = f"{'core':<8}{'params':>12}{'rollout/s':>12}{'update/s':>12}{'train/s':>12}{'peak RSS MB':>13}"
    has_gpu = any("peak_device_mb" in r for r in report["cores"].values())
    print(header + (f"{'peak GPU MB':>13}" if has_gpu else ""))
    for core, r in report["cores"].items():
        line = (f"{core:<8}{r['parameters']:>12,}{r['rollout_sps']:>12,.0f}{r['update_sps']:>12,.0f}"
                f"{r['train_sps']:>12,.0f}{r['peak_rss_mb']:>13,.0f}")
        print(line + (f"{r.get('peak_device_mb', 0):>13,.0f}" if has_gpu else ""))
