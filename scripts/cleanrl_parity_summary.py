"""Table of the CleanRL parity runs (scripts/cleanrl_parity.sh): CleanRL's ppo_atari_lstm.py against brims-rl.

    python scripts/cleanrl_parity_summary.py OUT [--window 50000] [--last 100] [--warmup 0.1]

OUT holds cleanrl_s<N>/ (CleanRL's events under runs/<name>/) and brims_s<N>/ (brims-rl's run folder). Both log
`charts/episodic_return` (unclipped full-game score) against global_step (agent steps x envs). Per run and as mean ±
sample std over seeds: the mean return of the games logged in each `--window` of steps (brims-rl logs a game at the
end of its update, CleanRL at its last step; the last window takes the tail), the mean of the last
`--last` games, and the steady steps/s: steps over event wall time, from the first update logged at or after
`--warmup` of the run's steps to its last (both sides log `charts/SPS` once per update).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
from tensorboard.compat.proto import event_pb2

from brims_rl.compare.plots import seed_std
from brims_rl.compare.tbdata import event_files, iter_records, read_run_scalars

RETURN_TAG, SPS_TAG = "charts/episodic_return", "charts/SPS"
SIDES = ("cleanrl", "brims")


def events_folder(run: Path) -> Path:
    """brims-rl's run folder holds its events; CleanRL's working folder holds runs/<name>/ (the newest is taken)."""
    if event_files(run):
        return run
    found = sorted((p.parent for p in run.glob("runs/*/events.out.tfevents.*")), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no event files in {run}")
    return found[-1]


def update_times(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(global_step, wall time) of every logged update, read from the wall times of the SPS events."""
    points = []
    for path in event_files(folder):
        for payload in iter_records(path):
            event = event_pb2.Event.FromString(payload)
            if any(v.tag == SPS_TAG for v in event.summary.value):
                points.append((event.step, event.wall_time))
    points.sort()
    return np.array([p[0] for p in points]), np.array([p[1] for p in points])


def run_numbers(folder: Path, window: int, last: int, warmup: float) -> dict:
    returns = read_run_scalars(folder)[RETURN_TAG]
    steps, walls = update_times(folder)
    start = int(np.searchsorted(steps, warmup * steps[-1]))
    sps = (steps[-1] - steps[start]) / (walls[-1] - walls[start]) if start < len(steps) - 1 else float("nan")
    n = max(1, round(steps[-1] / window))  # the last window takes the tail: CleanRL stops at 299,008 of 300k
    index = np.minimum(returns.steps // window, n - 1)
    windows = [returns.values[index == i] for i in range(n)]
    return {"windows": [w.mean() if len(w) else float("nan") for w in windows],
            "last": returns.values[-last:].mean(), "games": len(returns), "sps": sps, "steps": int(steps[-1])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--window", type=int, default=50_000)
    p.add_argument("--last", type=int, default=100)
    p.add_argument("--warmup", type=float, default=0.1)
    args = p.parse_args()
    runs = {}
    for run in sorted(args.out.iterdir()):
        match = re.fullmatch(rf"({'|'.join(SIDES)})_s(\d+)", run.name)
        if match and run.is_dir():
            runs[(match[1], int(match[2]))] = run_numbers(events_folder(run), args.window, args.last, args.warmup)
    if not runs:
        raise SystemExit(f"no cleanrl_s<N>/ or brims_s<N>/ runs in {args.out}")
    n_windows = max(len(r["windows"]) for r in runs.values())
    heads = [f"{i * args.window // 1000}-{(i + 1) * args.window // 1000}k" for i in range(n_windows)]
    print("| run | steps | games | " + " | ".join(heads) + f" | last {args.last} | steady steps/s |")
    print("|---" * (n_windows + 5) + "|")

    def cells_of(windows: list[float]) -> list[float]:
        return windows + [float("nan")] * (n_windows - len(windows))

    def cells(r: dict) -> list[str]:
        return [f"{v:.2f}" for v in cells_of(r["windows"])] + [f"{r['last']:.2f}", f"{r['sps']:.0f}"]

    for side in SIDES:
        seeds = sorted(s for (name, s) in runs if name == side)
        for seed in seeds:
            r = runs[(side, seed)]
            print(f"| {side} s{seed} | {r['steps']:,} | {r['games']} | " + " | ".join(cells(r)) + " |")
        if len(seeds) > 1:
            table = [[runs[(side, s)][k] for s in seeds] for k in ("last", "sps")]
            win = np.array([cells_of(runs[(side, s)]["windows"]) for s in seeds])
            means = [f"{np.mean(c[~np.isnan(c)]):.2f} ± {seed_std(c[~np.isnan(c)]):.2f}" if (~np.isnan(c)).any()
                     else "-" for c in win.T]
            print(f"| {side} mean ± std ({len(seeds)} seeds) | | | " + " | ".join(means)
                  + f" | {np.mean(table[0]):.2f} ± {seed_std(table[0]):.2f} | {np.mean(table[1]):.0f} ± "
                  f"{seed_std(table[1]):.0f} |")


if __name__ == "__main__":
    main()
