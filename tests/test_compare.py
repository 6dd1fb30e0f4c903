"""`brims-rl compare` on synthetic runs: the numbers (against numpy), the files, the grid launcher and bad input."""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from brims_rl.compare import tbdata
from brims_rl.compare import grid, tables
from brims_rl.cli import main
from brims_rl.config import Config, CoreConfig, EnvConfig
from brims_rl.errors import UserError
from brims_rl.run_folder import run_name

RET = "charts/episodic_return"
ENVS = ["Pong", "Breakout"]
CORES = ["lstm", "gru"]
SEEDS = [1, 2, 3]
PAPER10 = ["Alien", "Amidar", "Assault", "Asterix", "Asteroids", "Atlantis", "BankHeist", "BattleZone", "BeamRider",
           "MsPacman"]


def known_data(env: str, core: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Episode end steps and integer returns (exact in float32); 70 to 250 episodes, so most runs exceed 100."""
    rng = np.random.default_rng(1000 * ENVS.index(env) + 100 * CORES.index(core) + seed)
    n = 70 + 60 * seed - 10 * CORES.index(core)
    steps = np.cumsum(rng.integers(20, 400, n))
    base = 100.0 * (1 + CORES.index(core)) * (1 + ENVS.index(env))
    returns = np.round(base + np.linspace(0, base, n) + rng.normal(0, 30, n))
    return steps, returns


def write_events(path: Path, steps, returns, purge_step=None, extra=()) -> None:
    writer = SummaryWriter(str(path), purge_step=purge_step)
    for step, value in zip(steps, returns):
        writer.add_scalar(RET, float(value), int(step))
    for tag, value, step in extra:
        writer.add_scalar(tag, value, step)
    writer.close()


def make_run(path: Path, env: str, core: str, seed: int, steps=None, returns=None, env_settings=None,
             core_options=None, extra=(), protocol: str | None = "default") -> Path:
    """A run folder; protocol None writes a config.json from before protocols existed (no "protocol" key)."""
    if steps is None:
        steps, returns = known_data(env, core, seed)
    path.mkdir(parents=True)
    Config(env=EnvConfig(id=env, **(env_settings or {})), core=CoreConfig(name=core, options=core_options or {}),
           seed=seed, protocol=protocol or "default").save(path / "config.json")
    if protocol is None:
        data = json.loads((path / "config.json").read_text())
        del data["protocol"], data["protocol_settings"]
        (path / "config.json").write_text(json.dumps(data))
    write_events(path, steps, returns, extra=extra)
    return path


def final(returns) -> float:
    return float(np.mean(np.asarray(returns, dtype=np.float64)[-100:]))


def cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors exit from inside the parser
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("brims-rl: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def read_csv(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(tables.CSV_COLUMNS)
    return {(row["env"], row["core"]): row for row in rows}


def md_tables(path: Path) -> list[list[list[str]]]:
    """Every markdown table of a file, in order, as rows of stripped cells."""
    tables_, current = [], None
    for line in path.read_text().splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                tables_.append(current)
            current.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        else:
            current = None
    return tables_


def md_table(path: Path) -> list[list[str]]:
    """The first table: the per-game table."""
    return md_tables(path)[0]


@pytest.fixture(autouse=True)
def few_bootstrap_reps(monkeypatch):
    """The aggregates' bootstrap is not what these tests check; 200 resamples keep them fast."""
    from brims_rl.compare import aggregates

    monkeypatch.setattr(aggregates, "DEFAULT_REPS", 200)


@pytest.fixture
def grid_runs(tmp_path):
    """2 envs x 2 cores x 3 seeds; one run also logs a later non-episode scalar (steps reached counts every tag)."""
    runs = {}
    for env in ENVS:
        for core in CORES:
            for seed in SEEDS:
                extra = [("charts/SPS", 1000.0, 10**6)] if (env, core, seed) == ("Pong", "gru", 2) else ()
                runs[env, core, seed] = make_run(tmp_path / "runs" / f"{env}-{core}-{seed}", env, core, seed,
                                                 extra=extra)
    return runs


def test_table_numbers_layout_and_plot(tmp_path, capsys, grid_runs):
    out = tmp_path / "report"
    code, stdout, err = cli(capsys, "compare", *grid_runs.values(), "--out", out)
    assert code == 0, err
    rows = read_csv(out / "compare.csv")
    assert set(rows) == {(e, c) for e in ENVS for c in CORES}
    for env in ENVS:
        for core in CORES:
            data = [known_data(env, core, s) for s in SEEDS]
            finals = np.array([final(r) for _, r in data])
            row = rows[env, core]
            assert float(row["mean"]) == pytest.approx(finals.mean(), rel=1e-9)
            assert float(row["std"]) == pytest.approx(finals.std(ddof=1), rel=1e-9)
            assert float(row["std"]) != pytest.approx(finals.std(ddof=0), rel=1e-6)  # sample std, as --help says
            assert row["num_seeds"] == "3" and row["seeds"] == "1;2;3"
            assert [float(x) for x in row["final_returns"].split(";")] == pytest.approx(finals)
            assert row["episodes"] == ";".join(str(len(r)) for _, r in data)
            reached = [int(s[-1]) for s, _ in data]
            if (env, core) == ("Pong", "gru"):
                reached[1] = 10**6
            assert row["steps_reached"] == ";".join(map(str, reached))
            assert int(row["steps_reached_min"]) == min(reached)
            assert row["run_dirs"].split(";") == [str(grid_runs[env, core, s]) for s in SEEDS]
    # the Table 4 layout: a header of cores, one row per env, cells "mean ± std"
    table = md_table(out / "compare.md")
    assert table[0] == ["Env", *CORES]
    assert [row[0] for row in table[2:]] == ENVS
    for row in table[2:]:
        for core, cell in zip(CORES, row[1:]):
            finals = [final(known_data(row[0], core, s)[1]) for s in SEEDS]
            assert cell == tables.format_cell(np.mean(finals), np.std(finals, ddof=1))
    assert "| Pong |" in stdout and "compare.md" in stdout
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_one_seed_has_zero_std_and_missing_cells(tmp_path, capsys):
    steps, returns = np.arange(1, 31) * 100, np.arange(30) * 10.0
    a = make_run(tmp_path / "a", "Pong", "lstm", 4, steps, returns)
    b = make_run(tmp_path / "b", "Breakout", "gru", 1, steps, returns + 5)
    code, _, err = cli(capsys, "compare", a, b, "--out", tmp_path / "o")
    assert code == 0, err
    rows = read_csv(tmp_path / "o" / "compare.csv")
    assert float(rows["Pong", "lstm"]["std"]) == 0.0
    assert float(rows["Pong", "lstm"]["mean"]) == pytest.approx(np.mean(returns))  # fewer than 100 episodes: all
    assert ("Pong", "gru") not in rows
    table = md_table(tmp_path / "o" / "compare.md")
    assert table[2] == ["Pong", "145 ± 0", "—"] and table[3] == ["Breakout", "—", "150 ± 0"]


def test_format_cell():
    assert tables.format_cell(1612.4, 44.2) == "1612 ± 44"
    assert tables.format_cell(3.28e6, 0.2e6) == "3.28M ± 0.20M"
    assert tables.format_cell(1.26e6, 4200.0) == "1.26M ± 0.004M"
    assert tables.format_cell(1.26e6, 0.0) == "1.26M ± 0.00M"
    assert tables.format_cell(-20.54, 0.31) == "-20.5 ± 0.3"


def test_several_event_files_are_merged_by_step(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    Config(env=EnvConfig(id="Pong"), core=CoreConfig(name="lstm"), seed=1).save(run / "config.json")
    # first session: episodes up to step 1500, but the run crashed and resumed from its checkpoint at step 1000
    write_events(run, np.arange(1, 16) * 100, np.arange(1, 16) * 1.0)
    time.sleep(0.01)
    write_events(run, np.arange(105, 190, 5) * 10, np.arange(105, 190, 5) * 1.0, purge_step=1000)
    time.sleep(0.01)
    # third session without purge_step: it supersedes from its first step (1850) on
    write_events(run, [1850, 1900, 1950], [500.0, 600.0, 700.0])
    assert len(tbdata.event_files(run)) == 3
    series = tbdata.read_run_scalars(run)[RET]
    expected_steps = [s * 100 for s in range(1, 10)] + list(range(1050, 1850, 50)) + [1850, 1900, 1950]
    expected_values = list(range(1, 10)) + list(range(105, 185, 5)) + [500, 600, 700]
    assert series.steps.tolist() == expected_steps
    assert series.values.tolist() == expected_values
    code, _, err = cli(capsys, "compare", run, "--out", tmp_path / "o")
    assert code == 0, err
    row = read_csv(tmp_path / "o" / "compare.csv")["Pong", "lstm"]
    assert float(row["mean"]) == pytest.approx(np.mean(expected_values))
    assert row["episodes"] == str(len(expected_values)) and row["steps_reached"] == "1950"


@pytest.mark.parametrize("keep", [5, 10, 14, -2])  # of the last record: in its length, length CRC, payload, payload CRC
def test_truncated_last_record_is_tolerated(tmp_path, keep):
    run = make_run(tmp_path / "r", "Pong", "lstm", 1, [10, 20, 30], [1.0, 2.0, 3.0])
    (events,) = tbdata.event_files(run)
    data = events.read_bytes()
    last = _last_record(data)
    start = len(data) - len(last)
    events.write_bytes(data[: start + (keep % len(last))])  # a run killed while writing its last record
    assert tbdata.read_run_scalars(run)[RET].values.tolist() == [1.0, 2.0]


def _last_record(data: bytes) -> bytes:
    """The bytes of the last TFRecord of an event file (length 8, CRC 4, payload, CRC 4)."""
    pos, last = 0, b""
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 8], "little")
        last, pos = data[pos : pos + 16 + length], pos + 16 + length
    return last


