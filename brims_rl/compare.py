"""`brims-rl compare`: the paper's Table 4 (final return, mean ± std over seeds, one row per env, one column per core)
and learning curves, from finished or running run folders, or from a grid of runs that it launches itself."""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brims_rl.config import Config, write_text_atomic
from brims_rl.cores import require_core
from brims_rl.errors import UserError
from brims_rl.plots import plot_learning_curves, seed_std, smooth
from brims_rl.train import count

RETURN_TAG = "charts/episodic_return"
FINAL_EPISODES = 100  # a run's final return = mean of its last 100 episodes
# EnvConfig fields that do not change what the agent experiences: runs that differ only in these can be grouped.
NOT_PROTOCOL = ("id", "backend", "num_envs", "threads")
CSV_COLUMNS = (
    "env",
    "core",
    "mean",
    "std",
    "num_seeds",
    "seeds",
    "final_returns",
    "steps_reached_min",
    "steps_reached",
    "episodes",
    "run_dirs",
)

DESCRIPTION = """\
Tabulate runs like the paper's Table 4, or launch the grid of runs first.

  brims-rl compare RUN_DIR... [--out DIR]
  brims-rl compare --env ENV|SUITE --cores CORE... --seeds N --total-steps S
                   [--jobs J] [--out DIR] [--dry-run] [--set KEY=VALUE ...]

Runs are grouped by env (rows) and core (columns). A run's final return is the
mean of its last 100 episodes of charts/episodic_return (all of them if it has
fewer; several event files of a resumed run are merged by step). A cell is the
mean +- std of the final returns over seeds; std is the SAMPLE standard
deviation (n-1 in the denominator), 0 with a single seed. Runs of one env must
share the env protocol (frame skip, sticky actions, ...), runs of one core the
core options, and each seed may appear once per cell.

Writes to --out: compare.md (the table), compare.csv (the same numbers plus the
seeds, per-seed final returns, env steps reached and episode counts) and
compare.png (per env: the mean over seeds of each run's trailing 100-episode
mean return, with a +-std band, against env steps); the table is also printed.

With --env it first runs `brims-rl train` for seeds 1..N of every env and core
into OUT/<env>__<core>__s<seed> (up to --jobs at once; with more than one,
each run's output goes to OUT/logs/<run>.log and, unless OMP_NUM_THREADS is
set, each gets an equal share of the CPU threads). A run folder that already has a
config.json is resumed to --total-steps instead, so rerunning the command
continues an interrupted grid. ENV is a game or env id, or an env preset with a
[suite] table, e.g. paper10 (the paper's ten games). --dry-run prints the train
commands (for any cluster scheduler) and launches nothing. A failed run is
reported with its exit code; the others finish, the table covers the runs that
have data, and the command exits 1. Ctrl-C or SIGTERM stops the runs cleanly
(each saves a checkpoint); the same command then continues them."""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="Table-4-style comparison of runs (mean ± std over seeds) and learning curves; can launch the grid",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run folders written by `brims-rl train`")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="where compare.md/.csv/.png go (and, with --env, the run folders); "
        "default: the current folder for RUN_DIRs, runs/ with --env",
    )
    grid = parser.add_argument_group("launching a grid (with --env)")
    grid.add_argument("--env", nargs="+", metavar="ENV", help="game(s), env id(s) or suite preset(s), e.g. paper10")
    grid.add_argument("--cores", nargs="+", metavar="CORE", help="cores to compare, e.g. lstm rims brims")
    grid.add_argument("--seeds", type=_positive_int, metavar="N", help="number of seeds: runs seeds 1..N")
    grid.add_argument("--total-steps", type=_positive_int, metavar="S", help="env steps per run, e.g. 10000000 or 1e7")
    grid.add_argument("--jobs", type=_positive_int, default=None, metavar="J", help="runs at once (default 1)")
    grid.add_argument("--dry-run", action="store_true", help="print one `brims-rl train` command per run; launch nothing")
    grid.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="forwarded to every train command (repeatable)",
    )
    parser.set_defaults(func=run)


