"""`brims-rl compare`: tables, aggregates and figures from run folders, or from a grid of runs it launches.

One module per job:
    cli.py          the command: arguments, checks, dispatch
    runs.py         reading run folders; grouping them by protocol, env (rows) and core (columns)
    tables.py       the Table-4-style per-game table, the aggregate table, compare.csv and compare_aggregates.csv
    reference.py    the shipped Atari random/human reference scores (atari57_scores.csv), human normalisation
    aggregates.py   IQM, median, mean, optimality gap, probability of improvement, profiles (rliable, bootstrap CIs)
    figures.py      learning curves, interval estimates, performance profiles
    report.py       writing all of it for every protocol into one folder
    grid.py         launching the grid of `brims-rl train` runs
    plots.py        learning-curve drawing and smoothing (also scripts/run_curves.py)
    tbdata.py       reading TensorBoard event files of run folders
"""

from brims_rl.compare.cli import add_parser, run

__all__ = ["add_parser", "run"]
