"""Aggregates over games (`compare`'s rliable part): known answers, intervals, probability of improvement,
human normalisation by the shipped table, and what the report says when something cannot be computed."""

from __future__ import annotations

import csv
import importlib.resources

import numpy as np
import pytest

from brims_rl.cli import main
from brims_rl.compare import aggregates, reference
from brims_rl.compare.runs import Run, group_by_protocol
from brims_rl.config import Config, CoreConfig, EnvConfig

REPS = 300


def fake_run(env: str, core: str, seed: int, final: float) -> Run:
    """An in-memory run whose final return is exactly `final`."""
    config = Config(env=EnvConfig(id=env), core=CoreConfig(name=core), seed=seed)
    return Run(path=None, config=config, episode_steps=np.array([100]), returns=np.array([final]), steps_reached=100)


def raw(env: str, normalised: float) -> float:
    """The raw score of a human-normalised score in an Atari game, by the shipped table."""
    _, random, human = reference.reference_for(env)
    return random + normalised * (human - random)


def make_group(scores: dict[str, dict[str, list[float]]], normalised: bool = True):
    """scores[core][env] = per-seed human-normalised scores (raw returns when not normalised)."""
    runs = [fake_run(env, core, seed, raw(env, s) if normalised else s)
            for core, per_env in scores.items() for env, values in per_env.items()
            for seed, s in enumerate(values, start=1)]
    (group,) = group_by_protocol(runs)
    return group


# ---- the shipped reference table -------------------------------------------------------------------------------
def test_the_shipped_table_has_57_games_and_normalises_two_games():
    text = importlib.resources.files("brims_rl.compare").joinpath("atari57_scores.csv").read_text()
    assert "Agent57" in text  # the source is cited in the file
    rows = list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))
    assert len(rows) == 57 and len(reference.reference_scores()) == 57
    assert all(float(r["human"]) > float(r["random"]) for r in rows)
    # Pong: random -20.7, human 14.6; Breakout: random 1.7, human 30.5
    assert reference.human_normalised("Pong", -20.7) == 0.0
    assert reference.human_normalised("Pong", 14.6) == pytest.approx(1.0, rel=1e-12)
    assert reference.human_normalised("Pong", 21.0) == pytest.approx((21.0 + 20.7) / 35.3, rel=1e-12)
    assert reference.human_normalised("Breakout", 400.0) == pytest.approx((400.0 - 1.7) / 28.8, rel=1e-12)
    for name in ("ALE/Breakout-v5", "Breakout-v5", "BreakoutNoFrameskip-v4", "breakout"):
        assert reference.reference_for(name) == ("Breakout", 1.7, 30.5)
    assert reference.reference_for("MsPacman") == ("MsPacman", 307.3, 6951.6)
    for name in ("CartPole-v1", "Pong-v4", "Adventure"):  # not an Atari-57 game under this library's protocol
        assert reference.reference_for(name) is None
    with pytest.raises(KeyError):
        reference.human_normalised("CartPole-v1", 1.0)


# ---- known answers ---------------------------------------------------------------------------------------------
KNOWN = {"Pong": [0.0, 1.0, 2.0, 10.0], "Breakout": [4.0, 5.0, 6.0, 100.0], "MsPacman": [1.0, 1.0, 1.0, 1.0]}


def test_iqm_median_mean_and_optimality_gap_of_a_known_set():
    agg = aggregates.compute(make_group({"lstm": KNOWN}), reps=REPS)
    assert agg.normalised and agg.games == ["Pong", "Breakout", "MsPacman"]
    m = agg.metrics["lstm"]
    # 12 scores sorted: 0 1 1 1 1 1 2 4 5 6 10 100; the middle 6 are 1 1 1 2 4 5
    assert m["IQM"].value == pytest.approx(14 / 6, rel=1e-9)
    # per-game means 3.25, 28.75, 1.0
    assert m["Median"].value == pytest.approx(3.25, rel=1e-9)
    assert m["Mean"].value == pytest.approx(11.0, rel=1e-9)
    # scores above 1 count as 1: only Pong's 0.0 falls short, by 1, over 12 runs x games
    assert m["Optimality gap"].value == pytest.approx(1 / 12, rel=1e-9)
    for estimate in m.values():
        assert estimate.low <= estimate.value <= estimate.high  # the interval contains the point estimate
    assert m["Mean"].high > m["Mean"].low  # runs differ, so the interval has width
    assert m["IQM"].low >= 0.0 and m["IQM"].high <= 100.0


