"""Launching a grid of `brims-rl train` runs for `compare --env`: envs x cores x seeds, resumable, several at once."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from brims_rl.cores import require_core
from brims_rl.errors import UserError
from brims_rl.presets import load_preset, load_protocol, preset_dir
from brims_rl.run_folder import DEFAULT_PROTOCOL, RunFolder, run_name


@dataclass
class GridRun:
    env: str
    core: str
    seed: int
    path: Path


def expand_env(name: str) -> list[str]:
    """An env preset with a [suite] table (by name or .toml path) is its games; anything else is one env."""
    is_file = name.endswith(".toml")
    if not is_file and not (preset_dir("env") / f"{name}.toml").is_file():
        return [name]
    suite = load_preset("env", name).get("suite")
    if suite is None:
        if is_file:
            raise UserError(f"env preset {name} has no [suite] table listing games")
        return [name]
    games = suite.get("games") if isinstance(suite, dict) else None
    if not isinstance(games, list) or not games or not all(isinstance(g, str) and g.strip() for g in games):
        raise UserError(f"env preset {name}: [suite] games must be a non-empty list of env names")
    return list(games)


def plan_grid(envs: list[str], cores: list[str], seeds: int, out: Path, protocol: str | None = None) -> list[GridRun]:
    plan, names = [], set()
    for env in envs:
        for core in cores:
            for seed in range(1, seeds + 1):
                name = run_name(env, core, seed, protocol)
                if name not in names:
                    names.add(name)
                    plan.append(GridRun(env, core, seed, out / name))
    return plan


def check_started_runs(plan: list[GridRun], protocol: str | None) -> None:
    """A run folder the grid would resume must hold a run of the same protocol."""
    wanted = protocol or DEFAULT_PROTOCOL
    for job in plan:
        path = RunFolder(job.path).config
        if path.exists():
            try:
                found = json.loads(path.read_text()).get("protocol") or DEFAULT_PROTOCOL
            except (OSError, ValueError, AttributeError):
                raise UserError(f"{path} is not a readable config.json; move that run folder away") from None
            if found != wanted:
                raise UserError(f"{job.path} holds a run of protocol {found!r}, not {wanted!r}; give another --out")


def train_args(job: GridRun, total_steps: int, overrides: list[str], protocol: str | None = None) -> list[str]:
    """The arguments of `brims-rl train` for one run of the grid (resuming it if it has been started before)."""
    if RunFolder(job.path).holds_run():
        args = ["train", "--resume", str(job.path), "--total-steps", str(total_steps)]
    else:
        args = ["train", "--env", job.env, "--core", job.core, "--seed", str(job.seed)]
        if protocol is not None:
            args += ["--protocol", protocol]
        args += ["--total-steps", str(total_steps), "--run-dir", str(job.path)]
    for override in overrides:
        args += ["--set", override]
    return args


def launch_argv(args: list[str]) -> list[str]:
    """The subprocess command line that runs `brims-rl <args>` with this Python."""
    return [sys.executable, "-m", "brims_rl", *args]


def protocol_steps(name: str) -> int:
    """The run length of a training protocol (presets.load_protocol)."""
    return load_protocol(name)["total_steps"]


def run_grid(args: argparse.Namespace, reps: int) -> int:
    from brims_rl.compare.report import tabulate
    from brims_rl.compare.runs import load_run

    overrides = args.overrides or []
    total_steps = args.total_steps if args.total_steps is not None else protocol_steps(args.protocol)
    for override in overrides:
        if "=" not in override or not override.split("=", 1)[0].strip():
            raise UserError(f"--set expects KEY=VALUE, got {override!r}")
    envs = list(dict.fromkeys(game for name in args.env for game in expand_env(name)))
    cores = list(dict.fromkeys(args.cores))
    for core in cores:
        require_core(core)
    out = args.out if args.out is not None else Path("runs")
    plan = plan_grid(envs, cores, args.seeds, out, args.protocol)
    check_started_runs(plan, args.protocol)
    if args.dry_run:
        for job in plan:
            print(shlex.join(["brims-rl", *train_args(job, total_steps, overrides, args.protocol)]))
        return 0
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    jobs = args.jobs or 1
    print(f"launching {len(plan)} runs ({len(envs)} envs x {len(cores)} cores x {args.seeds} seeds), {jobs} at a time, in {out}")
    try:
        failures = launch(plan, total_steps, overrides, jobs, out, args.protocol)
    except KeyboardInterrupt:
        print("brims-rl: error: interrupted; run the same command again to continue the grid", file=sys.stderr)
        return 130
    runs = []
    failed_paths = {job.path for job, _ in failures}
    for job in plan:
        try:
            runs.append(load_run(job.path))
        except UserError:
            if job.path not in failed_paths:
                raise
    if runs:
        tabulate(runs, out, reps=reps)
    if failures:
        listed = ", ".join(f"{job.path} (exit code {code})" for job, code in failures)
        print(f"brims-rl: error: {len(failures)} of {len(plan)} runs failed: {listed}", file=sys.stderr)
        return 1
    return 0


class _Terminated(Exception):
    """SIGTERM reached compare (a scheduler or `kill`): stop the runs gracefully, like Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated


