"""`brims-rl bench`: environment, rollout, update and end-to-end training throughput per core, side by side.

Each name given to `--cores` is an agent preset (agents/*.toml, e.g. `brims-paper`, or a path to a .toml: the
preset's core, options and PPO settings, as `train --agent` builds them) or a bare core name without a preset
(as `train --core`). The default measures every shipped agent preset.
"""

from __future__ import annotations

import argparse
import difflib
import json
import platform
import resource
import time
from typing import Any

import numpy as np
import torch

from brims_rl.agent import count_parameters
from brims_rl.assembly import build_training
from brims_rl.bench_shape import measure_shape, parse_minibatch, print_shape_table
from brims_rl.config import Config, validate
from brims_rl.configure import compose_config
from brims_rl.cores import core_names
from brims_rl.cores.compile import fallbacks, room_for_compiled_cores
from brims_rl.distributed import DistContext
from brims_rl.environments import make_vec_env
from brims_rl.errors import UserError
from brims_rl.presets import preset_names
from brims_rl.runtime import count, positive_count, resolve_device, seed_everything


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="measure env, rollout, update and training steps/s per core",
                              description="Throughput of each stage with the default PPO settings, per core.")
    p.add_argument("--cores", "--agents", nargs="+", metavar="NAME",
                   help="agent presets (e.g. lstm brims-paper, or .toml paths) or core names to measure "
                        "(default: every shipped agent preset)")
    p.add_argument("--env", default="Pong", help="environment (default Pong)")
    p.add_argument("--env-backend", choices=["envpool", "ale"], help="Atari backend (default envpool)")
    p.add_argument("--num-envs", type=count, default=None, help="parallel envs (default: the protocol's, 8)")
    p.add_argument("--protocol", default=None,
                   help="training protocol whose PPO settings (and env count) to measure, as in train (default: default)")
    p.add_argument("--encoder", default=None,
                   help="observation encoder for every core, as in train (default auto: chosen from the observation)")
    p.add_argument("--device", default="auto")
    p.add_argument("--updates", type=count, default=5,
                   help="timed PPO iterations per core, taken round-robin across cores (after one warm-up round)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting for every core, as in train (e.g. ppo.num_steps=64)")
    shape = p.add_argument_group("minibatch shape mode (no env: forward + backward of one PPO minibatch per core)")
    shape.add_argument("--minibatch", metavar="B,T", default=None,
                       help="time each core's forward + backward over B sequences of T steps, beside a plain "
                            "torch.nn.LSTM (e.g. 8,256: POPGym's minibatch)")
    shape.add_argument("--input-size", type=positive_count, default=128, help="the core's input width (default 128)")
    shape.add_argument("--start-every", type=float, default=52.0,
                       help="mean steps between episode starts in a row (default 52)")
    shape.add_argument("--rounds", type=positive_count, default=9, help="timed calls per core, round-robin (default 9)")
    p.set_defaults(func=run)


def measure_env(config: Config, steps: int) -> float:
    env = make_vec_env(config.env, config.env.num_envs, seed=config.seed, training=True)
    env.reset()
    space = env.single_action_space  # Discrete, MultiDiscrete or Box: random actions drawn up front
    space.seed(0)
    actions = [np.stack([np.asarray(space.sample()) for _ in range(env.num_envs)]) for _ in range(steps)]
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


class CoreBench:
    """One core's training parts, built as the trainer builds them (assembly.build_training); `iteration()` times one
    rollout and one PPO update."""

    def __init__(self, config: Config):
        self.device = resolve_device(config.device, DistContext())
        seed_everything(config.seed, config.torch_deterministic, config.perf.tf32)
        self.config = config
        self.parts = build_training(config, self.device)
        self.agent = self.parts.agent
        self.rollout_s = self.update_s = 0.0
        self.timed = 0
        self.peak_device_mb = 0.0

    def iteration(self, timed: bool) -> None:
        device, parts = self.device, self.parts
        if device.type == "cuda":
            synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        parts.collector.collect()
        synchronize(device)
        t1 = time.perf_counter()
        parts.learner.update(parts.collector.rollout, parts.generator)
        synchronize(device)
        t2 = time.perf_counter()
        if device.type == "cuda":
            self.peak_device_mb = max(self.peak_device_mb, torch.cuda.max_memory_allocated(device) / 2**20)
        if timed:
            self.rollout_s += t1 - t0
            self.update_s += t2 - t1
            self.timed += 1

    def result(self) -> dict[str, Any]:
        batch = self.timed * self.config.ppo.num_steps * self.config.env.num_envs
        result = {
            "core": self.config.core.name,
            "parameters": count_parameters(self.agent),
            "core_parameters": count_parameters(self.agent.core),
            "rollout_sps": batch / self.rollout_s,
            "update_sps": batch / self.update_s,
            "train_sps": batch / (self.rollout_s + self.update_s),
        }
        if self.device.type == "cuda":
            result["peak_device_mb"] = self.peak_device_mb  # upper bound: other cores' weights are resident too
        return result

    def close(self) -> None:
        self.parts.close()


