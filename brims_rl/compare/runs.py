"""Reading run folders for `brims-rl compare` and grouping them: protocol -> env (rows) x core (columns) cells."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brims_rl.config import Config
from brims_rl.environments.registry import is_popgym_id
from brims_rl.errors import UserError, warn
from brims_rl.compare.plots import seed_std
from brims_rl.run_folder import DEFAULT_PROTOCOL, FINAL_EPISODES, RETURN_TAG, RunFolder
# EnvConfig fields that do not change what the agent experiences: runs that differ only in these can be grouped.
NOT_PROTOCOL = ("id", "backend", "num_envs", "threads")
MMER_MIN_EPISODES = 100  # a window with fewer episodes takes the latest earlier ones up to this many (as RLlib does)


def update_windows(episode_steps: np.ndarray) -> list[tuple[int, int]]:
    """Per PPO update that logged episodes, the [start, end) slice of the run's episodes that is its MMER window.

    The trainer logs every episode that ended during an update's rollout at that update's global step, so the
    episodes sharing a step are exactly one update's (of any protocol, any num_envs and num_steps; a resumed run's
    merged event files keep each update once). A window is that update's episodes; when there are fewer than
    MMER_MIN_EPISODES, it reaches back over the latest earlier episodes up to that many (all of them early in a run),
    the way RLlib's per-iteration episode_reward_mean does (metrics_num_episodes_for_smoothing = 100).
    """
    steps = np.asarray(episode_steps)
    if len(steps) == 0:
        return []
    ends = np.flatnonzero(np.diff(steps)) + 1  # steps are sorted: a new update where the step changes
    starts = np.concatenate([[0], ends])
    ends = np.concatenate([ends, [len(steps)]])
    return [(int(min(start, max(0, end - MMER_MIN_EPISODES))), int(end)) for start, end in zip(starts, ends)]


def window_means(episode_steps: np.ndarray, returns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(step of each update that logged episodes, mean episodic return of its window: see update_windows)."""
    returns = np.asarray(returns, dtype=np.float64)
    windows = update_windows(episode_steps)
    cumulative = np.concatenate([[0.0], np.cumsum(returns)])
    means = np.array([(cumulative[end] - cumulative[start]) / (end - start) for start, end in windows])
    steps = np.array([int(np.asarray(episode_steps)[end - 1]) for _, end in windows], dtype=np.int64)
    return steps, means


def max_mean_episodic_return(episode_steps: np.ndarray, returns: np.ndarray) -> float:
    """POPGym's MMER of one run: the maximum over training of the per-update window means (window_means)."""
    return float(window_means(episode_steps, returns)[1].max())


def normalised_mmer(mmer: float) -> float:
    """POPGym's normalised score of an MMER: 0.5 MMER + 0.5, from [-1, 1] onto [0, 1]."""
    return 0.5 * mmer + 0.5


def area_under_curve(episode_steps: np.ndarray, returns: np.ndarray) -> float:
    """The area under a run's learning curve, per env step: the mean over training of the per-update window means
    (window_means), each update weighted by the env steps it took (its step minus the previous update's), so a run
    that learns early scores higher than one that reaches the same end late. Over one run's updates of equal size
    it is the plain mean of the window means."""
    steps, means = window_means(episode_steps, returns)
    widths = np.diff(np.concatenate([[0], steps]))
    return float((widths * means).sum() / widths.sum())


@dataclass
class Run:
    path: Path
    config: Config
    episode_steps: np.ndarray  # env step at which each episode ended
    returns: np.ndarray  # its episodic return
    steps_reached: int

    @property
    def env(self) -> str:
        return self.config.env.id

    @property
    def core(self) -> str:
        return self.config.core.name

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def protocol(self) -> str:
        """The named training protocol (config.json's "protocol"; "default" for runs from before it existed)."""
        return getattr(self.config, "protocol", None) or DEFAULT_PROTOCOL

    @property
    def final_return(self) -> float:
        return float(np.mean(self.returns[-FINAL_EPISODES:]))

    @property
    def is_popgym(self) -> bool:
        return is_popgym_id(self.env)

    @property
    def mmer(self) -> float:
        """Max-mean episodic return (POPGym's score), see max_mean_episodic_return; for any env."""
        return max_mean_episodic_return(self.episode_steps, self.returns)

    @property
    def auc(self) -> float:
        """The area under the learning curve per env step (area_under_curve); for any env."""
        return area_under_curve(self.episode_steps, self.returns)

    def env_settings(self) -> dict:
        env = self.config.to_dict()["env"]
        return {key: value for key, value in env.items() if key not in NOT_PROTOCOL}


class NoEpisodes(UserError):
    """A run folder that holds no finished episode yet (a run just started, or one that never logged)."""


def load_run(path: Path | str) -> Run:
    from brims_rl.compare.tbdata import event_files, read_run_scalars

    path = Path(path)
    if not path.exists():
        raise UserError(f"run folder {path} not found")
    if not path.is_dir():
        raise UserError(f"{path} is not a run folder")
    folder = RunFolder(path)
    if not folder.config.is_file():
        raise UserError(f"{path} is not a brims-rl run folder (no {folder.config.name})")
    config = Config.load(folder.config)
    scalars = read_run_scalars(path)
    returns = scalars.get(RETURN_TAG)
    if returns is None or len(returns) == 0:
        if not event_files(path):
            why = "no TensorBoard event files"
        else:
            why = "no finished episode logged yet" if scalars else "no scalars logged yet"
        raise NoEpisodes(f"run {path} has no {RETURN_TAG} data ({why})")
    steps_reached = max(int(series.steps[-1]) for series in scalars.values() if len(series))
    return Run(path, config, returns.steps, returns.values, steps_reached)