@pytest.mark.parametrize("where", ["payload", "payload CRC", "length"])
def test_a_bad_checksum_in_the_complete_last_record_is_corruption_not_truncation(tmp_path, capsys, where):
    run = make_run(tmp_path / "r", "Pong", "lstm", 1, [10, 20, 30], [1.0, 2.0, 3.0])
    (events,) = tbdata.event_files(run)
    data = bytearray(events.read_bytes())
    start = len(data) - len(_last_record(bytes(data)))
    index = {"payload": start + 14, "payload CRC": len(data) - 1, "length": start + 1}[where]
    data[index] ^= 0x01
    events.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt"):
        tbdata.read_run_scalars(run)
    code, _, err = cli(capsys, "compare", run, "--out", tmp_path / "o")
    assert_user_error(code, err, "corrupt", str(events))


def test_dry_run_prints_the_suite_grid(tmp_path, capsys):
    suite = tomllib.loads(Path(__file__).resolve().parents[1].joinpath("envs", "paper10.toml").read_text())
    assert suite["suite"]["games"] == PAPER10 and suite["description"]
    out = tmp_path / "grid"
    (out / "Alien__gru__s2").mkdir(parents=True)  # started before: continued with --resume
    Config(env=EnvConfig(id="Alien"), core=CoreConfig(name="gru"), seed=2).save(out / "Alien__gru__s2" / "config.json")
    code, stdout, err = cli(capsys, "compare", "--env", "paper10", "--cores", "lstm", "gru", "--seeds", "3",
                            "--total-steps", "1e6", "--out", out, "--dry-run", "--set", "ppo.ent_coef=0.02")
    assert code == 0, err
    lines = stdout.strip().splitlines()
    expected = []
    for game in PAPER10:
        for core in ("lstm", "gru"):
            for seed in (1, 2, 3):
                path = str(out / f"{game}__{core}__s{seed}")
                if (game, core, seed) == ("Alien", "gru", 2):
                    cmd = ["brims-rl", "train", "--resume", path, "--total-steps", "1000000"]
                else:
                    cmd = ["brims-rl", "train", "--env", game, "--core", core, "--seed", str(seed),
                           "--total-steps", "1000000", "--run-dir", path]
                expected.append(cmd + ["--set", "ppo.ent_coef=0.02"])
    assert len(lines) == 60
    assert [shlex.split(line) for line in lines] == expected
    assert sorted(p.name for p in out.iterdir()) == ["Alien__gru__s2"]  # nothing launched or written


