"""Side-by-side curves of chosen TensorBoard tags for runs that `brims-rl compare` will not group (e.g. the same core
with different options, such as BRIMs' two top-down layouts): one panel per tag, one line per run folder.

    python scripts/run_curves.py RUN [RUN ...] --out FIGURE.png [--labels A B ...] [--tags TAG ...] [--smooth 100]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from brims_rl.atomic import write_bytes_atomic  # noqa: E402
from brims_rl.compare.plots import smooth  # noqa: E402
from brims_rl.compare.tbdata import read_run_scalars  # noqa: E402

DEFAULT_TAGS = ["charts/episodic_return", "core/layer0/attention_to_higher"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--labels", nargs="+", help="one legend label per run (default: the run folders' names)")
    p.add_argument("--tags", nargs="+", default=DEFAULT_TAGS)
    p.add_argument("--smooth", type=int, default=100, help="trailing mean over this many logged values of returns")
    args = p.parse_args()
    labels = args.labels or [run.name for run in args.runs]
    if len(labels) != len(args.runs):
        p.error(f"{len(labels)} labels for {len(args.runs)} runs")
    fig, axes = plt.subplots(1, len(args.tags), figsize=(5.5 * len(args.tags), 3.8), squeeze=False)
    for run, label in zip(args.runs, labels):
        scalars = read_run_scalars(run)
        for ax, tag in zip(axes[0], args.tags):
            if tag not in scalars:
                continue
            series = scalars[tag]
            values = smooth(series.values, args.smooth) if tag.startswith("charts/episodic") else series.values
            ax.plot(series.steps, values, label=label, linewidth=1.2)
            print(f"{label} {tag}: first {series.values[0]:.4g} at step {series.steps[0]:,}, last "
                  f"{values[-1]:.4g} at step {series.steps[-1]:,}")
    for ax, tag in zip(axes[0], args.tags):
        ax.set_title(tag)
        ax.set_xlabel("agent steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    write_bytes_atomic(args.out, buffer.getvalue())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