def _child_environment(jobs: int) -> dict[str, str] | None:
    """With several runs at once, split the CPU threads between them unless the user chose OMP_NUM_THREADS."""
    if jobs == 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    return {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}


def launch(plan: list[GridRun], total_steps: int, overrides: list[str], jobs: int, out: Path,
           protocol: str | None = None) -> list[tuple[GridRun, object]]:
    """Run the grid's train commands, up to `jobs` at once; return the failed runs with their exit codes.

    Ctrl-C (which the runs receive from the terminal too) or SIGTERM (forwarded to them) lets the running runs save a
    checkpoint and stop, then raises KeyboardInterrupt; asked twice, it kills them.
    """
    pending = list(plan)
    running: dict[subprocess.Popen, tuple[GridRun, object, Path | None]] = {}
    failures: list[tuple[GridRun, object]] = []
    finished = 0
    environment = _child_environment(jobs)

    def report(job: GridRun, code: object, log: Path | None) -> None:
        nonlocal finished
        finished += 1
        where = f"; log: {log}" if log else ""
        if code == 0:
            print(f"[{finished}/{len(plan)}] finished {job.path}", flush=True)
        else:
            failures.append((job, code))
            print(f"[{finished}/{len(plan)}] FAILED {job.path} (exit code {code}{where})", file=sys.stderr, flush=True)

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        while pending or running:
            while pending and len(running) < jobs:
                job = pending.pop(0)
                argv = launch_argv(train_args(job, total_steps, overrides, protocol))
                log_path = None
                stream = None
                if jobs > 1:
                    (out / "logs").mkdir(exist_ok=True)
                    log_path = out / "logs" / f"{job.path.name}.log"
                    stream = open(log_path, "w")
                print(f"starting {job.path}: {shlex.join(argv)}", flush=True)
                try:
                    proc = subprocess.Popen(
                        argv, stdout=stream, stderr=subprocess.STDOUT if stream else None, env=environment
                    )
                except OSError as exc:
                    if stream:
                        stream.close()
                    report(job, f"could not start: {exc.strerror or exc}", None)
                    continue
                running[proc] = (job, stream, log_path)
            done = [proc for proc in running if proc.poll() is not None]
            if not done:
                time.sleep(0.05)
                continue
            for proc in done:
                job, stream, log_path = running.pop(proc)
                if stream:
                    stream.close()
                report(job, proc.returncode, log_path)
    except (KeyboardInterrupt, _Terminated) as exc:
        _stop(running, forward=isinstance(exc, _Terminated))
        raise KeyboardInterrupt from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return failures


def _stop(running: dict, forward: bool) -> None:
    if forward:
        for proc in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
    try:
        for proc in running:
            proc.wait()
    except (KeyboardInterrupt, _Terminated):  # asked a second time: stop now
        for proc in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for _, stream, _ in running.values():
        if stream:
            stream.close()
