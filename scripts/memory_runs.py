"""The CueMemory learning runs behind docs/results.md ("Replay record" and "Which top-down layout"), a few at a time.

    python scripts/memory_runs.py GRID OUT [--code CHECKOUT] [--slots 2] [--only SUBSTRING ...] [--old]

GRID is one of:
- `record`: CueMemory-v0 (delay 4), rims and brims, seeds 1-5, 51,200 steps, with the replay record as built
  (`new`) and without it (`tol0`, core.options.tie_tolerance=0); with `--old`, the runs are named `old` (for a
  `--code` checkout of a commit whose PPO passed the record in every minibatch).
- `topdown`: CueMemory-v0 with delay 8, 12 and 16, brims with both top-down layouts, lstm and gru, seeds 1-5,
  102,400 steps.
- `sequence`: the delay-12 runs of `topdown` for brims (`"layer"`), lstm and gru, and the same for rims, seeds 1-3:
  learning with the RIMs/BRIMs sequence path ("Speed", docs/results.md).

Every run is `python -m brims_rl train` with default PPO and one torch thread, so that two share a 2-core machine,
run inside CHECKOUT (default: this script's own checkout), so that the runs use that checkout's code even while
another is being edited: use a `git worktree` of the commit to measure. A run whose
folder holds `done` is skipped, and runners started on the same OUT share its runs (each run is claimed in
OUT/.claims; delete a stopped runner's unfinished claims before starting it again; scripts/run_queue.py runs them).
Checkpoints are deleted after a run (the event files, config.json and the log are kept). Then:
`brims-rl compare OUT/<prefix>* --out ...`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from run_queue import run_commands

SEEDS = range(1, 6)


def record_grid(setting: str) -> list[tuple[str, list[str]]]:
    runs = []
    for core in ("brims", "rims"):
        for seed in SEEDS:
            extra = ["--set", "core.options.tie_tolerance=0"] if setting == "tol0" else []
            runs.append((f"record-{setting}_{core}_s{seed}",
                         ["--env", "CueMemory-v0", "--core", core, "--seed", str(seed), "--total-steps", "51200", *extra]))
    return runs


def topdown_grid() -> list[tuple[str, list[str]]]:
    agents = {"brims-layer": ["--core", "brims", "--set", "core.options.top_down_slots=layer"],
              "brims-modules": ["--core", "brims", "--set", "core.options.top_down_slots=modules"],
              "lstm": ["--core", "lstm"], "gru": ["--core", "gru"]}
    runs = []
    for delay in (12, 8, 16):  # 12 first: the main comparison
        for seed in SEEDS:
            for name, args in agents.items():
                runs.append((f"delay{delay}_{name}_s{seed}",
                             ["--env", "CueMemory-v0", "--set", f"env.kwargs.delay={delay}", "--seed", str(seed),
                              "--total-steps", "102400", *args]))
    return runs


def sequence_grid() -> list[tuple[str, list[str]]]:
    agents = {"brims-layer": ["--core", "brims"], "rims": ["--core", "rims"], "lstm": ["--core", "lstm"],
              "gru": ["--core", "gru"]}
    return [(f"delay12_{name}_s{seed}", ["--env", "CueMemory-v0", "--set", "env.kwargs.delay=12", "--seed", str(seed),
                                         "--total-steps", "102400", *args])
            for seed in range(1, 4) for name, args in agents.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", choices=["record", "topdown", "sequence"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=[], help="run only names containing one of these")
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the checkout whose brims_rl runs (default: this one)")
    parser.add_argument("--old", action="store_true", help="record grid: name the runs record-old_*")
    args = parser.parse_args()

    if args.grid == "record":
        runs = record_grid("old") if args.old else record_grid("new") + record_grid("tol0")
    elif args.grid == "topdown":
        runs = topdown_grid()
    else:
        runs = sequence_grid()
    runs = [(name, a) for name, a in runs if not args.only or any(s in name for s in args.only)]
    out = args.out.resolve()
    commands = [["train", *train_args, "--set", "env.threads=1", "--run-dir", str(out / name)]
                for name, train_args in runs]
    run_commands(commands, args.slots, args.code, keep_checkpoints=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
