"""The mean episodic return of each PPO update, per env and core over seeds: the values whose maximum is POPGym's MMER.

    python scripts/update_returns.py RUN [RUN ...]

For each run folder, the window means of `brims-rl compare`'s MMER (one per update that logged episodes, at least 100
episodes each: brims_rl/compare/runs.py, window_means). Runs are grouped as `compare` groups them (by
protocol, env and core). Prints one Markdown table per protocol and env: a row per core, a column per update's end
step, cells the mean ± sample std over the seeds that reached that step, formatted as compare's POPGym cells (the
count in brackets when it is not every seed of the row).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from brims_rl.compare.plots import seed_std
from brims_rl.compare.runs import Cell, group_by_protocol, load_runs, window_means
from brims_rl.compare.tables import format_bounded
from brims_rl.errors import UserError


def update_means(cell: Cell) -> list[dict[int, float]]:
    """Per seed of the cell: the mean episodic return of each update that logged episodes, by its end step."""
    return [dict(zip(*(values.tolist() for values in window_means(run.episode_steps, run.returns))))
            for run in cell.runs]


def table_cell(values: list[float], seeds: int) -> str:
    text = format_bounded(float(np.mean(values)), seed_std(values)) if values else ""
    return text if len(values) in (0, seeds) else f"{text} ({len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args()
    try:
        groups = group_by_protocol(load_runs(args.runs))
    except UserError as exc:
        print(f"update_returns.py: error: {exc}", file=sys.stderr)
        return 2
    for group in groups:
        for env in group.envs:
            rows = {core: update_means(group.cells[env, core]) for core in group.cores if (env, core) in group.cells}
            steps = sorted({step for per_seed in rows.values() for run in per_seed for step in run})
            print(f"\n{env}, protocol {group.protocol}: mean episodic return per update "
                  "(mean ± sample std over seeds)\n")
            print("| core | seeds | " + " | ".join(f"{step:,}" for step in steps) + " |")
            print("|---|---:|" + "---:|" * len(steps))
            for core, per_seed in rows.items():
                cells = [table_cell([run[step] for run in per_seed if step in run], len(per_seed)) for step in steps]
                print(f"| {core} | {len(per_seed)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
