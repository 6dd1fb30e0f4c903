"""The run folder's layout, in one place: file names, the latest-checkpoint pointer, TensorBoard tags, the window of
final episodes and how folders are named. Everything that writes or reads a run folder asks this module.

    RUN/config.json                      the run's Config (config.py)
    RUN/events.out.tfevents.*            TensorBoard scalars under the tags below
    RUN/checkpoints/latest.pt            the latest checkpoint (checkpoint.py), rewritten in place
    RUN/checkpoints/step_<N>.pt          kept periodic checkpoints (N: env steps, 12 digits)
    RUN/eval.json, RUN/modules.png       written by `brims-rl evaluate` (eval__<env>.json: on another env)

While a process trains the folder it holds `TrainingLock` on it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from brims_rl.errors import UserError

try:
    import fcntl
except ImportError:  # no flock on this platform (Windows): training runs unlocked
    fcntl = None

CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"
LATEST = "latest.pt"  # the latest checkpoint: a file rewritten atomically, so the name always points at it
EVAL_FILE = "eval.json"
MODULES_FILE = "modules.png"
DEFAULT_PROTOCOL = "default"  # a run folder's protocol when its config.json names none (runs stored before the field)

# TensorBoard tags (CleanRL's names, so its tooling reads the runs)
RETURN_TAG = "charts/episodic_return"  # the unclipped score of a whole game
LENGTH_TAG = "charts/episodic_length"
LEARNING_RATE_TAG = "charts/learning_rate"
SPS_TAG = "charts/SPS"
# torch.compile calls that fell back to eager during the run: their count, and each one's line as text
COMPILE_FALLBACKS_TAG = "perf/compile_fallbacks"
COMPILE_FALLBACK_TEXT_TAG = "perf/compile_fallback"
LOSS_NAMES = ("value_loss", "policy_loss", "entropy", "approx_kl", "old_approx_kl", "clipfrac", "explained_variance",
              "nonfinite_skips")
KL_PENALTY_NAMES = ("kl", "kl_coef")  # logged with the KL penalty on (ppo.kl_coef > 0)


def loss_tag(name: str) -> str:
    return f"losses/{name}"


def core_tag(key: str) -> str:
    """The tag of a core diagnostic (its `diagnostics()` key)."""
    return f"core/{key}"


# A run's final return (TrainResult.last_return, compare's table) is the mean of its last this many episodes.
FINAL_EPISODES = 100


def clean_name(text: str, fallback: str = "x") -> str:
    """A name as it may appear in a folder name: every run of characters other than letters, digits, '.', '_' and
    '-' becomes one '-' (`ALE/MsPacman-v5` -> `ALE-MsPacman-v5`, `my_core:make_elman` -> `my_core-make_elman`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or fallback


def run_name(env: str, core: str, seed: int, protocol: str | None = None) -> str:
    """ENV__CORE__sSEED, or ENV__CORE__PROTOCOL__sSEED for a protocol other than the default one."""
    parts = [clean_name(env, "env"), clean_name(core, "core")]
    if protocol not in (None, DEFAULT_PROTOCOL):
        parts.append(clean_name(protocol, "protocol"))
    return "__".join(parts + [f"s{seed}"])


def default_run_dir(env: str, core: str, seed: int, protocol: str | None = None, now: datetime | None = None) -> Path:
    """runs/<run_name>__<time>: where a run goes when no folder is given."""
    return Path("runs") / f"{run_name(env, core, seed, protocol)}__{(now or datetime.now()):%Y%m%d-%H%M%S}"


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def latest(self) -> Path:
        return self.checkpoints / LATEST

    def periodic(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:012d}.pt"

    @property
    def eval_file(self) -> Path:
        return self.path / EVAL_FILE

    def transfer_eval_file(self, env: str) -> Path:
        """eval__<env>.json: `evaluate --env` of a run on another env than its own."""
        return self.path / f"{EVAL_FILE[:-5]}__{clean_name(env)}.json"

    @property
    def modules_file(self) -> Path:
        return self.path / MODULES_FILE

    def holds_run(self) -> bool:
        """Whether a run was started here (its config.json exists)."""
        return self.config.exists()


def run_of_checkpoint(file: Path) -> RunFolder | None:
    """The run folder a checkpoint file lies in (RUN/checkpoints/x.pt -> RUN), or None for a file elsewhere."""
    file = Path(file).resolve()
    return RunFolder(file.parent.parent) if file.parent.name == CHECKPOINTS else None


class TrainingLock:
    """Holds a run folder for the one process that trains it (rank 0 under torchrun), so that a second `train
    --resume` of the folder meanwhile is refused instead of overwriting the first's checkpoints and interleaving its
    curves. An advisory lock (flock) on the folder itself: the OS drops it when the process ends, however it ends, so
    a killed run leaves nothing to clean up. Where the platform or file system has no flock, nothing is locked."""

    def __init__(self, path: Path) -> None:
        self._fd: int | None = None
        if fcntl is None:
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{path} is being trained by another process; let it finish or stop it first (two "
                            "processes training one run folder would overwrite each other's checkpoints)") from None
        except OSError:  # a file system without flock
            os.close(fd)
            return
        self._fd = fd

    def release(self) -> None:
        """Let another process train the folder (safe to call twice)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