def test_runs_of_different_protocols_never_share_a_cell(tmp_path, capsys):
    runs = []
    for protocol in (None, "paper"):  # None: an older run without "protocol", which counts as "default"
        for env in ENVS:
            for core in CORES:
                for seed in (1, 2):
                    runs.append(make_run(tmp_path / f"{protocol}-{env}-{core}-{seed}", env, core, seed,
                                         protocol=protocol))
    out = tmp_path / "o"
    code, stdout, err = cli(capsys, "compare", *runs, "--out", out)
    assert code == 0, err
    text = (out / "compare.md").read_text()
    assert text.index("## Protocol: default") < text.index("## Protocol: paper")
    default_part, paper_part = text.split("## Protocol: paper")
    for part in (default_part, paper_part):  # each protocol: its per-game table first, then its own aggregates
        assert part.count("| Env | lstm | gru |") == 1 and part.count("### Aggregates over 2 games") == 1
        assert part.index("| Env |") < part.index("### Aggregates")
    with open(out / "compare.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["protocol"], r["env"], r["core"]) for r in rows] == [
        (p, e, c) for p in ("default", "paper") for e in ENVS for c in CORES]
    assert all(r["num_seeds"] == "2" for r in rows)  # seeds 1 and 2 of each protocol, never 4 in one cell
    with open(out / "compare_aggregates.csv", newline="") as f:
        protocols = {r["protocol"] for r in csv.DictReader(f)}
    assert protocols == {"default", "paper"}
    for protocol in ("default", "paper"):
        for figure in ("compare", "compare_intervals", "compare_profiles"):
            assert (out / f"{figure}-{protocol}.png").is_file()
    assert not (out / "compare.png").exists()


