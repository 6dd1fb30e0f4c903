"""Per-seed table of CueMemory runs (scripts/memory_runs.py): final return and steps to reach a return level.

    python scripts/memory_summary.py RUNS_DIR [--final 1000] [--window 200] [--level 0.9] [--prefix P ...]
                                              [--figure OUT.png]

Runs are grouped by their folder name without the `_s<seed>` suffix. For each run: `final`, the mean episodic
return (`charts/episodic_return`) of its last `--final` episodes; `to_level`, the first env step at which the mean of
the preceding `--window` episodes reaches `--level` (blank if never). Prints a Markdown table per group and a summary
row (mean final return, seeds that reached the level, median steps among those). `--prefix` keeps the groups whose
name starts with one of them; `--figure` draws each group's mean over seeds of the `--window`-episode mean return
against env steps, with the seeds' range shaded.
"""

from __future__ import annotations

import argparse
import re
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TAG = "charts/episodic_return"


def episodes(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, returns) of every episode logged in the run's event files, in step order."""
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars(TAG) if TAG in acc.Tags()["scalars"] else []
    return np.array([e.step for e in events]), np.array([e.value for e in events])


def steps_to_level(steps: np.ndarray, returns: np.ndarray, window: int, level: float) -> int | None:
    if len(returns) < window:
        return None
    means = np.convolve(returns, np.ones(window) / window, mode="valid")  # mean of episodes i-window+1 .. i
    reached = np.nonzero(means >= level)[0]
    return int(steps[reached[0] + window - 1]) if len(reached) else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path)
    p.add_argument("--final", type=int, default=1000)
    p.add_argument("--window", type=int, default=200)
    p.add_argument("--level", type=float, default=0.9)
    p.add_argument("--prefix", nargs="*", default=[])
    p.add_argument("--figure", type=Path)
    args = p.parse_args()
    groups: dict[str, list[tuple[int, float, int | None]]] = defaultdict(list)
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for run in sorted(r for r in args.runs.iterdir() if (r / "done").exists()):
        match = re.fullmatch(r"(.+)_s(\d+)", run.name)
        if not match or (args.prefix and not match.group(1).startswith(tuple(args.prefix))):
            continue
        steps, returns = episodes(run)
        if len(returns) >= args.window:
            curves[match.group(1)].append((steps[args.window - 1:],
                                           np.convolve(returns, np.ones(args.window) / args.window, mode="valid")))
        final = float(returns[-args.final:].mean()) if len(returns) else float("nan")
        groups[match.group(1)].append((int(match.group(2)), final, steps_to_level(steps, returns, args.window,
                                                                                   args.level)))
    print(f"| runs | seeds | final return per seed (last {args.final} episodes) | mean | steps to {args.level:g} "
          f"per seed ({args.window}-episode mean) | reached |")
    print("|---|---|---|---|---|---|")
    for name, rows in groups.items():
        rows.sort()
        finals = [f for _, f, _ in rows]
        reached = [s for _, _, s in rows if s is not None]
        per_seed_steps = ", ".join("-" if s is None else f"{s / 1000:.0f}k" for _, _, s in rows)
        median = f", median {statistics.median(reached) / 1000:.0f}k" if reached else ""
        print(f"| {name} | {len(rows)} | {', '.join(f'{f:.2f}' for f in finals)} | {statistics.mean(finals):.3f} | "
              f"{per_seed_steps} | {len(reached)}/{len(rows)}{median} |")
    if args.figure:
        draw(curves, args.figure, args.window)
    return 0


def draw(curves: dict[str, list[tuple[np.ndarray, np.ndarray]]], out: Path, window: int) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, runs in curves.items():
        grid = np.linspace(max(s[0] for s, _ in runs), min(s[-1] for s, _ in runs), 200)
        values = np.stack([np.interp(grid, s, r) for s, r in runs])
        line, = ax.plot(grid, values.mean(0), label=f"{name} ({len(runs)} seeds)")
        ax.fill_between(grid, values.min(0), values.max(0), color=line.get_color(), alpha=0.15)
    ax.set_xlabel("env steps")
    ax.set_ylabel(f"return ({window}-episode mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
