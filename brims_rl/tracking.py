"""Weights & Biases tracking for `brims-rl train --track`, the way CleanRL does it.

`wandb.init(sync_tensorboard=True, config=..., name=...)` before the run's SummaryWriter is created makes W&B mirror
every TensorBoard scalar under its TensorBoard tag (CleanRL's names: charts/episodic_return, charts/SPS, losses/...,
plus core/... diagnostics); the W&B config is the run's config.json content. The W&B run is named after the run
folder; as with CleanRL, W&B keeps its files in ./wandb/ (or $WANDB_DIR), never inside the run folder (W&B copies
the event files it syncs, and would copy its own copies). WANDB_MODE=offline works without a network (upload later
with `wandb sync`). Under torchrun only rank 0 calls this. wandb is an optional extra: pip install -e ".[wandb]".
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from brims_rl.errors import UserError

INSTALL_HINT = 'pip install -e ".[wandb]" (or pip install wandb)'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tracking with Weights & Biases (needs the wandb extra)")
    group.add_argument("--track", action="store_true",
                       help="mirror the TensorBoard scalars and config.json to Weights & Biases (rank 0 only)")
    group.add_argument("--wandb-project", default="brims-rl", help="W&B project (default brims-rl)")
    group.add_argument("--wandb-entity", help="W&B team or user (default: your default entity)")
    group.add_argument("--wandb-group", help="W&B group, e.g. one per grid of runs")


def check(args: argparse.Namespace) -> None:
    """Fail early, before a run folder is made: --track needs wandb; the W&B options need --track."""
    if not getattr(args, "track", False):
        given = [flag for flag, value in (("--wandb-entity", args.wandb_entity), ("--wandb-group", args.wandb_group),
                                          ("--wandb-project", None if args.wandb_project == "brims-rl" else 1))
                 if value is not None]
        if given:
            raise UserError(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} with --track")
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise UserError(f"--track needs the wandb package: {INSTALL_HINT}") from None


class Tracker:
    """One W&B run; `finish(exit_code)` closes it (a crashed training finishes it as failed)."""

    def __init__(self, run: Any) -> None:
        self.run = run

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


def start(args: argparse.Namespace, config: dict[str, Any], run_dir: Path) -> Tracker | None:
    """Start tracking if --track was given; call before the run's SummaryWriter is created."""
    if not getattr(args, "track", False):
        return None
    import wandb

    try:
        run = wandb.init(project=args.wandb_project, entity=args.wandb_entity, group=args.wandb_group,
                         name=Path(run_dir).name, config=config, sync_tensorboard=True, save_code=True)
    except Exception as exc:  # no login, no network, a bad entity ...: one line, nothing trained yet
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--track: could not start a W&B run ({first[:200]}); WANDB_MODE=offline works "
                        "without a login") from None
    return Tracker(run)
