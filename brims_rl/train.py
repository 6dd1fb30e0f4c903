"""`brims-rl train`: build the config, then run PPO with logging, checkpoints and a progress line."""

from __future__ import annotations

import argparse
import contextlib
import copy
import random
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brims_rl import checkpoint, tracking
from brims_rl.agent import Agent, count_parameters
from brims_rl.config import Config, apply_overrides, validate
from brims_rl.cores import CORES, require_core
from brims_rl.distributed import DistContext
from brims_rl.environments import make_vec_env, resolve_env
from brims_rl.errors import RunFailure, UserError, io_path
from brims_rl.ppo import NonFiniteGuard, make_optimizer, ppo_update
from brims_rl.presets import load_preset, load_protocol, preset_names, protocol_names
from brims_rl.progress import ProgressLine
from brims_rl.rollout import Collector


def count(text: str) -> int:
    """An integer count for the CLI; accepts 20000, 20_000 and 2e4."""
    try:
        value = float(text.replace("_", ""))
        if value.is_integer():
            return int(value)
    except ValueError:  # not a number (nan and inf fail is_integer)
        pass
    raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a PPO agent (or resume a run)",
                              description="Train PPO with a recurrent core; logs and checkpoints go to the run folder.")
    p.add_argument("--env", help="Atari game (MsPacman, ALE/MsPacman-v5) or gymnasium id (module:Env-v0 too); "
                                 "default MsPacman")
    p.add_argument("--env-backend", choices=["envpool", "ale"], help="Atari backend (default envpool)")
    p.add_argument("--core", help=f"policy core: {', '.join(CORES)} (uses the agent preset of that name if any)")
    p.add_argument("--agent", help=f"agent preset name ({', '.join(preset_names('agent'))}) or path to a .toml")
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
        code = Trainer(config, run_dir, ctx, state).train()
    except BaseException:
        if tracker is not None:
            tracker.finish(exit_code=1)
        ctx.abort()  # no goodbye barrier: this rank exits now and torchrun stops the others
        raise
    if tracker is not None:
        tracker.finish(exit_code=code)
    ctx.close()
    return code


def prepare_run(args: argparse.Namespace) -> tuple[Config, Path, dict[str, Any] | None]:
    """The config, run folder and (when resuming) checkpoint of the run to train."""
    if args.resume is not None:
        return resume_config(args)
    config = build_config(args)
    run_dir = args.run_dir or default_run_dir(config)
    if (run_dir / "config.json").exists():
        raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir}")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir} is a file, not a folder")
    return config, run_dir, None


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "options":
            merge(base[key], value)
        else:
            base[key] = value
    return base


def build_config(args: argparse.Namespace) -> Config:
    flags = {("env", "backend"): args.env_backend, ("env", "num_envs"): args.num_envs, ("seed",): args.seed,
             ("total_steps",): args.total_steps, ("device",): args.device}
    return make_config(args.env, args.core, args.agent, flags, args.set, protocol=args.protocol)


def make_config(env: str | None, core: str | None = None, agent: str | None = None,
                flags: dict[tuple[str, ...], Any] | None = None, overrides: list[str] = (),
                protocol: str | None = None) -> Config:
    """Defaults <- env preset (Atari) <- protocol <- agent preset (--agent, or the preset named like --core) <- flags
    <- --set. A protocol's [env] table applies to Atari games only; its [ppo] and run length to every env."""
    data = Config().to_dict()
    data["env"]["id"] = env_id = env or data["env"]["id"]
    is_atari = resolve_env(env_id).kind == "atari"
    if is_atari:
        merge(data, {"env": load_preset("env", "atari")["env"]})
    spec = load_protocol(protocol or "default")
    merge(data, {"env": spec["env"]} if is_atari else {})
    merge(data, {"ppo": spec["ppo"], "total_steps": spec["total_steps"], "protocol": protocol or "default",
                 "protocol_settings": copy.deepcopy(spec)})
    if core is not None:
        require_core(core)
    agent = agent or (core if core in preset_names("agent") else None) or "lstm"
    preset = load_preset("agent", agent)
    unknown = set(preset) - {"core", "ppo", "model"}
    if unknown:
        raise UserError(f"agent preset {agent} has unknown tables: {', '.join(sorted(unknown))}")
    merge(data, preset)
    data["agent"] = agent
    if core is not None and core != data["core"]["name"]:
        data["core"] = {"name": core, "options": {}}
    for path, value in (flags or {}).items():
        if value is not None:
            node = data
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = value
    config = Config.from_dict(apply_overrides(data, list(overrides)))
    require_core(config.core.name)  # --set core.name=... may have changed it
    validate(config)
    return config


