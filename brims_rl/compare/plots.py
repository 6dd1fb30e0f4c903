"""Learning curves for `brims-rl compare`: one subplot per environment, mean over seeds with a ±std band per core."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

GRID_POINTS = 200


def seed_std(values: Sequence[float] | np.ndarray) -> float:
    """Sample standard deviation over seeds (n - 1 in the denominator); 0 with a single seed."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.std(values, ddof=1)) if values.size > 1 else 0.0


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last `window` values (fewer at the start)."""
    values = np.asarray(values, dtype=np.float64)
    cumsum = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (cumsum[idx] - cumsum[lo]) / (idx - lo)


def last_per_step(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One point per distinct step: the value of the last entry logged at it (steps in logging order, not
    decreasing). The trainer logs all of an update's episodes at that update's step, so a smoothed curve has many
    values at one step; its last is the trailing mean at the end of the update."""
    steps, values = np.asarray(steps), np.asarray(values)
    if steps.size == 0:
        return steps, values
    last = np.flatnonzero(np.append(steps[1:] != steps[:-1], True))
    return steps[last], values[last]


def mean_band(curves: Sequence[tuple[np.ndarray, np.ndarray]], points: int = GRID_POINTS):
    """Interpolate each (steps, values) curve onto a common step grid; return (grid, mean, std) over curves.

    The grid spans the steps that every curve covers; where the curves do not overlap at all, it spans all of them
    and each grid point averages the curves that cover it.
    """
    first = [float(steps[0]) for steps, _ in curves]
    last = [float(steps[-1]) for steps, _ in curves]
    lo, hi = max(first), min(last)
    if hi < lo:
        lo, hi = min(first), max(last)
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    table = np.full((len(curves), len(grid)), np.nan)
    for row, (steps, values) in enumerate(curves):
        inside = (grid >= steps[0]) & (grid <= steps[-1])
        table[row, inside] = np.interp(grid[inside], steps, values)
    keep = np.isfinite(table).any(axis=0)
    grid, table = grid[keep], table[:, keep]
    mean = np.array([np.mean(col[np.isfinite(col)]) for col in table.T])
    std = np.array([seed_std(col[np.isfinite(col)]) for col in table.T])
    return grid, mean, std


def plot_learning_curves(
    curves: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]],
    envs: Sequence[str],
    cores: Sequence[str],
    path: Path,
    ylabel: str = "episodic return",
) -> None:
    """Write a PNG: one subplot per env; per core the mean over seeds of the smoothed curves with a ±std band.

    `curves[(env, core)]` holds one (env steps, smoothed return) pair per seed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    ncols = min(len(envs), 5)
    nrows = math.ceil(len(envs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles = {}
    for index, env in enumerate(envs):
        ax = axes[index // ncols][index % ncols]
        for c, core in enumerate(cores):
            runs = curves.get((env, core))
            if not runs:
                continue
            grid, mean, std = mean_band(runs)
            color = colors[c % len(colors)]
            label = f"{core} (n={len(runs)})" if len(envs) == 1 else core
            if len(grid) == 1:
                (line,) = ax.plot(grid, mean, "o", color=color, label=label)
                ax.errorbar(grid, mean, yerr=std, color=color)
            else:
                (line,) = ax.plot(grid, mean, color=color, label=label, linewidth=1.5)
                ax.fill_between(grid, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
            handles.setdefault(core, line)
        ax.set_title(env)
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        largest = max((np.abs(values).max(initial=0.0) for core in cores for _, values in curves.get((env, core), [])),
                      default=0.0)
        if largest >= 1000:  # 1.2k rather than 1200; returns in [-1, 1] stay plain rather than -490m
            ax.yaxis.set_major_formatter(EngFormatter(sep=""))
        ax.set_xlabel("env steps")
        if index % ncols == 0:
            ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for index in range(len(envs), nrows * ncols):
        axes[index // ncols][index % ncols].set_visible(False)
    if len(envs) == 1:
        axes[0][0].legend(loc="best", fontsize="small")
    else:
        fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.94) if len(envs) > 1 else None)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
