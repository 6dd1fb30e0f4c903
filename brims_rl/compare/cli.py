"""The `brims-rl compare` command: arguments, checks and dispatch to the table writer or the grid launcher."""

from __future__ import annotations

import argparse
from pathlib import Path

from brims_rl.compare import aggregates, grid
from brims_rl.compare.report import tabulate
from brims_rl.compare.runs import load_runs
from brims_rl.errors import UserError
from brims_rl.runtime import positive_count

DESCRIPTION = """\
Tabulate runs like the paper's Table 4 and aggregate them over games like
Agarwal et al. 2021 (rliable), or launch the grid of runs first.

  brims-rl compare RUN_DIR... [--out DIR] [--bootstrap-reps N]
  brims-rl compare --env ENV|SUITE --cores CORE... --seeds N
                   --total-steps S|--protocol NAME [--jobs J] [--out DIR] [--dry-run]
                   [--set KEY=VALUE ...]

Runs are grouped by protocol (config.json's "protocol"; runs from before it
existed count as "default"): runs of different protocols never share a cell,
and each protocol gets its own tables, named above them. Within a protocol,
rows are envs and columns cores. A run's final return is the mean of its last
100 episodes of charts/episodic_return (all of them if it has fewer; several
event files of a resumed run are merged by step). A cell is the mean +- std of
the final returns over seeds; std is the SAMPLE standard deviation (n-1 in the
denominator), 0 with a single seed. Runs of one env must share the env settings
(frame skip, sticky actions, ...), and runs of one core the core options. Run
folders without a finished episode yet are left out, with one warning; of runs
that share a seed in a cell, the one that trained furthest counts, with one
warning naming them.

Below the per-game table, per core over the games every core played: IQM,
median, mean and optimality gap of the final returns, human-normalised with the
shipped Atari random/human reference scores (raw returns, and no optimality
gap, when a game has none), each with a 95% stratified-bootstrap interval
(--bootstrap-reps resamples, default 2000, fixed seed: the same runs give the
same numbers), and the probability of improvement for every pair of cores.
What cannot be computed (one seed: no intervals; one core: no probability of
improvement) is said in the report.

POPGym tasks (popgym-* ids) also get POPGym's own score beside the final
return: the MMER (max-mean episodic return: per run the best mean return of a
PPO update's episodes, at least 100 of them; then mean +- std over seeds), in a
"<core> MMER" column. A group of POPGym tasks only is aggregated twice, on the
final returns and on the MMERs, raw (POPGym returns lie in [-1, 1]; the
optimality gap is measured from 1). A second table gives POPGym's normalised
MMER (0.5 MMER + 0.5) and the area under the learning curve (the mean over
training of the per-update mean return, weighted by env steps). compare.csv
gains mmer, mmer_std, mmers, mmer_normalised, auc, auc_std and aucs.

Writes to --out: compare.md (per protocol the per-game table, then the
aggregates), compare.csv (the per-game numbers plus seeds, per-seed final
returns, env steps reached and episode counts), compare_aggregates.csv (every
estimate and interval), compare.png (learning curves: per env the mean over
seeds of each run's trailing 100-episode mean return at the end of each
update, +-std band),
compare_intervals.png (interval estimates) and compare_profiles.png
(performance profiles); with several protocols the figures are named
compare-<protocol>.png and so on. compare.md is also printed.

With --env it first runs `brims-rl train` for seeds 1..N of every env and core
into OUT/<env>__<core>__s<seed>, or OUT/<env>__<core>__<protocol>__s<seed>
with a --protocol other than default (up to --jobs at once; with more than one,
each run's output goes to OUT/logs/<run>.log and, unless OMP_NUM_THREADS is
set, each gets an equal share of the CPU threads). --protocol NAME is passed
to every train command, and the run length then comes from the protocol unless
--total-steps is given; without --protocol, --total-steps is needed. A run folder that already has a config.json is resumed
instead, so rerunning the command continues an interrupted grid. ENV is a game
or env id, or an env preset with a [suite] table, e.g. paper10 (the paper's ten
games). --dry-run prints the train commands (for any cluster scheduler) and
launches nothing. A failed run is reported with its exit code; the others
finish, the table covers the runs that have data, and the command exits 1.
Ctrl-C or SIGTERM stops the runs cleanly (each saves a checkpoint); the same
command then continues them."""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="Table-4-style comparison of runs, aggregates over games with bootstrap CIs (rliable), learning "
        "curves; can launch the grid",
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
    parser.add_argument("--bootstrap-reps", type=positive_count, default=None, metavar="N",
                        help=f"bootstrap resamples per interval (default {aggregates.DEFAULT_REPS})")
    launch = parser.add_argument_group("launching a grid (with --env)")
    launch.add_argument("--env", nargs="+", metavar="ENV", help="game(s), env id(s) or suite preset(s), e.g. paper10")
    launch.add_argument("--cores", nargs="+", metavar="CORE", help="cores to compare, e.g. lstm rims brims")
    launch.add_argument("--seeds", type=positive_count, metavar="N", help="number of seeds: runs seeds 1..N")
    launch.add_argument("--total-steps", type=positive_count, metavar="S",
                        help="env steps per run, e.g. 10000000 or 1e7 (default with --protocol: the protocol's)")
    launch.add_argument("--protocol", metavar="NAME", help="training protocol passed to every train command, "
                                                           "e.g. paper (its run length applies)")
    launch.add_argument("--jobs", type=positive_count, default=None, metavar="J", help="runs at once (default 1)")
    launch.add_argument("--dry-run", action="store_true", help="print one `brims-rl train` command per run; "
                                                               "launch nothing")
    launch.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="forwarded to every train command (repeatable)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    grid_only = {
        "--cores": args.cores,
        "--seeds": args.seeds,
        "--total-steps": args.total_steps,
        "--protocol": args.protocol,
        "--jobs": args.jobs,
        "--set": args.overrides,
        "--dry-run": args.dry_run or None,
    }
    reps = args.bootstrap_reps or aggregates.DEFAULT_REPS
    if args.runs and args.env:
        raise UserError("give either run folders or --env (to launch a grid), not both")
    if not args.env:
        if not args.runs:
            raise UserError("nothing to compare: give run folders, or --env with --cores, --seeds and --total-steps "
                            "(or --protocol)")
        given = [name for name, value in grid_only.items() if value is not None]
        if given:
            raise UserError(f"{', '.join(given)} only apply with --env (launching a grid)")
        tabulate(load_runs(args.runs), args.out if args.out is not None else Path("."), reps=reps)
        return 0
    needed = ("--cores", "--seeds") + (() if args.protocol else ("--total-steps",))
    missing = [name for name in needed if grid_only[name] is None]
    if missing:
        raise UserError(f"--env needs {', '.join(missing)}")
    return grid.run_grid(args, reps)
