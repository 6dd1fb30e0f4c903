"""Text of compare.md and the CSV files: the Table-4-style per-game table and the aggregate table."""

from __future__ import annotations

import csv
import io

from brims_rl.compare.aggregates import Aggregates, Estimate
from brims_rl.compare.runs import MMER_MIN_EPISODES, Group
from brims_rl.run_folder import FINAL_EPISODES, RETURN_TAG

CSV_COLUMNS = (
    "protocol",
    "env",
    "core",
    "mean",
    "std",
    "num_seeds",
    "seeds",
    "final_returns",
    "steps_reached_min",
    "steps_reached",
    "episodes",
    "run_dirs",
    "mmer",
    "mmer_std",
    "mmers",
    "mmer_normalised",
    "auc",
    "auc_std",
    "aucs",
)
AGGREGATE_CSV_COLUMNS = ("protocol", "scores", "metric", "core", "other", "estimate", "ci_low", "ci_high", "games",
                         "runs_per_game", "bootstrap_reps")


def format_number(x: float, scale: float) -> str:
    """`x` in the style of a cell whose mean has magnitude `scale`."""
    if scale >= 1e6:
        millions = x / 1e6
        decimals = 2  # a small std keeps a significant digit: 0.0042M rather than 0.00M
        while decimals < 6 and 0 < abs(millions) < 0.5 * 10**-decimals:
            decimals += 1
        return f"{millions:.{decimals}f}M"
    return f"{x:.0f}" if scale >= 100 else f"{x:.1f}"


def format_cell(mean: float, std: float) -> str:
    """Like the paper: whole numbers from 100 up, one decimal below, millions as 3.28M ± 0.20M."""
    scale = abs(mean)
    return f"{format_number(mean, scale)} ± {format_number(std, scale)}"


def _steps_text(steps: int) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if steps >= size:
            return f"{steps / size:.3g}{unit}"
    return str(steps)


def format_bounded(mean: float, std: float) -> str:
    """A cell of POPGym returns or MMER (in [-1, 1]): three decimals."""
    return f"{mean:.3f} ± {std:.3f}"


def render_table(group: Group) -> str:
    """The per-game table (rows: envs, columns: cores, cells: mean ± std over seeds) and its notes.

    When the group has POPGym envs, each core gets a second column, `<core> MMER` (POPGym's max-mean episodic return,
    mean ± std over seeds), filled for the POPGym rows; POPGym cells use three decimals (their returns lie in [-1, 1]).
    """
    envs, cores, cells = group.envs, group.cores, group.cells
    popgym = bool(group.popgym_envs)
    headers = [name for c in cores for name in ((c, f"{c} MMER") if popgym else (c,))]
    lines = [
        "| Env | " + " | ".join(headers) + " |",
        "|---|" + "---:|" * len(headers),
    ]
    for env in envs:
        row = []
        for c in cores:
            cell = cells.get((env, c))
            if cell is None:
                row += ["—", "—"] if popgym else ["—"]
            elif cell.is_popgym:
                row += [format_bounded(cell.mean, cell.std), format_bounded(cell.mmer_mean, cell.mmer_std)]
            else:
                row += [format_cell(cell.mean, cell.std)] + (["—"] if popgym else [])
        lines.append(f"| {env} | " + " | ".join(row) + " |")
    all_runs = group.runs
    counts = sorted({len(cell.runs) for cell in cells.values()})
    seeds = sorted({r.seed for r in all_runs})
    steps = sorted(r.steps_reached for r in all_runs)
    seeds_text = (
        f"{counts[0]} per cell ({', '.join(map(str, seeds))})"
        if len(counts) == 1
        else f"{counts[0]} to {counts[-1]} per cell (see compare.csv)"
    )
    steps_text = _steps_text(steps[0]) if steps[0] == steps[-1] else f"{_steps_text(steps[0])} to {_steps_text(steps[-1])}"
    notes = [
        "",
        f"Final return = mean of a run's last {FINAL_EPISODES} episodes of `{RETURN_TAG}`; "
        "cell = mean ± std over seeds (sample std, n-1; 0 with one seed).",
    ]
    if popgym:
        notes.append(
            "MMER (POPGym's score, POPGym envs only) = per run the maximum over PPO updates of the mean episodic "
            f"return of the update's episodes (with fewer than {MMER_MIN_EPISODES}, the latest "
            f"{MMER_MIN_EPISODES} episodes up to it); cell = mean ± std over seeds. POPGym returns lie in [-1, 1].")
    notes.append(f"Seeds: {seeds_text}. Env steps reached: {steps_text}.")
    return "\n".join(lines + notes) + "\n"


def render_popgym_scores(group: Group) -> str:
    """For the POPGym rows of a group: per core POPGym's normalised MMER (0.5 MMER + 0.5, in [0, 1]) and the area under
    the learning curve (the mean over training of the per-update mean return, weighted by env steps), each mean ± std
    over seeds; empty when the group has no POPGym env."""
    envs = group.popgym_envs
    if not envs:
        return ""
    headers = [name for c in group.cores for name in (f"{c} norm. MMER", f"{c} AUC")]
    lines = ["| Env | " + " | ".join(headers) + " |", "|---|" + "---:|" * len(headers)]
    for env in envs:
        row = []
        for c in group.cores:
            cell = group.cells.get((env, c))
            row += ["—", "—"] if cell is None else [format_bounded(cell.normalised_mmer_mean, cell.normalised_mmer_std),
                                                    format_bounded(cell.auc_mean, cell.auc_std)]
        lines.append(f"| {env} | " + " | ".join(row) + " |")
    lines += ["", "Normalised MMER = 0.5 MMER + 0.5 (POPGym's score on [0, 1]). AUC = the area under a run's learning "
                  "curve per env step: the mean over training of the per-update mean episodic return (the MMER "
                  "windows), each update weighted by its env steps; it rewards learning early. Cell = mean ± std "
                  "over seeds."]
    return "\n".join(lines) + "\n"