def resume_config(args: argparse.Namespace) -> tuple[Config, Path, dict[str, Any]]:
    run_dir = args.resume
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir} is not a brims-rl run folder (no config.json)")
    for flag in ("env", "env_backend", "core", "agent", "protocol", "num_envs", "seed", "run_dir"):
        if getattr(args, flag) is not None:
            raise UserError(f"--{flag.replace('_', '-')} cannot change when resuming; only --total-steps, "
                            "--device and --set may")
    config = Config.load(run_dir / "config.json")
    data = config.to_dict()
    if args.total_steps is not None:
        data["total_steps"] = args.total_steps
    if args.device is not None:
        data["device"] = args.device
    config = Config.from_dict(apply_overrides(data, args.set))
    validate(config)
    if not (run_dir / "checkpoints").exists():
        return config, run_dir, None  # killed before its first checkpoint: start it over in the same folder
    return config, run_dir, checkpoint.load(checkpoint.find_checkpoint(run_dir))


def default_run_dir(config: Config) -> Path:
    env = config.env.id.replace("/", "-").replace(":", "-")
    return Path("runs") / f"{env}__{config.core.name}__s{config.seed}__{datetime.now():%Y%m%d-%H%M%S}"


def resolve_device(name: str, ctx: DistContext) -> torch.device:
    """auto = CUDA when present; under torchrun, "auto" and "cuda" mean this rank's local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and ctx.enabled:
        name = f"cuda:{ctx.local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} requested but CUDA is not available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"device {name} requested but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def seed_everything(seed: int, deterministic: bool, tf32: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic
    # TF32 (on by default for cuDNN convolutions) rounds differently with the batch shape, so a rollout step and its
    # replay could disagree; it stays off unless asked for.
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32


class Trainer:
    """Owns the env, agent, optimizer, logs and checkpoints of one run (one rank of it under torchrun)."""

    def __init__(self, config: Config, run_dir: Path, ctx: DistContext, resume_state: dict[str, Any] | None):
        self.config, self.run_dir, self.ctx = config, Path(run_dir), ctx
        self.device = resolve_device(config.device, ctx)
        self.global_step = int(resume_state["global_step"]) if resume_state else 0
        self.updates = int(resume_state["updates"]) if resume_state else 0
        seed_everything(config.seed + ctx.rank, config.torch_deterministic, config.perf.tf32)
        # Env i of rank r gets seed + r * num_envs + i (disjoint across ranks); a resumed run must not replay the
        # episodes it has already seen, so the step reached shifts the env seeds too.
        env_seed = (config.seed + ctx.rank * config.env.num_envs + self.global_step) % 2**30
        self.env = make_vec_env(config.env, config.env.num_envs, seed=env_seed, training=True)
        self.writer = None
        try:
            self._build(config, ctx, resume_state)
        except BaseException:
            with contextlib.suppress(Exception):
                self._close()
            raise
        self.stop_requested = False

    def _build(self, config: Config, ctx: DistContext, resume_state: dict[str, Any] | None) -> None:
        self.agent = Agent(self.env.single_observation_space.shape, int(self.env.single_action_space.n),
                           config).to(self.device)
        self.optimizer = make_optimizer(self.agent, config.ppo, self.device)
        self.generator = torch.Generator().manual_seed(config.seed + ctx.rank)
        if resume_state:
            self._restore(resume_state)
        ctx.broadcast_parameters(self.agent)
        self.guard = NonFiniteGuard(config.ppo.max_nonfinite_skips)
        self.collector = Collector(self.env, self.agent, config.ppo.num_steps, self.device, env_name=config.env.id,
                                   start_step=self.global_step, steps_per_vec_step=config.env.num_envs * ctx.world_size,
                                   first_env_index=ctx.rank * config.env.num_envs,
                                   pinned=config.perf.pinned_memory, cuda_graph=config.perf.cuda_graph)
        self.writer = None
        if ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter

            try:  # written only once the env and model are built, so bad input leaves nothing behind
                self.run_dir.mkdir(parents=True, exist_ok=True)
                config.save(self.run_dir / "config.json")
            except OSError as exc:
                raise UserError(f"cannot write the run folder {self.run_dir}: {exc.strerror or exc}") from None
            # Drop events logged after the checkpoint by a run that was killed; steps then continue from it.
            purge = self.global_step + 1 if resume_state else None
            with io_path(self.run_dir):
                self.writer = SummaryWriter(str(self.run_dir), purge_step=purge)

    # ---- checkpoints -------------------------------------------------------------------------------------------
    def _payload(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state(), "generator": self.generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"model": self.agent.state_dict(), "optimizer": self.optimizer.state_dict(),
                "config": self.config.to_dict(), "global_step": self.global_step, "updates": self.updates,
                "rng": rng}

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.agent.load_state_dict(state["model"])
            for group in state["optimizer"]["param_groups"]:  # a run may resume on another kind of device
                group["fused"] = self.device.type == "cuda"
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise UserError(f"checkpoint does not fit this run's model: {str(exc).splitlines()[0][:160]}") from None
        rng = state.get("rng", {}) if self.ctx.is_main else {}  # other ranks keep their own streams (seed + rank)
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "generator" in rng:
            self.generator.set_state(rng["generator"])
        if "cuda" in rng and torch.cuda.is_available():  # the saving machine may have had more GPUs
            for index, cuda_state in enumerate(rng["cuda"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state, index)

    def save(self, periodic: bool = False) -> None:
        if not self.ctx.is_main:
            return
        with io_path(self.run_dir):
            self.writer.flush()  # the curves reach disk at least as far as the checkpoint
        payload = self._payload()
        folder = self.run_dir / "checkpoints"
        folder.mkdir(exist_ok=True)  # not parents: a vanished run folder is an error, not re-created here
        checkpoint.save_atomic(payload, folder / checkpoint.LATEST)
        if periodic:
            checkpoint.save_atomic(payload, folder / f"step_{self.global_step:012d}.pt")

    # ---- the loop ----------------------------------------------------------------------------------------------
    def _request_stop(self, signum, frame) -> None:
        if self.stop_requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.stop_requested = True

    def _learning_rate(self) -> float:
        ppo = self.config.ppo
        if not ppo.anneal_lr:
            return ppo.learning_rate
        return ppo.learning_rate * max(1.0 - self.global_step / self.config.total_steps, 0.0)

    def train(self) -> int:
        """Train to total_steps; the env and the writer are closed however it ends."""
        try:
            code = self._train()
        except BaseException as exc:
            with contextlib.suppress(Exception):  # the error being raised is the one to report
                self._close()
            if isinstance(exc, RunFailure):
                raise RunFailure(f"{exc}. {self._kept()}") from None
            raise
        with io_path(self.run_dir):
            self._close()
        return code

    def _kept(self) -> str:
        latest = self.run_dir / "checkpoints" / checkpoint.LATEST
        if not latest.is_file():
            return "No checkpoint was written"
        return f"The last good checkpoint {latest} is kept; continue with: brims-rl train --resume {self.run_dir}"

    def _train(self) -> int:
        cfg, ctx = self.config, self.ctx
        steps_per_update = cfg.ppo.num_steps * cfg.env.num_envs * ctx.world_size
        if ctx.is_main:
            core_params = count_parameters(self.agent.core)
            print(f"brims-rl: {cfg.env.id} ({cfg.env.backend if resolve_env(cfg.env.id).kind == 'atari' else 'gym'})"
                  f" | protocol {cfg.protocol} | core {cfg.core.name} | {count_parameters(self.agent):,} parameters (core {core_params:,}) | "
                  f"device {self.device} | {cfg.env.num_envs * ctx.world_size} envs | run {self.run_dir}", flush=True)
        if self.global_step >= cfg.total_steps:
            if ctx.is_main:
                print(f"brims-rl: run already at step {self.global_step:,} >= --total-steps {cfg.total_steps:,}; "
                      "raise --total-steps to continue")
            return 0

        if self.global_step == 0:
            self.save()  # from now on the run can always be resumed, even if killed during its first update
        previous = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        progress = ProgressLine(cfg.total_steps, self.global_step) if ctx.is_main else None
        last_save = time.monotonic()
        next_periodic = (self.global_step // cfg.checkpoint_every + 1) * cfg.checkpoint_every
        interrupted = False
        try:
            while self.global_step < cfg.total_steps:
                lr = self._learning_rate()
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                # A single process can stop mid-rollout; ranks agree on stopping once per update instead.
                episodes = self.collector.collect(self._should_stop if not ctx.enabled else lambda: False)
                if episodes is None:
                    interrupted = True
                    break
                self.global_step += steps_per_update
                self.updates += 1
                stats = ppo_update(self.agent, self.optimizer, self.collector.rollout, cfg.ppo, self.generator,
                                   grad_hook=(lambda: ctx.average_gradients(self.agent)) if ctx.enabled else None,
                                   guard=self.guard, cuda_graph=cfg.perf.cuda_graph_update)
                episodes = ctx.gather_to_main(episodes)
                if ctx.is_main:
                    with io_path(self.run_dir):
                        self._log(episodes, stats, lr, progress)
                periodic = self.global_step >= next_periodic
                if periodic:
                    next_periodic += cfg.checkpoint_every
                if periodic or time.monotonic() - last_save >= cfg.latest_every_s:
                    self.save(periodic=periodic)
                    last_save = time.monotonic()
                if self._should_stop():
                    interrupted = True
                    break
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if progress is not None:
                progress.update(self.global_step, force=True)
                progress.close()
        self.save()
        with io_path(self.run_dir):
            self._close()
        if ctx.enabled:
            difference = ctx.max_weight_difference(self.agent)
            if ctx.is_main:
                print(f"brims-rl: weights on all {ctx.world_size} ranks "
                      + ("identical" if difference == 0 else f"DIFFER (max abs difference {difference:.3g})"),
                      flush=True)
        if ctx.is_main:
            what = "interrupted" if interrupted else "finished"
            print(f"brims-rl: {what} at step {self.global_step:,}; checkpoint {self.run_dir / 'checkpoints'}"
                  + (f"; continue with: brims-rl train --resume {self.run_dir}" if interrupted else ""), flush=True)
        return 0

    def _close(self) -> None:
        """Close the writer (its pending events reach disk) and the envs; safe to call twice."""
        writer, self.writer = self.writer, None
        try:
            if writer is not None:
                writer.close()
        finally:
            env, self.env = self.env, None
            if env is not None:
                env.close()

    def _should_stop(self) -> bool:
        if not self.ctx.enabled:
            return self.stop_requested
        return self.ctx.any(self.stop_requested, self.device)  # every rank stops after the same update

    def _log(self, episodes, stats, lr: float, progress: ProgressLine) -> None:
        step, w = self.global_step, self.writer
        for _env, ret, length in episodes:
            w.add_scalar("charts/episodic_return", ret, step)
            w.add_scalar("charts/episodic_length", length, step)
        progress.add_returns([ret for _env, ret, _len in episodes])
        w.add_scalar("charts/learning_rate", lr, step)
        w.add_scalar("charts/SPS", progress.steps_per_second(step), step)
        for name in ("value_loss", "policy_loss", "entropy", "approx_kl", "old_approx_kl", "clipfrac",
                     "explained_variance"):
            w.add_scalar(f"losses/{name}", getattr(stats, name), step)
        w.add_scalar("losses/nonfinite_skips", stats.nonfinite_skips, step)
        diagnostics = getattr(self.agent.core, "diagnostics", None)
        if diagnostics is not None:
            for key, value in diagnostics().items():
                w.add_scalar(f"core/{key}", value, step)
        progress.update(step)