def test_bootstrap_is_reproducible_and_leaves_numpy_global_rng_alone():
    group = make_group({"lstm": KNOWN, "gru": {env: [s + 0.5 for s in v] for env, v in KNOWN.items()}})
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    first = aggregates.compute(group, reps=REPS)
    assert np.random.random() == before  # the global stream continues as if compute had not run
    second = aggregates.compute(group, reps=REPS)
    assert first.metrics == second.metrics and first.improvement == second.improvement
    # one core's intervals do not depend on which other cores are compared
    alone = aggregates.compute(make_group({"lstm": KNOWN}), reps=REPS)
    assert alone.metrics["lstm"] == first.metrics["lstm"]


def test_probability_of_improvement_is_one_when_one_core_dominates():
    weak = {"Pong": [0.1, 0.2, 0.3], "Breakout": [0.0, 0.5, 0.4]}
    strong = {"Pong": [0.31, 0.4, 0.9], "Breakout": [0.6, 0.7, 2.0]}  # every run beats every weak run of its game
    agg = aggregates.compute(make_group({"weak": weak, "strong": strong}), reps=REPS)
    ((x, y, p),) = agg.improvement
    assert (x, y) == ("weak", "strong")
    assert (p.value, p.low, p.high) == (0.0, 0.0, 0.0)
    agg = aggregates.compute(make_group({"strong": strong, "weak": weak}), reps=REPS)
    ((x, y, p),) = agg.improvement
    assert (x, y, p.value, p.low, p.high) == ("strong", "weak", 1.0, 1.0, 1.0)


def test_probability_of_improvement_equals_rliables_with_ties():
    from rliable import metrics

    rng = np.random.default_rng(7)
    for _ in range(20):
        x = rng.integers(0, 4, size=(rng.integers(1, 5), 3)).astype(float)  # small integers: many ties
        y = rng.integers(0, 4, size=(rng.integers(1, 5), 3)).astype(float)
        assert aggregates.probability_of_improvement(x, y) == pytest.approx(
            metrics.probability_of_improvement(x, y), abs=1e-12)
        assert aggregates.probability_of_improvement(x, y) + aggregates.probability_of_improvement(y, x) == \
            pytest.approx(1.0, abs=1e-12)
    same = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert aggregates.probability_of_improvement(same, same) == 0.5


def test_performance_profile_counts_runs_above_each_threshold():
    scores = np.array([[0.0, 2.0], [1.0, 3.0]])
    assert aggregates.score_profile(scores, np.array([-1.0, 0.0, 0.5, 2.0, 3.0])).tolist() == [1.0, 0.75, 0.75, 0.25,
                                                                                                 0.0]


# ---- what cannot be computed -----------------------------------------------------------------------------------
def test_one_seed_gives_point_estimates_without_intervals():
    agg = aggregates.compute(make_group({"lstm": {"Pong": [0.5], "Breakout": [1.5]},
                                         "gru": {"Pong": [0.2], "Breakout": [0.1]}}), reps=REPS)
    assert agg.metrics["lstm"]["Mean"].value == pytest.approx(1.0, rel=1e-9)
    assert all(e.low is None and e.high is None for m in agg.metrics.values() for e in m.values())
    ((_, _, p),) = agg.improvement
    assert p.value == 1.0 and p.low is None
    assert any("no confidence intervals" in note and "2 seeds" in note for note in agg.notes)


def test_one_game_one_core_and_raw_scores_are_explained():
    agg = aggregates.compute(make_group({"lstm": {"CartPole-v1": [10.0, 30.0, 20.0]}}, normalised=False), reps=REPS)
    assert not agg.normalised and agg.metric_names == ["IQM", "Median", "Mean"]
    assert agg.metrics["lstm"]["Median"].value == pytest.approx(20.0)
    notes = " | ".join(agg.notes)
    assert "not normalised" in notes and "CartPole-v1" in notes and "optimality gap" in notes
    assert "only one game" in notes
    assert "no probability of improvement" in notes and agg.improvement == []


