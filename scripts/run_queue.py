"""Run a list of `brims-rl train` commands a few at a time: the long learning runs behind docs/results.md.

    brims-rl compare --env ... --cores ... --seeds N --protocol P --out OUT --dry-run > commands.txt
    python scripts/run_queue.py commands.txt [--slots 2] [--code CHECKOUT] [--seed-major] [--only SUBSTRING ...]

Each line is a `brims-rl train ... --run-dir DIR` command (as `compare --dry-run` prints them; blank lines and
`#` lines are skipped). It runs as `python -m brims_rl train ...` with one torch thread, inside CHECKOUT (default:
this script's own checkout), so that the runs use that checkout's code even while another is being edited: use a
`git worktree` of the commit to measure. `--seed-major` runs every command of seed 1 first, then seed 2, ...: a set
stopped midway then has whole seeds. A run whose folder holds `done` is skipped; runners started on the same list
share it (each run is claimed in DIR/../.claims; delete a stopped runner's unfinished claims before restarting it).
DIR gets `command.txt` (commit and command) and `train.log`; the checkpoints stay (evaluation may need them).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path


def read_commands(path: Path) -> list[list[str]]:
    commands = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line)
        if words[:2] != ["brims-rl", "train"] or "--run-dir" not in words:
            raise SystemExit(f"not a 'brims-rl train ... --run-dir DIR' command: {line}")
        commands.append(words[1:])
    return commands


def seed_of(words: list[str]) -> int:
    return int(words[words.index("--seed") + 1]) if "--seed" in words else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commands", type=Path)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--seed-major", action="store_true", help="all of seed 1 first, then seed 2, ...")
    parser.add_argument("--only", nargs="*", default=[], help="run only commands containing one of these")
    args = parser.parse_args()
    commands = read_commands(args.commands)
    if args.seed_major:
        commands.sort(key=seed_of)  # stable: the listed order within a seed
    commands = [c for c in commands if not args.only or any(s in " ".join(c) for s in args.only)]
    run_commands(commands, args.slots, args.code)
    return 0


def run_commands(commands: list[list[str]], slots: int, code: Path, keep_checkpoints: bool = True) -> None:
    """Run `train ... --run-dir DIR` argument lists `slots` at a time inside the checkout `code` (module docstring);
    `keep_checkpoints=False` deletes a finished run's checkpoints (its events, config and log stay)."""
    code = code.resolve()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(code)}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=code, capture_output=True, text=True).stdout.strip()
    pending = [(Path(c[c.index("--run-dir") + 1]).resolve(), c) for c in commands]
    pending = [(d, c) for d, c in pending if not (d / "done").exists()]
    running: dict[Path, subprocess.Popen] = {}
    while pending or running:
        while pending and len(running) < slots:
            run_dir, words = pending.pop(0)
            claims = run_dir.parent / ".claims"
            claims.mkdir(parents=True, exist_ok=True)
            try:
                (claims / run_dir.name).mkdir()
            except FileExistsError:  # another runner has it
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            resume = (run_dir / "config.json").exists()  # a run stopped midway continues from its checkpoint
            argv = ["train", "--resume", str(run_dir)] + _steps(words) if resume else words
            command = [sys.executable, "-m", "brims_rl", *argv]
            (run_dir / "command.txt").write_text(f"# commit {commit}\n{shlex.join(['brims-rl', *words])}\n")
            log = open(run_dir / "train.log", "a")
            running[run_dir] = subprocess.Popen(command, env=env, cwd=code, stdout=log, stderr=subprocess.STDOUT)
            print(f"{time.strftime('%H:%M:%S')} started {run_dir.name}{' (resumed)' if resume else ''}", flush=True)
        time.sleep(5)
        for run_dir, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[run_dir]
            if proc.returncode == 0:
                (run_dir / "done").write_text("")
                if not keep_checkpoints:
                    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            print(f"{time.strftime('%H:%M:%S')} {'finished' if proc.returncode == 0 else 'FAILED'} {run_dir.name}",
                  flush=True)


def _steps(words: list[str]) -> list[str]:
    """The --total-steps of a command, for its resume."""
    return ["--total-steps", words[words.index("--total-steps") + 1]] if "--total-steps" in words else []


if __name__ == "__main__":
    raise SystemExit(main())