def _estimate_text(estimate: Estimate, normalised: bool, scale: float) -> str:
    """`normalised`: scores on a unit scale (human-normalised, POPGym returns or MMER), three decimals."""

    def number(x: float) -> str:
        return f"{x:.3f}" if normalised else format_number(x, scale)

    if estimate.low is None:
        return number(estimate.value)
    return f"{number(estimate.value)} [{number(estimate.low)}, {number(estimate.high)}]"


def render_aggregates(agg: Aggregates) -> str:
    """The aggregate table (per core: IQM, median, mean, optimality gap with 95% CIs), the probability of
    improvement for every pair of cores, and notes on what could not be computed."""
    lines = [f"### Aggregates over {len(agg.games)} game{'s' if len(agg.games) != 1 else ''}: {agg.title}", ""]
    unit = agg.normalised or agg.bounded
    if agg.metrics:
        gap = {True: "; optimality gap = mean amount by which scores fall short of 1 (human), lower is better.",
               False: "; optimality gap = mean amount by which scores fall short of 1 (POPGym's best return), "
                      "lower is better."}
        lines += [
            f"Per core over {', '.join(agg.games)}: point estimate [95% stratified-bootstrap CI] "
            f"({agg.reps} resamples of the runs within each game; rliable). IQM = mean of the middle 50% of all "
            "runs x games; median and mean of the per-game means"
            + (gap[agg.normalised] if unit else "."),
            "",
            "| Core | Runs per game | " + " | ".join(agg.metric_names) + " |",
            "|---|---:|" + "---:|" * len(agg.metric_names),
        ]
        for core in agg.cores:
            scale = float(abs(agg.scores[core]).mean())
            cells = [_estimate_text(agg.metrics[core][name], unit, scale) for name in agg.metric_names]
            lines.append(f"| {core} | {agg.scores[core].shape[0]} | " + " | ".join(cells) + " |")
        lines.append("")
    if agg.improvement:
        lines += [
            "Probability of improvement P(X > Y): per game the chance that a run of X scores higher than a run of Y "
            "(ties count half), averaged over games [95% CI]; P(Y > X) = 1 - P(X > Y).",
            "",
            "| X | Y | P(X > Y) |",
            "|---|---|---:|",
        ]
        for x, y, estimate in agg.improvement:
            lines.append(f"| {x} | {y} | {_estimate_text(estimate, True, 1.0)} |")
        lines.append("")
    if agg.notes:
        lines += ["Not computed or left out:", ""] + [f"- {note}" for note in agg.notes] + [""]
    return "\n".join(lines)


def render_csv(groups: list[Group]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for group in groups:
        for env in group.envs:
            for core in group.cores:
                cell = group.cells.get((env, core))
                if cell is None:
                    continue
                writer.writerow(
                    [
                        group.protocol,
                        env,
                        core,
                        repr(cell.mean),
                        repr(cell.std),
                        len(cell.runs),
                        ";".join(str(r.seed) for r in cell.runs),
                        ";".join(repr(r.final_return) for r in cell.runs),
                        min(r.steps_reached for r in cell.runs),
                        ";".join(str(r.steps_reached) for r in cell.runs),
                        ";".join(str(len(r.returns)) for r in cell.runs),
                        ";".join(str(r.path) for r in cell.runs),
                        repr(cell.mmer_mean) if cell.is_popgym else "",
                        repr(cell.mmer_std) if cell.is_popgym else "",
                        ";".join(repr(float(m)) for m in cell.mmers) if cell.is_popgym else "",
                        repr(cell.normalised_mmer_mean) if cell.is_popgym else "",
                        repr(cell.auc_mean),
                        repr(cell.auc_std),
                        ";".join(repr(float(a)) for a in cell.aucs),
                    ]
                )
    return buffer.getvalue()


def render_aggregates_csv(aggregates: list[Aggregates]) -> str:
    """One row per (protocol, core, metric) and per (protocol, pair of cores) for the probability of improvement;
    empty ci_low/ci_high where no interval could be computed."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(AGGREGATE_CSV_COLUMNS)

    def row(agg: Aggregates, metric: str, core: str, other: str, estimate: Estimate, runs: str) -> None:
        writer.writerow([agg.protocol, agg.scores_name, metric, core, other,
                         repr(estimate.value), "" if estimate.low is None else repr(estimate.low),
                         "" if estimate.high is None else repr(estimate.high), ";".join(agg.games), runs, agg.reps])

    for agg in aggregates:
        for core in agg.cores:
            for name, estimate in agg.metrics.get(core, {}).items():
                row(agg, name, core, "", estimate, str(agg.scores[core].shape[0]))
        for x, y, estimate in agg.improvement:
            row(agg, "P(X > Y)", x, y, estimate, f"{agg.scores[x].shape[0]};{agg.scores[y].shape[0]}")
    return buffer.getvalue()
