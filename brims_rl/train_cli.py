"""`brims-rl train`: build the config, then run PPO (trainer.py) with logging, checkpoints and a progress line;
Ctrl-C or SIGTERM saves a checkpoint and stops (a second Ctrl-C stops at once)."""

from __future__ import annotations

import argparse
import contextlib
import signal
from pathlib import Path
from typing import Any, Iterator

from brims_rl import tracking
from brims_rl.config import Config, apply_overrides, validate
from brims_rl.configure import check_env_settings, compose_config
from brims_rl.cores import core_names
from brims_rl.distributed import DistContext
from brims_rl.encoders import encoder_names
from brims_rl.errors import UserError
from brims_rl.presets import preset_names, protocol_names
from brims_rl.runtime import count
from brims_rl.trainer import Trainer, check_new_run_dir, run_dir_for, stored_run


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a PPO agent (or resume a run)",
                              description="Train PPO with a recurrent core; logs and checkpoints go to the run folder.")
    p.add_argument("--env", help="Atari game (MsPacman, ALE/MsPacman-v5) or gymnasium id (module:Env-v0 too); "
                                 "default MsPacman")
    p.add_argument("--env-backend", choices=["envpool", "ale"], help="Atari backend (default envpool)")
    p.add_argument("--core", help=f"policy core: {', '.join(core_names())}, or module:factory for your own "
                                  "(uses the agent preset of that name if any)")
    p.add_argument("--agent", help=f"agent preset name ({', '.join(preset_names('agent'))}) or path to a .toml")
    p.add_argument("--encoder", help=f"observation encoder: {', '.join(encoder_names())}, or module:factory for "
                                     "your own (default auto: chosen from the observation)")
    p.add_argument("--protocol", help=f"published training protocol: {', '.join(protocol_names())} (envs/protocols/; "
                                      "sets env, PPO and run length; flags and --set still win; default 'default')")
    p.add_argument("--total-steps", type=count, help="environment steps to train for (default: the protocol's, 10M)")
    p.add_argument("--num-envs", type=count, help="parallel environments (default 8)")
    p.add_argument("--seed", type=count, help="random seed (default 1)")
    p.add_argument("--device", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--run-dir", type=Path, help="run folder (default runs/<env>__<core>__s<seed>__<time>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue this run to --total-steps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any setting of config.json, e.g. ppo.learning_rate=1e-4 (repeatable)")
    tracking.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    tracking.check(args)
    ctx = DistContext.from_environment()
    tracker = None
    try:
        # Under torchrun only rank 0 reads and creates the run folder; the others get what it found (or its error).
        config, run_dir, state = ctx.from_main(lambda: prepare_run(args))
        if ctx.is_main:  # before the SummaryWriter exists, so that W&B mirrors its scalars
            tracker = tracking.start(args, config.to_dict(), run_dir)
        trainer = Trainer(config, run_dir, ctx, state)
        with stop_on_signals(trainer):
            code = trainer.train()
    except BaseException:
        if tracker is not None:
            tracker.finish(exit_code=1)
        ctx.abort()  # no goodbye barrier: this rank exits now and torchrun stops the others
        raise
    if tracker is not None:
        tracker.finish(exit_code=code)
    ctx.close()
    return code


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """While inside: Ctrl-C or SIGTERM asks the trainer to save and stop; a second one stops at once."""

    def request_stop(signum, frame) -> None:
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.request_stop()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def prepare_run(args: argparse.Namespace) -> tuple[Config, Path, dict[str, Any] | None]:
    """The config (checked: the one validation of the run), run folder and (when resuming) checkpoint of the run to
    train."""
    if args.resume is not None:
        config, run_dir, state = resume_config(args)
    else:
        config = build_config(args)
        run_dir = args.run_dir or run_dir_for(config)
        check_new_run_dir(run_dir)
        state = None
    validate(config)
    return config, run_dir, state


def build_config(args: argparse.Namespace) -> Config:
    flags = {("env", "backend"): args.env_backend, ("env", "num_envs"): args.num_envs, ("seed",): args.seed,
             ("total_steps",): args.total_steps, ("device",): args.device, ("model", "encoder"): args.encoder}
    return compose_config(args.env, args.core, args.agent, flags, args.set, protocol=args.protocol)


def resume_config(args: argparse.Namespace) -> tuple[Config, Path, dict[str, Any] | None]:
    run_dir = args.resume
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir} is not a brims-rl run folder (no config.json)")
    for flag in ("env", "env_backend", "core", "agent", "encoder", "protocol", "num_envs", "seed", "run_dir"):
        if getattr(args, flag) is not None:
            raise UserError(f"--{flag.replace('_', '-')} cannot change when resuming; only --total-steps, "
                            "--device and --set may")
    config, state = stored_run(run_dir)
    data = config.to_dict()
    if args.total_steps is not None:
        data["total_steps"] = args.total_steps
    if args.device is not None:
        data["device"] = args.device
    check_env_settings(config.env.id, {}, args.set)
    return Config.from_dict(apply_overrides(data, args.set)), run_dir, state