def _positive_int(text: str) -> int:
    value = count(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    grid_only = {
        "--cores": args.cores,
        "--seeds": args.seeds,
        "--total-steps": args.total_steps,
        "--jobs": args.jobs,
        "--set": args.overrides,
        "--dry-run": args.dry_run or None,
    }
    if args.runs and args.env:
        raise UserError("give either run folders or --env (to launch a grid), not both")
    if not args.env:
        if not args.runs:
            raise UserError("nothing to compare: give run folders, or --env with --cores, --seeds and --total-steps")
        given = [name for name, value in grid_only.items() if value is not None]
        if given:
            raise UserError(f"{', '.join(given)} only apply with --env (launching a grid)")
        runs = load_runs(args.runs)
        tabulate(runs, args.out if args.out is not None else Path("."))
        return 0
    missing = [name for name in ("--cores", "--seeds", "--total-steps") if grid_only[name] is None]
    if missing:
        raise UserError(f"--env needs {', '.join(missing)}")
    return run_grid(args)


# ---------------------------------------------------------------------------------------------------------------------
# Reading runs


@dataclass
class Run:
    path: Path
    config: Config
    episode_steps: np.ndarray  # env step at which each episode ended
    returns: np.ndarray  # its episodic return
    steps_reached: int

    @property
    def env(self) -> str:
        return self.config.env.id

    @property
    def core(self) -> str:
        return self.config.core.name

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def final_return(self) -> float:
        return float(np.mean(self.returns[-FINAL_EPISODES:]))

    def protocol(self) -> dict:
        env = self.config.to_dict()["env"]
        return {key: value for key, value in env.items() if key not in NOT_PROTOCOL}


def load_run(path: Path | str) -> Run:
    from brims_rl.tbdata import event_files, read_run_scalars

    path = Path(path)
    if not path.exists():
        raise UserError(f"run folder {path} not found")
    if not path.is_dir():
        raise UserError(f"{path} is not a run folder")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UserError(f"{path} is not a brims-rl run folder (no config.json)")
    config = Config.load(config_path)
    scalars = read_run_scalars(path)
    returns = scalars.get(RETURN_TAG)
    if returns is None or len(returns) == 0:
        if not event_files(path):
            why = "no TensorBoard event files"
        else:
            why = "no finished episode logged yet" if scalars else "no scalars logged yet"
        raise UserError(f"run {path} has no {RETURN_TAG} data ({why})")
    steps_reached = max(int(series.steps[-1]) for series in scalars.values() if len(series))
    return Run(path, config, returns.steps, returns.values, steps_reached)


def load_runs(paths: list[str | Path]) -> list[Run]:
    runs, seen = [], set()
    for path in paths:
        key = Path(path).resolve()
        if key not in seen:  # the same folder given twice counts once
            seen.add(key)
            runs.append(load_run(path))
    return runs


@dataclass
class Cell:
    env: str
    core: str
    runs: list[Run]  # sorted by seed

    @property
    def finals(self) -> np.ndarray:
        return np.array([r.final_return for r in self.runs])

    @property
    def mean(self) -> float:
        return float(np.mean(self.finals))

    @property
    def std(self) -> float:
        return seed_std(self.finals)


def group_runs(runs: list[Run]) -> tuple[list[str], list[str], dict[tuple[str, str], Cell]]:
    """Rows (envs) and columns (cores) in order of first appearance, and the cells; refuses runs that don't group."""
    envs: dict[str, Run] = {}
    cores: dict[str, Run] = {}
    cells: dict[tuple[str, str], Cell] = {}
    for r in runs:
        first = envs.setdefault(r.env, r)
        if r.protocol() != first.protocol():
            a, b = first.protocol(), r.protocol()
            diff = ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
            raise UserError(
                f"runs {first.path} and {r.path} are both {r.env} but with different env settings ({diff}); "
                "they cannot be grouped"
            )
        first = cores.setdefault(r.core, r)
        if r.config.core.options != first.config.core.options:
            raise UserError(
                f"runs {first.path} and {r.path} both use core {r.core} but with different core options "
                f"({first.config.core.options} vs {r.config.core.options}); they cannot be grouped"
            )
        cell = cells.setdefault((r.env, r.core), Cell(r.env, r.core, []))
        for other in cell.runs:
            if other.seed == r.seed:
                raise UserError(
                    f"runs {other.path} and {r.path} are both {r.env} / {r.core} / seed {r.seed}; give each seed once"
                )
        cell.runs.append(r)
    for cell in cells.values():
        cell.runs.sort(key=lambda r: r.seed)
    return list(envs), list(cores), cells


# ---------------------------------------------------------------------------------------------------------------------
# Writing the table, the CSV and the plot


def format_number(x: float, scale: float) -> str:
    """`x` in the style of a cell whose mean has magnitude `scale`."""
    if scale >= 1e6:
        millions = x / 1e6
        decimals = 2  # a small std keeps a significant digit: 0.0042M rather than 0.00M
        while decimals < 6 and 0 < abs(millions) < 0.5 * 10**-decimals:
            decimals += 1
        return f"{millions:.{decimals}f}M"
    return f"{x:.0f}" if scale >= 100 else f"{x:.1f}"


def format_cell(mean: float, std: float) -> str:
    """Like the paper: whole numbers from 100 up, one decimal below, millions as 3.28M ± 0.20M."""
    scale = abs(mean)
    return f"{format_number(mean, scale)} ± {format_number(std, scale)}"


def _steps_text(steps: int) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if steps >= size:
            return f"{steps / size:.3g}{unit}"
    return str(steps)


def render_markdown(envs: list[str], cores: list[str], cells: dict[tuple[str, str], Cell]) -> str:
    lines = [
        "| Env | " + " | ".join(cores) + " |",
        "|---|" + "---:|" * len(cores),
    ]
    for env in envs:
        row = [format_cell(cells[env, c].mean, cells[env, c].std) if (env, c) in cells else "—" for c in cores]
        lines.append(f"| {env} | " + " | ".join(row) + " |")
    all_runs = [r for cell in cells.values() for r in cell.runs]
    counts = sorted({len(cell.runs) for cell in cells.values()})
    seeds = sorted({r.seed for r in all_runs})
    steps = sorted(r.steps_reached for r in all_runs)
    seeds_text = (
        f"{counts[0]} per cell ({', '.join(map(str, seeds))})"
        if len(counts) == 1
        else f"{counts[0]} to {counts[-1]} per cell (see compare.csv)"
    )
    steps_text = _steps_text(steps[0]) if steps[0] == steps[-1] else f"{_steps_text(steps[0])} to {_steps_text(steps[-1])}"
    notes = [
        "",
        f"Final return = mean of a run's last {FINAL_EPISODES} episodes of `{RETURN_TAG}`; "
        "cell = mean ± std over seeds (sample std, n-1; 0 with one seed).",
        f"Seeds: {seeds_text}. Env steps reached: {steps_text}.",
    ]
    return "\n".join(lines + notes) + "\n"


def render_csv(envs: list[str], cores: list[str], cells: dict[tuple[str, str], Cell]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for env in envs:
        for core in cores:
            cell = cells.get((env, core))
            if cell is None:
                continue
            writer.writerow(
                [
                    env,
                    core,
                    repr(cell.mean),
                    repr(cell.std),
                    len(cell.runs),
                    ";".join(str(r.seed) for r in cell.runs),
                    ";".join(repr(r.final_return) for r in cell.runs),
                    min(r.steps_reached for r in cell.runs),
                    ";".join(str(r.steps_reached) for r in cell.runs),
                    ";".join(str(len(r.returns)) for r in cell.runs),
                    ";".join(str(r.path) for r in cell.runs),
                ]
            )
    return buffer.getvalue()


def tabulate(runs: list[Run], out: Path) -> None:
    """Write compare.md, compare.csv and compare.png to `out` and print the table."""
    envs, cores, cells = group_runs(runs)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(envs, cores, cells)
    write_text_atomic(out / "compare.md", markdown)
    write_text_atomic(out / "compare.csv", render_csv(envs, cores, cells))
    curves = {
        key: [(r.episode_steps, smooth(r.returns, FINAL_EPISODES)) for r in cell.runs] for key, cell in cells.items()
    }
    tmp = out / ".compare.tmp.png"
    plot_learning_curves(curves, envs, cores, tmp)
    tmp.replace(out / "compare.png")
    print(markdown, end="")
    print(f"wrote {out / 'compare.md'}, {out / 'compare.csv'} and {out / 'compare.png'}")


# ---------------------------------------------------------------------------------------------------------------------
# Launching a grid


@dataclass
class GridRun:
    env: str
    core: str
    seed: int
    path: Path


def expand_env(name: str) -> list[str]:
    """An env preset with a [suite] table (by name or .toml path) is its games; anything else is one env."""
    from brims_rl.presets import load_preset, preset_dir

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


def folder_name(env: str, core: str, seed: int) -> str:
    safe_env = re.sub(r"[^A-Za-z0-9._-]+", "-", env).strip("-") or "env"
    return f"{safe_env}__{core}__s{seed}"


def plan_grid(envs: list[str], cores: list[str], seeds: int, out: Path) -> list[GridRun]:
    plan, names = [], set()
    for env in envs:
        for core in cores:
            for seed in range(1, seeds + 1):
                name = folder_name(env, core, seed)
                if name not in names:
                    names.add(name)
                    plan.append(GridRun(env, core, seed, out / name))
    return plan


def train_args(job: GridRun, total_steps: int, overrides: list[str]) -> list[str]:
    """The arguments of `brims-rl train` for one run of the grid (resuming it if it has been started before)."""
    if (job.path / "config.json").exists():
        args = ["train", "--resume", str(job.path), "--total-steps", str(total_steps)]
    else:
        args = ["train", "--env", job.env, "--core", job.core, "--seed", str(job.seed)]
        args += ["--total-steps", str(total_steps), "--run-dir", str(job.path)]
    for override in overrides:
        args += ["--set", override]
    return args


def launch_argv(args: list[str]) -> list[str]:
    """The subprocess command line that runs `brims-rl <args>` with this Python."""
    return [sys.executable, "-m", "brims_rl", *args]


def run_grid(args: argparse.Namespace) -> int:
    overrides = args.overrides or []
    for override in overrides:
        if "=" not in override or not override.split("=", 1)[0].strip():
            raise UserError(f"--set expects KEY=VALUE, got {override!r}")
    envs = list(dict.fromkeys(game for name in args.env for game in expand_env(name)))
    cores = list(dict.fromkeys(args.cores))
    for core in cores:
        require_core(core)
    out = args.out if args.out is not None else Path("runs")
    plan = plan_grid(envs, cores, args.seeds, out)
    if args.dry_run:
        for job in plan:
            print(shlex.join(["brims-rl", *train_args(job, args.total_steps, overrides)]))
        return 0
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    jobs = args.jobs or 1
    print(f"launching {len(plan)} runs ({len(envs)} envs x {len(cores)} cores x {args.seeds} seeds), {jobs} at a time, in {out}")
    try:
        failures = launch(plan, args.total_steps, overrides, jobs, out)
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
        tabulate(runs, out)
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


def launch(plan: list[GridRun], total_steps: int, overrides: list[str], jobs: int, out: Path) -> list[tuple[GridRun, object]]:
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
                argv = launch_argv(train_args(job, total_steps, overrides))
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
