"""compare's figures: learning curves (plots.py) and, with rliable's plotting, the aggregate interval estimates
and the performance profiles. Every figure is written to a temporary name and moved into place."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from brims_rl.atomic import write_bytes_atomic
from brims_rl.compare.aggregates import Aggregates
from brims_rl.compare.runs import Group
from brims_rl.run_folder import FINAL_EPISODES
from brims_rl.compare.plots import last_per_step, plot_learning_curves, smooth


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _write(path: Path, draw) -> None:
    """Render a PNG into memory with `draw(file)`, then write it atomically (atomic.write_bytes_atomic: no temp
    file survives a failure, and the error names `path`)."""
    buffer = io.BytesIO()
    draw(buffer)
    write_bytes_atomic(path, buffer.getbuffer())


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    try:
        _write(path, lambda file: fig.savefig(file, format="png", dpi=100, bbox_inches="tight"))
    finally:
        plt.close(fig)


def learning_curves(group: Group, path: Path) -> None:
    curves = {
        key: [last_per_step(r.episode_steps, smooth(r.returns, FINAL_EPISODES)) for r in cell.runs]
        for key, cell in group.cells.items()
    }
    _write(path, lambda file: plot_learning_curves(curves, group.envs, group.cores, file))


def _colors(cores: list[str]) -> dict[str, tuple]:
    import seaborn as sns

    return dict(zip(cores, sns.color_palette("colorblind", n_colors=len(cores))))


def interval_estimates(agg: Aggregates, path: Path) -> None:
    """One panel per metric; per core a bar spanning its 95% CI and a tick at the point estimate."""
    _pyplot()
    from rliable import plot_utils

    points = {core: np.array([agg.metrics[core][m].value for m in agg.metric_names]) for core in agg.cores}
    intervals = {}
    for core in agg.cores:
        estimates = [agg.metrics[core][m] for m in agg.metric_names]
        intervals[core] = np.array([[e.value if e.low is None else e.low for e in estimates],
                                    [e.value if e.high is None else e.high for e in estimates]])
    label = agg.axis_label[:1].upper() + agg.axis_label[1:]
    fig, axes = plot_utils.plot_interval_estimates(
        points, intervals, metric_names=agg.metric_names, algorithms=agg.cores, colors=_colors(agg.cores),
        xlabel=label, row_height=0.6, subfigure_width=4.0, max_ticks=3,
        xlabel_y_coordinate=-0.35 if len(agg.cores) < 4 else -0.15)
    for ax in np.atleast_1d(axes):  # labels that do not run into each other on narrow ranges
        ax.tick_params(axis="x", labelsize="large")
    title = f"protocol {agg.protocol}: {len(agg.games)} game(s), 95% stratified-bootstrap CIs"
    if not agg.has_intervals:
        title += " (none where a core has a single run per game)"
    fig.suptitle(title, y=1.25 if len(agg.cores) < 4 else 1.1)
    _save(fig, path)


def performance_profiles(agg: Aggregates, path: Path) -> None:
    """Per core the fraction of runs x games scoring above each threshold, with a 95% band where runs allow."""
    plt = _pyplot()
    from rliable import plot_utils

    profiles = {core: agg.profiles[core][0] for core in agg.cores}
    bands = {core: (low, high) for core, (_, low, high) in agg.profiles.items() if low is not None}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    label = agg.axis_label
    plot_utils.plot_performance_profiles(
        profiles, agg.taus, performance_profile_cis=bands or None, colors=_colors(agg.cores), ax=ax,
        xlabel=rf"{label} ($\tau$)", ylabel=r"fraction of runs with score $> \tau$", labelsize="large",
        ticklabelsize="large", legend=True, legendsize="medium")
    ax.set_title(f"protocol {agg.protocol}: performance profiles over {len(agg.games)} game(s)")
    _save(fig, path)