def load_runs(paths: list[str | Path]) -> list[Run]:
    """The runs of these folders (a folder given twice counts once). Runs without a finished episode are left out
    with one warning, and of runs that share a protocol, env, core and seed the one that trained furthest is kept,
    with one warning naming them (see one_run_per_seed); UserError when no run is left."""
    runs, empty, seen = [], [], set()
    reasons: list[str] = []
    for path in paths:
        key = Path(path).resolve()
        if key in seen:
            continue
        seen.add(key)
        try:
            runs.append(load_run(path))
        except NoEpisodes as exc:
            empty.append(str(path))
            reasons.append(str(exc))
    if empty and runs:
        warn(f"left out {len(empty)} run{'s' if len(empty) > 1 else ''} with no finished episode yet: "
             f"{', '.join(empty)}")
    if not runs:
        raise UserError(f"no run to compare has a finished episode yet: {'; '.join(reasons)}" if empty
                        else "no run folders given")
    return one_run_per_seed(runs)


def one_run_per_seed(runs: list[Run]) -> list[Run]:
    """Runs that share protocol, env, core and seed would count one seed twice: keep the one that reached the most
    env steps (the first given on a tie) and warn once, naming the runs that share each seed."""
    kept: dict[tuple, Run] = {}
    shared: dict[tuple, list[Run]] = {}
    for r in runs:
        key = (r.protocol, r.env, r.core, r.seed)
        shared.setdefault(key, []).append(r)
        if key not in kept or r.steps_reached > kept[key].steps_reached:
            kept[key] = r
    described = []
    for (protocol, env, core, seed), group in shared.items():
        if len(group) > 1:
            best = kept[(protocol, env, core, seed)]
            where = f"{env} / {core} / seed {seed}" + ("" if protocol == DEFAULT_PROTOCOL else f" / {protocol}")
            described.append(f"{' and '.join(str(r.path) for r in group)} are all {where}: kept {best.path} "
                             f"({best.steps_reached:,} steps)")
    if described:
        warn(f"runs share a seed, so only the furthest of each counts: {'; '.join(described)}")
    return [r for r in runs if kept[(r.protocol, r.env, r.core, r.seed)] is r]


@dataclass
class Cell:
    env: str
    core: str
    runs: list[Run]  # sorted by seed

    @property
    def finals(self) -> np.ndarray:
        return np.array([r.final_return for r in self.runs])

    @property
    def mean(self) -> float:
        return float(np.mean(self.finals))

    @property
    def std(self) -> float:
        return seed_std(self.finals)

    @property
    def mmers(self) -> np.ndarray:
        return np.array([r.mmer for r in self.runs])

    @property
    def mmer_mean(self) -> float:
        """POPGym's MMER of the cell: the mean over seeds of each run's MMER."""
        return float(np.mean(self.mmers))

    @property
    def mmer_std(self) -> float:
        return seed_std(self.mmers)

    @property
    def normalised_mmer_mean(self) -> float:
        """POPGym's normalised MMER of the cell (0.5 MMER + 0.5), mean over seeds."""
        return normalised_mmer(self.mmer_mean)

    @property
    def normalised_mmer_std(self) -> float:
        return 0.5 * self.mmer_std

    @property
    def aucs(self) -> np.ndarray:
        return np.array([r.auc for r in self.runs])

    @property
    def auc_mean(self) -> float:
        return float(np.mean(self.aucs))

    @property
    def auc_std(self) -> float:
        return seed_std(self.aucs)

    @property
    def is_popgym(self) -> bool:
        return is_popgym_id(self.env)


@dataclass
class Group:
    """The runs of one protocol: rows (envs) and columns (cores) in order of first appearance, and the cells."""

    protocol: str
    envs: list[str]
    cores: list[str]
    cells: dict[tuple[str, str], Cell]

    @property
    def runs(self) -> list[Run]:
        return [r for cell in self.cells.values() for r in cell.runs]

    @property
    def popgym_envs(self) -> list[str]:
        return [env for env in self.envs if is_popgym_id(env)]


def group_by_protocol(runs: list[Run]) -> list[Group]:
    """One group per protocol, in order of first appearance: runs of different protocols never share a cell."""
    by_protocol: dict[str, list[Run]] = {}
    for r in runs:
        by_protocol.setdefault(r.protocol, []).append(r)
    return [Group(name, *group_runs(members)) for name, members in by_protocol.items()]


def group_runs(runs: list[Run]) -> tuple[list[str], list[str], dict[tuple[str, str], Cell]]:
    """Rows (envs) and columns (cores) in order of first appearance, and the cells; refuses runs that don't group."""
    envs: dict[str, Run] = {}
    cores: dict[str, Run] = {}
    cells: dict[tuple[str, str], Cell] = {}
    for r in runs:
        first = envs.setdefault(r.env, r)
        if r.env_settings() != first.env_settings():
            a, b = first.env_settings(), r.env_settings()
            diff = ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
            raise UserError(
                f"runs {first.path} and {r.path} are both {r.env} but with different env settings ({diff}); "
                "they cannot be grouped"
            )
        first = cores.setdefault(r.core, r)
        if r.config.core.options != first.config.core.options:
            raise UserError(
                f"runs {first.path} and {r.path} both use core {r.core} but with different core options "
                f"({first.config.core.options} vs {r.config.core.options}); they cannot be grouped"
            )
        cell = cells.setdefault((r.env, r.core), Cell(r.env, r.core, []))
        for other in cell.runs:
            if other.seed == r.seed:
                raise UserError(
                    f"runs {other.path} and {r.path} are both {r.env} / {r.core} / seed {r.seed}; give each seed once"
                )
        cell.runs.append(r)
    for cell in cells.values():
        cell.runs.sort(key=lambda r: r.seed)
    return list(envs), list(cores), cells