def measure_cores(configs: dict[str, Config], updates: int) -> dict[str, dict[str, Any]]:
    """Time the cores round-robin (one iteration each, `updates` rounds after a warm-up round), so that drift in
    the machine's speed (turbo, caches, other load) hits every core alike."""
    with room_for_compiled_cores(sum(bool(c.core.options.get("compile")) for c in configs.values())):
        benches = {core: CoreBench(config) for core, config in configs.items()}
        try:
            for round_index in range(updates + 1):
                for bench in benches.values():
                    bench.iteration(timed=round_index > 0)
            return {core: bench.result() for core, bench in benches.items()}
        finally:
            for bench in benches.values():
                bench.close()


def bench_config(name: str, env: str, flags: dict[tuple[str, ...], Any], overrides: list[str],
                 protocol: str | None = None) -> Config:
    """The training config of an agent preset (or a .toml path), else of a bare core; unknown names: UserError."""
    presets = preset_names("agent")
    config = None
    if name in core_names() or ":" in name:  # a core name (module:factory is imported and checked): its preset, or
        config = compose_config(env, core=name, flags=flags, overrides=overrides, protocol=protocol)  # the protocol's
    elif name in presets or name.endswith(".toml") or "/" in name:
        config = compose_config(env, agent=name, flags=flags, overrides=overrides, protocol=protocol)
    if config is not None:
        validate(config)
        return config
    choices = sorted(set(presets) | set(core_names()))
    close = difflib.get_close_matches(name, choices, n=3)
    hint = f"did you mean {' or '.join(close)}?" if close else f"choose from: {', '.join(choices)}"
    raise UserError(f"unknown core or agent preset {name!r}; {hint}")


def run(args: argparse.Namespace) -> int:
    if args.minibatch is not None:
        return run_shape(args)
    names = list(dict.fromkeys(args.cores or preset_names("agent")))
    if args.updates <= 0 or (args.num_envs is not None and args.num_envs <= 0):
        raise UserError("--updates and --num-envs must be positive")
    flags = {("env", "backend"): args.env_backend, ("env", "num_envs"): args.num_envs, ("device",): args.device,
             ("model", "encoder"): getattr(args, "encoder", None)}
    protocol = getattr(args, "protocol", None)
    configs = {name: bench_config(name, args.env, flags, args.set, protocol) for name in names}
    first = next(iter(configs.values()))
    num_envs = first.env.num_envs
    device = resolve_device(first.device, DistContext())
    report: dict[str, Any] = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "env": args.env, "backend": first.env.backend, "num_envs": num_envs,
        "protocol": first.protocol, "num_steps": first.ppo.num_steps,
        "env_sps": measure_env(first, steps=max(200, 4096 // num_envs)),
        "cores": {},
    }
    report["cores"] = measure_cores(configs, args.updates)
    # One process holds every core at once, so this peak bounds the memory of any single core's training.
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["compile_fallbacks"] = fallbacks()  # a core measured eager where it asked to be compiled says so
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


def run_shape(args: argparse.Namespace) -> int:
    """The minibatch shape mode (bench_shape.py): every named core (default: lstm, gru, rims, brims) in one process."""
    batch, steps = parse_minibatch(args.minibatch)
    if not args.start_every >= 1:
        raise UserError(f"--start-every must be at least 1, got {args.start_every}")
    names = list(dict.fromkeys(args.cores or ["lstm", "gru", "rims", "brims"]))
    flags = {("device",): args.device}
    configs = {name: bench_config(name, args.env, flags, args.set, getattr(args, "protocol", None)) for name in names}
    device = resolve_device(args.device, DistContext())
    with room_for_compiled_cores(sum(bool(c.core.options.get("compile")) for c in configs.values())):
        report = measure_shape(configs, batch, steps, args.input_size, args.start_every, args.rounds, device)
    report["device"] = str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)
    report["machine"] = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_shape_table(report, f"{report['device']} | {report['machine']}")
    return 0


def print_table(report: dict[str, Any]) -> None:
    print(f"device {report['device']} | {report['machine']} | {report['env']} ({report['backend']}) x "
          f"{report['num_envs']} envs x {report['num_steps']} steps (protocol {report['protocol']}) | env-only {report['env_sps']:,.0f} steps/s | peak RSS "
          f"{report['peak_rss_mb']:,.0f} MB (all cores)")
    width = max(8, *(len(name) + 2 for name in report["cores"]))
    header = f"{'agent':<{width}}{'params':>12}{'core params':>13}{'rollout/s':>12}{'update/s':>12}{'train/s':>12}"
    has_gpu = any("peak_device_mb" in r for r in report["cores"].values())
    print(header + (f"{'peak GPU MB':>13}" if has_gpu else ""))
    for core, r in report["cores"].items():
        line = (f"{core:<{width}}{r['parameters']:>12,}{r['core_parameters']:>13,}{r['rollout_sps']:>12,.0f}"
                f"{r['update_sps']:>12,.0f}{r['train_sps']:>12,.0f}")
        print(line + (f"{r.get('peak_device_mb', 0):>13,.0f}" if has_gpu else ""))
    for line in report.get("compile_fallbacks", []):
        print(f"compile fallback: {line}")
