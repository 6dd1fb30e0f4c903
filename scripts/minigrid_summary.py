"""Per core: MiniGrid mean return and success rate over seeds, from the runs' evaluations (docs/results.md, "MiniGrid").

    python scripts/minigrid_summary.py RUN_DIR ... [--env ENV]

Reads each run's eval.json (`brims-rl evaluate RUN --episodes 100`), or eval__ENV.json with `--env ENV` (`brims-rl
evaluate RUN --env ENV`: the run's policy on another env, e.g. two-room policies on four rooms). A MiniGrid episode
returns 1 - 0.9 (steps / max_steps) when the agent reaches the goal and 0 otherwise, so an episode succeeded when
its return is above 0. Prints a Markdown table: per core (config.json's core and options) the seeds, the mean return
and the success rate, each as mean ± sample std over seeds (0 with one seed), and the per-seed values; then, over
the per-seed mean returns, rliable's IQM with a 95% bootstrap interval per core (two seeds or more) and the
probability of improvement P(X > Y) for every pair of cores, as `brims-rl compare` computes them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from rliable import library as rly
from rliable import metrics

from brims_rl.compare.aggregates import BOOTSTRAP_SEED, CONFIDENCE, DEFAULT_REPS, probability_of_improvement
from brims_rl.compare.aggregates import seeded_global_rng
from brims_rl.run_folder import RunFolder


def label(config: dict) -> str:
    """The core and the options that tell runs of one core name apart (top_k, for the RIMs claim's variants)."""
    options = config["core"]["options"]
    extra = f", top_k {options['top_k']}" if "top_k" in options else ""
    return f"{config['core']['name']}{extra}"


def spread(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--env", help="read eval__ENV.json (a transfer evaluation) instead of eval.json")
    args = parser.parse_args()
    rows: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for run in args.runs:
        folder = RunFolder(run)
        file = folder.eval_file if args.env is None else folder.transfer_eval_file(args.env)
        if not file.is_file():
            print(f"minigrid_summary: {run} has no {file.name}; evaluate it first", file=sys.stderr)
            return 2
        config = json.loads(folder.config.read_text())
        scores = json.loads(file.read_text())["scores"]
        success = sum(score > 0 for score in scores) / len(scores)
        rows[label(config)].append((config["seed"], sum(scores) / len(scores), success))
    print("| core | seeds | mean return | success rate | per seed (return / success) |")
    print("|---|---:|---:|---:|---|")
    rows = dict(sorted(rows.items()))
    for name, values in rows.items():
        values.sort()
        per_seed = ", ".join(f"s{seed}: {ret:.2f} / {ok:.2f}" for seed, ret, ok in values)
        print(f"| {name} | {len(values)} | {spread([v[1] for v in values])} | {spread([v[2] for v in values])} | "
              f"{per_seed} |")
    print_aggregates({name: np.array([[v[1]] for v in values]) for name, values in rows.items()})
    return 0


def print_aggregates(returns: dict[str, np.ndarray]) -> None:
    """IQM with a 95% stratified-bootstrap interval per core, and P(X > Y) per pair, over [seeds, 1] mean returns."""
    print()
    for name, scores in returns.items():
        iqm = metrics.aggregate_iqm(scores)
        if scores.shape[0] < 2:
            print(f"- {name}: IQM {iqm:.3f} (one seed: no interval)")
            continue
        with seeded_global_rng(BOOTSTRAP_SEED):
            _, intervals = rly.get_interval_estimates({name: scores}, lambda x: np.array([metrics.aggregate_iqm(x)]),
                                                      reps=DEFAULT_REPS, confidence_interval_size=CONFIDENCE)
        low, high = intervals[name][:, 0]
        print(f"- {name}: IQM {iqm:.3f} [{low:.3f}, {high:.3f}]")
    for (x, sx), (y, sy) in itertools.combinations(returns.items(), 2):
        print(f"- P({x} > {y}) = {probability_of_improvement(sx, sy):.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
