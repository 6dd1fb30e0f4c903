"""The training loop of one run (one rank of it under torchrun): env, agent, optimizer, logs, checkpoints.

Used by `brims-rl train` (train_cli.py, which adds the signal handling) and by the Python API (api.train). It installs
no signal handler and works in any thread: `request_stop()` ends the run after the current rollout step.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from brims_rl import checkpoint
from brims_rl.agent import count_parameters
from brims_rl.assembly import build_training
from brims_rl.config import Config
from brims_rl.cores import require_stored_core
from brims_rl.cores.compile import fallbacks as compile_fallbacks
from brims_rl.cores.features import diagnostics as core_diagnostics
from brims_rl.distributed import DistContext
from brims_rl.environments import resolve_env
from brims_rl.environments.base import VecEnv
from brims_rl.errors import RunFailure, UserError, io_path, warn
from brims_rl.progress import ProgressLine
from brims_rl.run_folder import (COMPILE_FALLBACK_TEXT_TAG, COMPILE_FALLBACKS_TAG, FINAL_EPISODES, KL_PENALTY_NAMES,
                                 LENGTH_TAG, LEARNING_RATE_TAG, LOSS_NAMES, RETURN_TAG, SPS_TAG, RunFolder,
                                 TrainingLock, core_tag, default_run_dir, loss_tag)
from brims_rl.runtime import resolve_device, seed_everything

# callback(metrics) after every update; returning False stops the run (with a final checkpoint)
Callback = Callable[[dict[str, Any]], "bool | None"]


def run_dir_for(config: Config) -> Path:
    """Where a new run of `config` goes when no folder is given (run_folder.default_run_dir)."""
    return default_run_dir(config.env.id, config.core.name, config.seed, config.protocol)


def check_new_run_dir(run_dir: Path) -> None:
    """UserError unless a new run can start in `run_dir`."""
    folder = RunFolder(run_dir)
    if folder.holds_run():
        raise UserError(f"{run_dir} already holds a run; continue it with: brims-rl train --resume {run_dir} "
                        "(br.train(..., resume=True) in Python)")
    if folder.path.exists() and not folder.path.is_dir():
        raise UserError(f"run folder {run_dir} is a file, not a folder")


def stored_run(run_dir: Path) -> tuple[Config, dict[str, Any] | None]:
    """The config of the run in `run_dir` and its latest checkpoint to continue from (None when the run was stopped
    before its first checkpoint: it starts over in the same folder)."""
    folder = RunFolder(run_dir)
    if not folder.config.is_file():
        raise UserError(f"{run_dir} is not a brims-rl run folder (no {folder.config.name})")
    config = Config.load(folder.config)
    require_stored_core(config.core.name, str(run_dir))
    if not folder.checkpoints.exists():
        return config, None
    return config, checkpoint.load(checkpoint.find_checkpoint(folder.path))


class Trainer:
    """Owns the env, agent, optimizer, logs and checkpoints of one run (one rank of it under torchrun)."""

    def __init__(self, config: Config, run_dir: Path, ctx: DistContext | None = None,
                 resume_state: dict[str, Any] | None = None, *, env: VecEnv | None = None, verbose: bool = True,
                 callback: Callback | None = None):
        """`env`: train on this vector env instead of making config.env's (it is not closed here); `verbose`: print
        the run's header, progress line and end (rank 0); `callback(metrics)`: after every update (rank 0), with the
        update's metrics (see `metrics`); returning False stops the run, an exception saves a checkpoint first."""
        ctx = ctx or DistContext()
        self.config, self.run_dir, self.ctx = config, Path(run_dir), ctx
        self.folder = RunFolder(self.run_dir)
        self.stopped = False  # stopped before total_steps (request_stop, a signal, or the callback)
        self.verbose, self.callback = verbose and ctx.is_main, callback
        self.recent_returns: deque[float] = deque(maxlen=FINAL_EPISODES)
        self.episodes = 0  # full games finished in this process's training (all ranks, counted on rank 0)
        self.fallbacks_before = len(compile_fallbacks())  # torch.compile fallbacks of this process before the run
        self.fallbacks_logged = 0
        self.device = resolve_device(config.device, ctx)
        self.global_step = int(resume_state["global_step"]) if resume_state else 0
        self.updates = int(resume_state["updates"]) if resume_state else 0
        seed_everything(config.seed + ctx.rank, config.torch_deterministic, config.perf.tf32)
        # Env i of rank r gets seed + r * num_envs + i (disjoint across ranks); a resumed run must not replay the
        # episodes it has already seen, so the step reached shifts the env seeds too.
        env_seed = (config.seed + ctx.rank * config.env.num_envs + self.global_step) % 2**30
        self.env, self.owns_env, self.writer, self.lock = None, False, None, None
        restore = functools.partial(checkpoint.restore_training, resume_state, device=self.device,
                                    rng=ctx.is_main) if resume_state else None
        parts = build_training(config, self.device, ctx, env=env, env_seed=env_seed, start_step=self.global_step,
                               restore=restore)
        self.env, self.owns_env = parts.env, parts.owns_env
        self.agent, self.optimizer, self.generator = parts.agent, parts.optimizer, parts.generator
        self.collector, self.learner = parts.collector, parts.learner
        if resume_state:  # the KL penalty's adapted coefficient (runs saved without it: the configured one)
            self.learner.kl_coef = float(resume_state.get("ppo", {}).get("kl_coef", config.ppo.kl_coef))
        try:  # rank 0 opens the folder; an error there reaches every rank, so all of them stop with it
            self.ctx.from_main(lambda: self._open_run_folder(resume_state is not None))
        except BaseException:
            with contextlib.suppress(Exception):
                self._close()
            raise
        self.stop_requested = False

    def _open_run_folder(self, resumed: bool) -> None:
        """Write config.json and open the TensorBoard writer (rank 0 only, through `ctx.from_main`): only once the env
        and model are built, so bad input leaves nothing behind."""
        from torch.utils.tensorboard import SummaryWriter

        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.lock = TrainingLock(self.run_dir)
            self.config.save(self.folder.config)
        except OSError as exc:
            raise UserError(f"cannot write the run folder {self.run_dir}: {exc.strerror or exc}") from None
        # Drop events logged after the checkpoint by a run that was killed; steps then continue from it.
        purge = self.global_step + 1 if resumed else None
        with io_path(self.run_dir):
            self.writer = SummaryWriter(str(self.run_dir), purge_step=purge)

    # ---- checkpoints -------------------------------------------------------------------------------------------
    def _payload(self) -> dict[str, Any]:
        return checkpoint.training_payload(self.agent, self.optimizer, self.config, self.global_step, self.updates,
                                           self.learner.kl_coef,
                                           self.generator, self.env.single_observation_space,
                                           self.env.single_action_space,
                                           getattr(self.env, "env_observation_space", None))

    def save(self, periodic: bool = False) -> None:
        if not self.ctx.is_main:
            return
        with io_path(self.run_dir):
            self.writer.flush()  # the curves reach disk at least as far as the checkpoint
        payload = self._payload()
        self.folder.checkpoints.mkdir(exist_ok=True)  # not parents: a vanished run folder is an error, not made here
        checkpoint.save_atomic(payload, self.folder.latest)
        if periodic:
            checkpoint.save_atomic(payload, self.folder.periodic(self.global_step))

    # ---- the loop ----------------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop after the current rollout step (single process) or update (torchrun), save and return."""
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
        latest = self.folder.latest
        if not latest.is_file():
            return "No checkpoint was written"
        return f"The last good checkpoint {latest} is kept; continue with: brims-rl train --resume {self.run_dir}"

    def _warn_short_run(self, steps_per_update: int) -> None:
        cfg, world = self.config, self.ctx.world_size
        envs = f"{cfg.env.num_envs} envs" + (f" x {world} ranks" if world > 1 else "")
        end = self.global_step + steps_per_update
        which = "the first update" if self.global_step == 0 else f"the next update (from step {self.global_step:,})"
        if self.ctx.is_main:
            warn(f"total_steps {cfg.total_steps:,} ends inside {which}, which is {envs} x {cfg.ppo.num_steps} steps "
                 f"= {steps_per_update:,} env steps: training that one update, to step {end:,}")

    def _train(self) -> int:
        cfg, ctx = self.config, self.ctx
        steps_per_update = cfg.ppo.num_steps * cfg.env.num_envs * ctx.world_size
        if self.verbose:
            core_params = count_parameters(self.agent.core)
            print(f"brims-rl: {cfg.env.id} ({cfg.env.backend if resolve_env(cfg.env.id).is_atari else 'gym'})"
                  f" | protocol {cfg.protocol} | core {cfg.core.name} | {count_parameters(self.agent):,} parameters (core {core_params:,}) | "
                  f"device {self.device} | {cfg.env.num_envs * ctx.world_size} envs | run {self.run_dir}", flush=True)
        if self.global_step >= cfg.total_steps:
            if self.verbose:
                print(f"brims-rl: run already at step {self.global_step:,} >= --total-steps {cfg.total_steps:,}; "
                      "raise --total-steps to continue")
            return 0
        if self.global_step + steps_per_update > cfg.total_steps:
            self._warn_short_run(steps_per_update)

        if self.global_step == 0:
            self.save()  # from now on the run can always be resumed, even if killed during its first update
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
                stats = self.learner.update(self.collector.rollout, self.generator)
                episodes = ctx.gather_to_main(episodes)
                if ctx.is_main:
                    with io_path(self.run_dir):
                        metrics = self._log(episodes, stats, lr, progress)
                    self._call_back(metrics)
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
            if progress is not None and self.verbose:
                progress.update(self.global_step, force=True)
                progress.close()
        self.stopped = interrupted
        self.save()
        with io_path(self.run_dir):
            self._close()
        if ctx.enabled:
            difference = ctx.max_weight_difference(self.agent)
            if self.verbose:
                print(f"brims-rl: weights on all {ctx.world_size} ranks "
                      + ("identical" if difference == 0 else f"DIFFER (max abs difference {difference:.3g})"),
                      flush=True)
        if self.verbose:
            what = "interrupted" if interrupted else "finished"
            print(f"brims-rl: {what} at step {self.global_step:,}; checkpoint {self.folder.checkpoints}"
                  + (f"; continue with: brims-rl train --resume {self.run_dir}" if interrupted else ""), flush=True)
        return 0

    def _close(self) -> None:
        """Close the writer (its pending events reach disk), release the run folder and close the envs; safe to call
    twice."""
        writer, self.writer = self.writer, None
        try:
            if writer is not None:
                writer.close()
        finally:
            if self.lock is not None:
                self.lock.release()
            env, self.env = self.env, None
            if env is not None and self.owns_env:
                env.close()

    def _should_stop(self) -> bool:
        if not self.ctx.enabled:
            return self.stop_requested
        return self.ctx.any(self.stop_requested, self.device)  # every rank stops after the same update

    def _call_back(self, metrics: dict[str, Any]) -> None:
        """The user's callback; False asks to stop; an exception in it saves a checkpoint of this update first."""
        if self.callback is None:
            return
        try:
            answer = self.callback(metrics)
        except BaseException:
            with contextlib.suppress(Exception):  # the callback's error is the one to report
                self.save()
            raise
        if answer is False:
            self.request_stop()

    def _log(self, episodes, stats, lr: float, progress: ProgressLine) -> dict[str, Any]:
        """Write this update's scalars to TensorBoard; return them as the callback's metrics."""
        step, w = self.global_step, self.writer
        for _env, ret, length in episodes:
            w.add_scalar(RETURN_TAG, ret, step)
            w.add_scalar(LENGTH_TAG, length, step)
        returns = [ret for _env, ret, _len in episodes]
        progress.add_returns(returns)
        self.recent_returns.extend(returns)
        self.episodes += len(returns)
        sps = progress.steps_per_second(step)
        w.add_scalar(LEARNING_RATE_TAG, lr, step)
        w.add_scalar(SPS_TAG, sps, step)
        names = LOSS_NAMES + (KL_PENALTY_NAMES if self.config.ppo.kl_coef > 0 else ())
        losses = {name: getattr(stats, name) for name in names}
        for name, value in losses.items():
            w.add_scalar(loss_tag(name), value, step)
        fallbacks = compile_fallbacks()[self.fallbacks_before:]  # no silent slow path: each one in TensorBoard
        for line in fallbacks[self.fallbacks_logged:]:
            w.add_text(COMPILE_FALLBACK_TEXT_TAG, line, step)
        self.fallbacks_logged = len(fallbacks)
        w.add_scalar(COMPILE_FALLBACKS_TAG, len(fallbacks), step)
        core = core_diagnostics(self.agent.core)
        for key, value in core.items():
            w.add_scalar(core_tag(key), value, step)
        if self.verbose:
            progress.update(step)
        return {**progress.numbers(step), "updates": self.updates, "episodes": self.episodes, "learning_rate": lr,
                **losses, **{core_tag(key): value for key, value in core.items()}}