def test_dry_run_with_a_protocol_takes_its_run_length(tmp_path, capsys):
    out = tmp_path / "grid"
    code, stdout, err = cli(capsys, "compare", "--env", "paper10", "--protocol", "paper", "--cores", "lstm", "rims",
                            "brims", "--seeds", "3", "--out", out, "--dry-run")
    assert code == 0, err
    commands = [shlex.split(line) for line in stdout.strip().splitlines()]
    assert len(commands) == 90
    assert commands[0] == ["brims-rl", "train", "--env", "Alien", "--core", "lstm", "--seed", "1", "--protocol",
                           "paper", "--total-steps", "40000000", "--run-dir", str(out / "Alien__lstm__paper__s1")]
    assert all(c[c.index("--protocol") + 1] == "paper" and c[c.index("--total-steps") + 1] == "40000000"
               for c in commands)
    # --total-steps still wins; a started run of another protocol is refused, not resumed
    code, stdout, err = cli(capsys, "compare", "--env", "Pong", "--protocol", "cleanrl", "--cores", "lstm", "--seeds",
                            "1", "--total-steps", "5000", "--out", out, "--dry-run")
    assert code == 0 and "--protocol cleanrl --total-steps 5000" in stdout
    make_run(out / "Pong__lstm__cleanrl__s1", "Pong", "lstm", 1, [10], [1.0], protocol="paper")
    code, _, err = cli(capsys, "compare", "--env", "Pong", "--protocol", "cleanrl", "--cores", "lstm", "--seeds", "1",
                       "--out", out, "--dry-run")
    assert_user_error(code, err, "Pong__lstm__cleanrl__s1", "'paper'", "'cleanrl'")


