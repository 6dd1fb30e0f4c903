"""Aggregate scores over games, the way Agarwal et al. (NeurIPS 2021) recommend, computed with their `rliable`.

Per core, over the games of one protocol that every core has played: IQM (the mean of the middle 50% of all runs x
games), median and mean of the per-game means, and the optimality gap (how far the scores stay below 1 = human,
scores above it counting as 1), each with a 95% stratified-bootstrap interval (runs resampled with replacement
within each game), and the probability of improvement P(X > Y) for every pair of cores (per game the probability
that a run of X beats a run of Y, ties counting half, averaged over games). Scores are the runs' final returns,
human-normalised when every game has reference scores (Atari), raw otherwise (then without an optimality gap, whose
threshold 1 means "human"). POPGym's returns lie in [-1, 1] already, 1 being the best a policy can get: a group of
POPGym envs only is aggregated on its raw returns with the optimality gap (threshold 1 = the best return), and, with
score="mmer", on each run's MMER (POPGym's max-mean episodic return, runs.max_mean_episodic_return) instead of its
final return.

The bootstrap draws from numpy's global generator (as rliable does); it is seeded with BOOTSTRAP_SEED before every
estimate and restored afterwards, so the numbers are reproducible and one core's interval does not depend on which
other cores are compared.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field

import numpy as np

from brims_rl.compare.reference import human_normalised, reference_for
from brims_rl.compare.runs import Group
from brims_rl.environments.registry import is_popgym_id

DEFAULT_REPS = 2000  # bootstrap resamples per estimate
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
PROFILE_POINTS = 101


# Aggregates.kind -> (table title, the `scores` column of compare_aggregates.csv, figure axis label)
SCORE_LABELS = {
    "mmer": ("POPGym MMER (max-mean episodic return, in [-1, 1])", "popgym-mmer", "MMER"),
    "popgym": ("POPGym final returns (raw, in [-1, 1])", "popgym-return", "raw return"),
    "human": ("human-normalised scores", "human-normalised", "human-normalised score"),
    "raw": ("raw returns (not normalised)", "raw", "raw return"),
}


@dataclass
class Estimate:
    value: float
    low: float | None = None  # None: no interval (a single run per game)
    high: float | None = None


@dataclass
class Aggregates:
    protocol: str
    normalised: bool  # human-normalised scores, else raw returns
    cores: list[str]
    games: list[str]  # the games every core has played, in table order
    scores: dict[str, np.ndarray]  # core -> [runs, games]
    metrics: dict[str, dict[str, Estimate]] = field(default_factory=dict)  # core -> metric -> estimate
    improvement: list[tuple[str, str, Estimate]] = field(default_factory=list)  # (X, Y, P(X > Y))
    taus: np.ndarray | None = None  # performance-profile thresholds
    profiles: dict[str, tuple[np.ndarray, np.ndarray | None, np.ndarray | None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what could not be computed, and why
    reps: int = DEFAULT_REPS
    bounded: bool = False  # POPGym returns in [-1, 1], 1 = the best return (raw, but with an optimality gap)
    score: str = "final"  # "final": final returns; "mmer": POPGym's max-mean episodic return

    @property
    def metric_names(self) -> list[str]:
        return ["IQM", "Median", "Mean"] + (["Optimality gap"] if self.normalised or self.bounded else [])

    @property
    def kind(self) -> str:
        """Which scores these are: "mmer", "popgym" (final returns in [-1, 1]), "human" (normalised) or "raw"."""
        if self.score == "mmer":
            return "mmer"
        return "popgym" if self.bounded else "human" if self.normalised else "raw"

    @property
    def title(self) -> str:
        return SCORE_LABELS[self.kind][0]

    @property
    def scores_name(self) -> str:
        """The `scores` column of compare_aggregates.csv."""
        return SCORE_LABELS[self.kind][1]

    @property
    def axis_label(self) -> str:
        return SCORE_LABELS[self.kind][2]

    @property
    def has_intervals(self) -> bool:
        return all(scores.shape[0] > 1 for scores in self.scores.values())


@contextlib.contextmanager
def seeded_global_rng(seed: int):
    """rliable's bootstrap samples with np.random; seed it for reproducible intervals, then restore its state."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) averaged over games, ties counting half; x [runs_x, games], y [runs_y, games].

    The same statistic as rliable's `metrics.probability_of_improvement` (Mann-Whitney U / (runs_x * runs_y) per
    game), computed for all games at once instead of one scipy call per game, which keeps the bootstrap fast.
    """
    pairs_x, pairs_y = x[:, None, :], y[None, :, :]
    per_game = (pairs_x > pairs_y).mean((0, 1)) + 0.5 * (pairs_x == pairs_y).mean((0, 1))
    return float(per_game.mean())


def _aggregate_function(normalised: bool):
    from rliable import metrics

    functions = [metrics.aggregate_iqm, metrics.aggregate_median, metrics.aggregate_mean]
    if normalised:
        functions.append(metrics.aggregate_optimality_gap)
    return lambda scores: np.array([f(scores) for f in functions])


def score_matrices(group: Group, games: list[str], normalised: bool,
                   score: str = "final") -> tuple[dict[str, np.ndarray], list[str]]:
    """Per core a [runs, games] matrix of final scores (score="mmer": MMERs), and notes on runs left out to make it
    rectangular.

    A core with unequal seed counts over the games keeps, per game, its first runs by seed (as many as its
    game with the fewest runs has).
    """
    matrices, notes = {}, []
    for core in group.cores:
        cells = [group.cells[game, core] for game in games]
        runs = min(len(cell.runs) for cell in cells)
        dropped = sum(len(cell.runs) - runs for cell in cells)
        if dropped:
            notes.append(f"{core}: {dropped} run(s) left out so that every game has {runs} run(s) (the lowest seeds)")
        columns = []
        for game, cell in zip(games, cells):
            finals = (cell.mmers if score == "mmer" else cell.finals)[:runs]
            columns.append([human_normalised(game, x) for x in finals] if normalised else finals)
        matrices[core] = np.array(columns, dtype=np.float64).T
    return matrices, notes


def is_popgym_group(group: Group) -> bool:
    """Every env of the group is a POPGym task (returns in [-1, 1]): MMER aggregates too, and an optimality gap."""
    return bool(group.envs) and all(is_popgym_id(env) for env in group.envs)


def compute(group: Group, reps: int = DEFAULT_REPS, seed: int = BOOTSTRAP_SEED, score: str = "final") -> Aggregates:
    """The aggregates of one protocol's runs; what cannot be computed is left out and explained in `notes`.

    score "final" aggregates final returns; "mmer" (POPGym groups) each run's MMER."""
    from rliable import library as rly

    if score not in ("final", "mmer"):
        raise ValueError(f"score must be 'final' or 'mmer', got {score!r}")
    games = [env for env in group.envs if all((env, core) in group.cells for core in group.cores)]
    normalised = bool(group.envs) and all(reference_for(env) is not None for env in group.envs)
    bounded = is_popgym_group(group)
    result = Aggregates(group.protocol, normalised, list(group.cores), games, {}, reps=reps, bounded=bounded,
                        score=score)
    notes = result.notes
    if bounded:
        notes.append("POPGym returns are in [-1, 1] already (1 = the best return): aggregated as they are, with the "
                     "optimality gap measured from 1")
    elif not normalised:
        without = [env for env in group.envs if reference_for(env) is None]
        notes.append(f"raw returns, not normalised: no Atari reference scores for {', '.join(without)}; "
                     "no optimality gap (its threshold 1 means human-level)")
    left_out = [env for env in group.envs if env not in games]
    if left_out:
        notes.append(f"left out of the aggregates, not played by every core: {', '.join(left_out)}")
    if not games:
        notes.append("no aggregates: no game has runs of every core")
        return result
    if len(games) == 1:
        notes.append(f"only one game ({games[0]}): the aggregates are that game's scores, not a summary over games")
    result.scores, dropped = score_matrices(group, games, normalised, score)
    notes.extend(dropped)
    single = [core for core, scores in result.scores.items() if scores.shape[0] == 1]
    if single:
        notes.append(f"no confidence intervals for {', '.join(single)}: the bootstrap resamples runs within each "
                     "game and needs at least 2 seeds per game")

    function = _aggregate_function(normalised or bounded)
    for core, scores in result.scores.items():
        values = function(scores)
        low = high = [None] * len(values)
        if scores.shape[0] > 1:
            with seeded_global_rng(seed):
                _, intervals = rly.get_interval_estimates({core: scores}, function, reps=reps,
                                                          confidence_interval_size=CONFIDENCE)
            low, high = intervals[core]
        result.metrics[core] = {name: Estimate(float(v), _float(lo), _float(hi))
                                for name, v, lo, hi in zip(result.metric_names, values, low, high)}

    if len(result.cores) < 2:
        notes.append("no probability of improvement: it compares two cores and there is one")
    for x, y in itertools.combinations(result.cores, 2):
        sx, sy = result.scores[x], result.scores[y]
        estimate = Estimate(probability_of_improvement(sx, sy))
        if sx.shape[0] > 1 and sy.shape[0] > 1:
            with seeded_global_rng(seed):
                _, intervals = rly.get_interval_estimates({"pair": (sx, sy)}, probability_of_improvement, reps=reps,
                                                          confidence_interval_size=CONFIDENCE)
            estimate.low, estimate.high = (float(v) for v in np.ravel(intervals["pair"]))
        result.improvement.append((x, y, estimate))

    everything = np.concatenate([s.ravel() for s in result.scores.values()])
    lo, hi = min(0.0, float(everything.min())), float(everything.max())
    if normalised or bounded:
        hi = max(hi, 1.0)
    result.taus = np.linspace(lo, hi if hi > lo else lo + 1.0, PROFILE_POINTS)
    for core, scores in result.scores.items():
        profile = score_profile(scores, result.taus)
        low = high = None
        if scores.shape[0] > 1:
            with seeded_global_rng(seed):
                _, intervals = rly.get_interval_estimates(
                    {core: scores}, lambda s: score_profile(s, result.taus), reps=reps,
                    confidence_interval_size=CONFIDENCE)
            low, high = intervals[core]
        result.profiles[core] = (profile, low, high)
    return result


def score_profile(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Performance profile: the fraction of all runs x games whose score exceeds each threshold tau."""
    return (scores.reshape(-1, 1) > taus.reshape(1, -1)).mean(0)


def _float(value) -> float | None:
    return None if value is None else float(value)
