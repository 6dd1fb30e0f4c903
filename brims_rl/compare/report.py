"""Writing a comparison: per protocol the per-game table, the aggregates and the figures, into one folder."""

from __future__ import annotations

import re
from pathlib import Path

from brims_rl.compare import aggregates, figures, tables
from brims_rl.compare.runs import Group, Run, group_by_protocol
from brims_rl.atomic import write_text_atomic
from brims_rl.errors import UserError

FIGURES = ("compare.png", "compare_intervals.png", "compare_profiles.png")


def figure_name(name: str, protocol: str, several: bool) -> str:
    """compare.png for a single protocol; compare-<protocol>.png when the folder holds several."""
    if not several:
        return name
    stem, suffix = name.rsplit(".", 1)
    return f"{stem}-{re.sub(r'[^A-Za-z0-9._-]+', '-', protocol)}.{suffix}"


def tabulate(runs: list[Run], out: Path, reps: int = aggregates.DEFAULT_REPS) -> list[aggregates.Aggregates]:
    """Write compare.md, compare.csv, compare_aggregates.csv and the figures to `out`; print compare.md."""
    groups = group_by_protocol(runs)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    several = len(groups) > 1
    sections, results, written = [], [], []
    for group in groups:
        agg = aggregates.compute(group, reps=reps)
        results.append(agg)
        names = [figure_name(name, group.protocol, several) for name in FIGURES]
        figures.learning_curves(group, out / names[0])
        written.append(names[0])
        if agg.metrics:
            figures.interval_estimates(agg, out / names[1])
            figures.performance_profiles(agg, out / names[2])
            written += names[1:]
        extra = []
        if aggregates.is_popgym_group(group):  # POPGym's own score beside the final return
            extra.append(aggregates.compute(group, reps=reps, score="mmer"))
            results.extend(extra)
        sections.append(_section(group, agg, extra))
    markdown = "\n".join(sections)
    write_text_atomic(out / "compare.md", markdown)
    write_text_atomic(out / "compare.csv", tables.render_csv(groups))
    write_text_atomic(out / "compare_aggregates.csv", tables.render_aggregates_csv(results))
    print(markdown, end="")
    files = ["compare.md", "compare.csv", "compare_aggregates.csv", *written]
    print(f"wrote {', '.join(str(out / name) for name in files)}")
    return results


def _section(group: Group, agg: aggregates.Aggregates, extra: list[aggregates.Aggregates] = ()) -> str:
    title = "Final return and MMER per game" if group.popgym_envs else "Final return per game"
    popgym = tables.render_popgym_scores(group)
    scores = f"\n### Normalised MMER and area under the curve per game\n\n{popgym}" if popgym else ""
    return (f"## Protocol: {group.protocol}\n\n### {title}\n\n" + tables.render_table(group) + scores + "\n"
            + tables.render_aggregates(agg) + "".join("\n" + tables.render_aggregates(a) for a in extra))