def test_dry_run_plain_env_and_suite_file(tmp_path, capsys):
    code, stdout, _ = cli(capsys, "compare", "--env", "ALE/Pong-v5", "--cores", "lstm", "--seeds", "1",
                          "--total-steps", "100", "--out", tmp_path / "my runs", "--dry-run")
    assert code == 0
    assert stdout.splitlines() == [shlex.join(["brims-rl", "train", "--env", "ALE/Pong-v5", "--core", "lstm", "--seed",
                                               "1", "--total-steps", "100", "--run-dir",
                                               str(tmp_path / "my runs" / "ALE-Pong-v5__lstm__s1")])]
    suite = tmp_path / "mine.toml"
    suite.write_text('description = "two"\n[suite]\ngames = ["Pong", "Breakout"]\n')
    code, stdout, _ = cli(capsys, "compare", "--env", suite, "--cores", "lstm", "gru", "--seeds", "2",
                          "--total-steps", "100", "--dry-run")
    assert code == 0
    runs = [shlex.split(line)[shlex.split(line).index("--run-dir") + 1] for line in stdout.splitlines()]
    assert runs == [str(Path("runs") / f"{e}__{c}__s{s}") for e in ENVS for c in CORES for s in (1, 2)]


FAKE_TRAIN = """
import json, os, pathlib, shutil, sys, time
args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(json.dumps({{"args": args, "start": time.time(), "omp": os.environ.get("OMP_NUM_THREADS")}}) + "\\n")
time.sleep(0.2)
run = pathlib.Path(args[args.index("--resume" if "--resume" in args else "--run-dir") + 1])
if run.name == {fail!r}:
    sys.exit(3)
if "--run-dir" in args:
    shutil.copytree(pathlib.Path({templates!r}) / run.name, run)
with open({log!r}, "a") as f:
    f.write(json.dumps({{"end": time.time()}}) + "\\n")
"""


@pytest.fixture
def fake_train(tmp_path, monkeypatch):
    """Replace the train subprocess by a small script that copies a prepared run folder (or fails for one run)."""
    templates = tmp_path / "templates"
    for env in ENVS:
        for core in CORES:
            for seed in (1, 2):
                make_run(templates / run_name(env, core, seed), env, core, seed)
    log = tmp_path / "launches.jsonl"

    def install(fail: str = "") -> Path:
        script = FAKE_TRAIN.format(log=str(log), fail=fail, templates=str(templates))
        monkeypatch.setattr(grid, "launch_argv", lambda args: [sys.executable, "-c", script, *args])
        return log

    return templates, install


