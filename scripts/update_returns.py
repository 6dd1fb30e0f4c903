"""The mean episodic return of each PPO update, per env and core over seeds: the values whose maximum is POPGym's MMER.

    python scripts/update_returns.py RUN [RUN ...]

For each run folder, the window means of `brims-rl compare`'s MMER (one per update that logged episodes, at least 100
episodes each: brims_rl/compare/runs.py, window_means). Prints one Markdown table per env: a row per core, a column
per update's end step, cells the mean ± sample std over the seeds that reached that step (the count in brackets when
it is not every seed of the row).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import numpy as np

from brims_rl.compare.runs import load_runs, window_means
from brims_rl.errors import UserError


def cell(values: list[float], seeds: int) -> str:
    mean = float(np.mean(values))
    text = f"{mean:.3f} ± {float(np.std(values, ddof=1)):.3f}" if len(values) > 1 else f"{mean:.3f}"
    return text if len(values) == seeds else f"{text} ({len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args()
    try:
        runs = load_runs(args.runs)
    except UserError as exc:
        print(f"update_returns: error: {exc}", file=sys.stderr)
        return 2
    by_env: dict[str, dict[str, list[dict[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        steps, means = window_means(run.episode_steps, run.returns)
        by_env[run.env][run.core].append(dict(zip(steps.tolist(), means.tolist())))
    for env, cores in by_env.items():
        steps = sorted({step for per_seed in cores.values() for run in per_seed for step in run})
        print(f"\n{env}: mean episodic return per update (mean ± sample std over seeds)\n")
        print("| core | seeds | " + " | ".join(f"{step:,}" for step in steps) + " |")
        print("|---|---:|" + "---:|" * len(steps))
        for core, per_seed in cores.items():
            cells = [cell([run[step] for run in per_seed if step in run], len(per_seed))
                     if any(step in run for run in per_seed) else "" for step in steps]
            print(f"| {core} | {len(per_seed)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