def test_games_not_played_by_every_core_and_unequal_seeds_are_left_out_and_said():
    group = make_group({"lstm": {"Pong": [0.1, 0.2, 0.3], "Breakout": [0.4, 0.5]},
                        "gru": {"Pong": [0.3, 0.1]}})
    agg = aggregates.compute(group, reps=REPS)
    assert agg.games == ["Pong"]
    assert agg.scores["lstm"].shape == (3, 1) and agg.scores["gru"].shape == (2, 1)
    assert any("Breakout" in note and "not played by every core" in note for note in agg.notes)
    group = make_group({"lstm": {"Pong": [0.1, 0.2, 0.3], "Breakout": [0.4, 0.5]}})
    agg = aggregates.compute(group, reps=REPS)
    assert agg.scores["lstm"].shape == (2, 2)  # the lowest two seeds of Pong
    assert agg.scores["lstm"][:, 0] == pytest.approx([0.1, 0.2], rel=1e-9)
    assert any("1 run(s) left out" in note for note in agg.notes)


# ---- through the command ---------------------------------------------------------------------------------------
def test_compare_writes_the_aggregate_table_csv_and_both_figures(tmp_path, capsys):
    from test_compare import make_run, md_tables

    runs = []
    finals = {("Pong", "lstm"): [-20.0, -19.0], ("Pong", "gru"): [-10.0, -5.0],
              ("Breakout", "lstm"): [2.0, 3.0], ("Breakout", "gru"): [10.0, 12.0]}
    for (env, core), values in finals.items():
        for seed, value in enumerate(values, start=1):
            runs.append(make_run(tmp_path / "runs" / f"{env}-{core}-{seed}", env, core, seed, [100, 200],
                                 [value, value]))
    out = tmp_path / "report"
    assert main(["compare", *map(str, runs), "--out", str(out), "--bootstrap-reps", str(REPS)]) == 0
    stdout = capsys.readouterr().out
    text = (out / "compare.md").read_text()
    assert text.startswith("## Protocol: default\n")
    per_game, aggregate, improvement = md_tables(out / "compare.md")
    assert per_game[0] == ["Env", "lstm", "gru"] and per_game[2][0] == "Pong"  # the per-game table comes first
    assert aggregate[0] == ["Core", "Runs per game", "IQM", "Median", "Mean", "Optimality gap"]
    norm = {key: [reference.human_normalised(key[0], v) for v in values] for key, values in finals.items()}
    gru_mean = np.mean([np.mean(norm["Pong", "gru"]), np.mean(norm["Breakout", "gru"])])
    gru_row = dict(zip(aggregate[0], aggregate[3]))
    assert gru_row["Core"] == "gru" and gru_row["Runs per game"] == "2"
    assert gru_row["Mean"].startswith(f"{gru_mean:.3f} [")
    assert improvement[2] == ["lstm", "gru", "0.000 [0.000, 0.000]"]  # gru wins every pair of runs
    assert "human-normalised" in text and "| lstm | gru |" in stdout
    with open(out / "compare_aggregates.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    mean_row = next(r for r in rows if r["core"] == "gru" and r["metric"] == "Mean")
    assert float(mean_row["estimate"]) == pytest.approx(gru_mean, rel=1e-6)  # float32 event values
    assert float(mean_row["ci_low"]) <= float(mean_row["estimate"]) <= float(mean_row["ci_high"])
    assert mean_row["games"] == "Pong;Breakout" and mean_row["bootstrap_reps"] == str(REPS)
    poi = next(r for r in rows if r["metric"] == "P(X > Y)")
    assert (poi["core"], poi["other"], float(poi["estimate"])) == ("lstm", "gru", 0.0)
    for name in ("compare.png", "compare_intervals.png", "compare_profiles.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = (out / "compare_aggregates.csv").read_text()
    assert main(["compare", *map(str, runs), "--out", str(out), "--bootstrap-reps", str(REPS)]) == 0
    assert (out / "compare_aggregates.csv").read_text() == first  # a fixed bootstrap seed: same numbers


def test_compare_of_one_seed_says_what_it_cannot_compute(tmp_path, capsys):
    from test_compare import make_run

    runs = [make_run(tmp_path / f"r{i}", env, "lstm", 1, [100], [5.0]) for i, env in enumerate(["Pong", "Breakout"])]
    assert main(["compare", *map(str, runs), "--out", str(tmp_path / "o"), "--bootstrap-reps", str(REPS)]) == 0
    text = (tmp_path / "o" / "compare.md").read_text()
    assert "no confidence intervals for lstm" in text and "no probability of improvement" in text
    assert (tmp_path / "o" / "compare_intervals.png").is_file()