def test_grid_launches_every_run_and_tabulates(tmp_path, capsys, monkeypatch, fake_train):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    templates, install = fake_train
    log = install()
    out = tmp_path / "grid"
    out.mkdir()
    import shutil

    shutil.copytree(templates / "Pong__gru__s1", out / "Pong__gru__s1")  # an earlier, interrupted grid
    code, stdout, err = cli(capsys, "compare", "--env", *ENVS, "--cores", *CORES, "--seeds", "2", "--total-steps",
                            "5000", "--jobs", "2", "--out", out, "--set", "ppo.clip_coef=0.2")
    assert code == 0, err
    records = [json.loads(line) for line in log.read_text().splitlines()]
    launched = [r["args"] for r in records if "args" in r]
    assert len(launched) == 8
    for env in ENVS:
        for core in CORES:
            for seed in (1, 2):
                path = str(out / f"{env}__{core}__s{seed}")
                if (env, core, seed) == ("Pong", "gru", 1):
                    want = ["train", "--resume", path, "--total-steps", "5000"]
                else:
                    want = ["train", "--env", env, "--core", core, "--seed", str(seed), "--total-steps", "5000",
                            "--run-dir", path]
                assert want + ["--set", "ppo.clip_coef=0.2"] in launched
    # at most --jobs at once, and really in parallel
    starts = sorted(r["start"] for r in records if "start" in r)
    ends = sorted(r["end"] for r in records if "end" in r)
    overlap = max(sum(1 for s in starts if s <= t) - sum(1 for e in ends if e <= t) for t in starts)
    assert overlap == 2
    assert {r["omp"] for r in records if "start" in r} == {str(max(1, (os.cpu_count() or 1) // 2))}
    assert (out / "logs" / "Breakout__lstm__s2.log").is_file()
    rows = read_csv(out / "compare.csv")
    for env in ENVS:
        for core in CORES:
            finals = [final(known_data(env, core, s)[1]) for s in (1, 2)]
            assert float(rows[env, core]["mean"]) == pytest.approx(np.mean(finals))
            assert float(rows[env, core]["std"]) == pytest.approx(np.std(finals, ddof=1))
    assert (out / "compare.md").is_file() and (out / "compare.png").stat().st_size > 0


def test_grid_reports_a_failed_run_and_exits_nonzero(tmp_path, capsys, fake_train):
    _, install = fake_train
    install(fail="Breakout__gru__s2")
    out = tmp_path / "grid"
    code, stdout, err = cli(capsys, "compare", "--env", *ENVS, "--cores", *CORES, "--seeds", "2", "--total-steps",
                            "5000", "--out", out)
    assert code == 1
    assert "Traceback" not in err
    failed = [line for line in err.splitlines() if "Breakout__gru__s2" in line]
    assert failed and all("exit code 3" in line for line in failed)
    assert "1 of 8 runs failed" in err
    rows = read_csv(out / "compare.csv")  # the others finished and are tabulated
    assert len(rows) == 4 and rows["Breakout", "gru"]["seeds"] == "1" and rows["Pong", "lstm"]["seeds"] == "1;2"


def test_sigterm_stops_the_grid_and_its_runs(tmp_path, capsys, monkeypatch):
    pids = tmp_path / "pids"
    script = f"import os, time; open({str(pids)!r}, 'a').write(f'{{os.getpid()}}\\n'); time.sleep(60)"
    monkeypatch.setattr(grid, "launch_argv", lambda args: [sys.executable, "-c", script, *args])
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    begin = time.monotonic()
    try:
        code, _, err = cli(capsys, "compare", "--env", "Pong", "--cores", "lstm", "--seeds", "4", "--total-steps",
                           "10", "--jobs", "2", "--out", tmp_path / "grid")
    finally:
        timer.cancel()
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert time.monotonic() - begin < 30
    started = [int(pid) for pid in pids.read_text().split()]
    assert len(started) == 2  # the other two were never launched
    for pid in started:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert signal.getsignal(signal.SIGTERM) is not grid._raise_terminated


def _corrupt_events(run: Path) -> None:
    (events,) = tbdata.event_files(run)
    data = bytearray(events.read_bytes())
    data[len(data) // 2] ^= 0xFF
    events.write_bytes(bytes(data))


def _bad_cases(tmp: Path) -> dict[str, tuple[list, tuple[str, ...]]]:
    good = make_run(tmp / "good", "Pong", "lstm", 1, [10, 20], [1.0, 2.0])
    (tmp / "noconfig").mkdir()
    bad_json = make_run(tmp / "badjson", "Pong", "lstm", 2, [10], [1.0])
    (bad_json / "config.json").write_text("{not json")
    no_events = tmp / "noevents"
    no_events.mkdir()
    Config().save(no_events / "config.json")
    other_tags = tmp / "othertags"
    other_tags.mkdir()
    Config().save(other_tags / "config.json")
    writer = SummaryWriter(str(other_tags))
    writer.add_scalar("charts/SPS", 100.0, 128)
    writer.close()
    corrupt = make_run(tmp / "corrupt", "Pong", "lstm", 3, np.arange(1, 50) * 10, np.arange(49) * 1.0)
    _corrupt_events(corrupt)
    garbage = make_run(tmp / "garbage", "Pong", "lstm", 4, [10], [1.0])
    (garbage / "events.out.tfevents.123.host.1.0").write_text("this is not an event file at all\n")
    sticky = make_run(tmp / "sticky", "Pong", "gru", 1, [10], [1.0], env_settings={"sticky_actions": 0.25})
    options = make_run(tmp / "options", "Pong", "lstm", 5, [10], [1.0], core_options={"hidden_size": 64})
    empty_suite = tmp / "empty.toml"
    empty_suite.write_text("[suite]\ngames = []\n")
    grid = ["--cores", "lstm", "--seeds", "1", "--total-steps", "10"]
    return {
        "missing folder": ([tmp / "nope"], ("nope", "not found")),
        "no config": ([tmp / "noconfig"], ("noconfig", "no config.json")),
        "unreadable config": ([bad_json], ("badjson",)),
        "no event files": ([no_events], ("noevents", RET)),
        "no episodic return": ([other_tags], ("othertags", RET)),
        "corrupt event file": ([corrupt], ("corrupt", "corrupt")),
        "not an event file": ([garbage], ("garbage", "corrupt")),
        "different protocol": ([good, sticky], ("good", "sticky", "sticky_actions", "cannot be grouped")),
        "different core options": ([good, options], ("good", "options", "cannot be grouped")),
        "nothing": ([], ("run folders",)),
        "runs and --env": ([good, "--env", "Pong", *grid], ("not both",)),
        "grid option without --env": ([good, "--seeds", "3"], ("--seeds", "--env")),
        "--env without --cores": (["--env", "Pong", "--seeds", "1", "--total-steps", "10"], ("--cores",)),
        "--env without --seeds": (["--env", "Pong", "--cores", "lstm", "--total-steps", "10"], ("--seeds",)),
        "--env without --total-steps": (["--env", "Pong", "--cores", "lstm", "--seeds", "1"], ("--total-steps",)),
        "zero seeds": (["--env", "Pong", "--cores", "lstm", "--seeds", "0", "--total-steps", "10"], ("--seeds",)),
        "negative steps": (["--env", "Pong", "--cores", "lstm", "--seeds", "1", "--total-steps", "-5"],
                           ("--total-steps",)),
        "zero jobs": (["--env", "Pong", *grid, "--jobs", "0"], ("--jobs",)),
        "fractional steps": (["--env", "Pong", "--cores", "lstm", "--seeds", "1", "--total-steps", "1.5"],
                             ("--total-steps",)),
        "unknown core": (["--env", "Pong", "--cores", "lstmm", "--seeds", "1", "--total-steps", "10"], ("lstmm",)),
        "unknown protocol": (["--env", "Pong", "--cores", "lstm", "--seeds", "1", "--protocol", "nope", "--dry-run"],
                             ("nope", "protocol")),
        "protocol without --env": ([good, "--protocol", "paper"], ("--protocol", "--env")),
        "bad --set": (["--env", "Pong", *grid, "--set", "oops", "--dry-run"], ("KEY=VALUE",)),
        "empty suite": (["--env", empty_suite, *grid, "--dry-run"], ("games",)),
    }


BAD_CASE_NAMES = [
    "missing folder", "no config", "unreadable config", "no event files", "no episodic return", "corrupt event file",
    "not an event file", "different protocol", "different core options", "nothing",
    "runs and --env", "grid option without --env", "--env without --cores", "--env without --seeds",
    "--env without --total-steps", "zero seeds", "negative steps", "zero jobs", "fractional steps", "unknown core",
    "unknown protocol", "protocol without --env", "bad --set", "empty suite",
]


@pytest.mark.parametrize("case", BAD_CASE_NAMES)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    cases = _bad_cases(tmp_path)
    assert set(cases) == set(BAD_CASE_NAMES)
    argv, needles = cases[case]
    code, _, err = cli(capsys, "compare", *argv, "--out", tmp_path / "out")
    assert_user_error(code, err, *needles)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_runs_without_episodes_are_left_out_with_one_warning(tmp_path, capsys):
    good = make_run(tmp_path / "good", "Pong", "lstm", 1, [10, 20], [1.0, 2.0])
    empty = []
    for name in ("started", "fresh"):
        folder = tmp_path / name
        folder.mkdir()
        Config(env=EnvConfig(id="Pong")).save(folder / "config.json")
        empty.append(folder)
    code, out, err = cli(capsys, "compare", good, *empty, "--out", tmp_path / "out")
    assert code == 0 and "| Pong |" in out
    (line,) = err.strip().splitlines()
    assert line == f"brims-rl: warning: left out 2 runs with no finished episode yet: {empty[0]}, {empty[1]}"
    assert read_csv(tmp_path / "out" / "compare.csv")["Pong", "lstm"]["seeds"] == "1"
    code, _, err = cli(capsys, "compare", *empty, "--out", tmp_path / "out2")
    assert_user_error(code, err, "no run to compare has a finished episode yet", "started", "fresh", RET)


def test_runs_that_share_a_seed_are_named_and_the_furthest_counts(tmp_path, capsys):
    short = make_run(tmp_path / "short", "Pong", "lstm", 1, [10], [3.0])
    long = make_run(tmp_path / "long", "Pong", "lstm", 1, [10, 20, 30], [1.0, 2.0, 6.0])
    other = make_run(tmp_path / "other", "Pong", "lstm", 2, [10, 20], [5.0, 5.0])
    code, out, err = cli(capsys, "compare", short, long, other, "--out", tmp_path / "out")
    assert code == 0
    (line,) = err.strip().splitlines()
    assert line == (f"brims-rl: warning: runs share a seed, so only the furthest of each counts: {short} and {long} "
                    f"are all Pong / lstm / seed 1: kept {long} (30 steps)")
    row = read_csv(tmp_path / "out" / "compare.csv")["Pong", "lstm"]
    assert row["seeds"] == "1;2" and float(row["mean"]) == 4.0  # (3.0 + 5.0) / 2: the long run and seed 2


def test_bad_input_in_a_subprocess_has_no_traceback(tmp_path):
    corrupt = make_run(tmp_path / "corrupt", "Pong", "lstm", 1, np.arange(1, 50) * 10, np.arange(49) * 1.0)
    _corrupt_events(corrupt)
    for argv in ([str(corrupt)],  # a UserError, and an argparse error
                 ["--env", "Pong", "--cores", "lstm", "--seeds", "0", "--total-steps", "10"]):
        proc = subprocess.run([sys.executable, "-m", "brims_rl", "compare", *argv, "--out", str(tmp_path / "o")],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("brims-rl: error: ")


def test_a_reader_that_goes_away_stops_the_command_quietly(tmp_path):
    """`brims-rl compare --dry-run | head`: the grid (about 1.5 MB, far more than a pipe holds) meets a closed pipe;
    the command stops with the shell's SIGPIPE code and says nothing."""
    argv = ["--env", "paper10", "--cores", "ff", "lstm", "gru", "rims", "brims", "--seeds", "200",
            "--total-steps", "1000", "--dry-run"]
    proc = subprocess.Popen([sys.executable, "-m", "brims_rl", "compare", *argv, "--out", str(tmp_path / "o")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 128 + 13
    assert first.startswith("brims-rl train --env ")
    assert err == ""
    assert not (tmp_path / "o").exists()
