"""Faults end cleanly: one error line, a non-zero exit, no temp files, only finite checkpoints, envs closed.

Covered: an env that returns a NaN reward or an inf observation; a loss that turns NaN; disk full (a real tiny
tmpfs where the machine allows mounting one, else skipped; an injected ENOSPC everywhere); permission denied; a run
folder that vanishes; TensorBoard's writer failing; a second training of a run folder in training; eval.json that
cannot be written; compare into a read-only --out.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import brims_rl.trainer as trainer_module
from brims_rl import assembly, atomic, checkpoint
from brims_rl.cli import main
from brims_rl.errors import EXIT_IO, EXIT_RUN
from brims_rl.run_folder import TrainingLock

MEMORY = "brims_rl.environments.memory:CueMemory-v0"
TINY = ["--num-envs", "2", "--set", "ppo.num_steps=32", "--set", "ppo.num_minibatches=2", "--set",
        "ppo.update_epochs=1", "--set", "latest_every_s=0"]
TESTS = Path(__file__).resolve().parent


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "brims_rl", *args], capture_output=True, text=True, timeout=600,
                          env=env, cwd=cwd)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in lines if line.startswith("brims-rl: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr[-3000:]
    return errors[0]


def assert_checkpoints_whole_and_finite(run: Path) -> list[dict]:
    folder = run / "checkpoints"
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name], list(run.rglob("*"))
    states = []
    for file in sorted(folder.glob("*.pt")):
        state = checkpoint.load(file)
        assert checkpoint.first_nonfinite({"model": state["model"], "optimizer": state["optimizer"]}) is None
        states.append(state)
    assert states, "the last good checkpoint is kept"
    return states


# ---- non-finite data -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env,what", [("NaNReward-v0", "returned a NaN reward"),
                                      ("InfObs-v0", "returned an observation holding inf")])
def test_a_non_finite_env_value_stops_the_run_with_one_line(env, what, tmp_path):
    run = tmp_path / "run"
    result = cli("train", "--env", f"fault_envs:{env}", "--seed", "7", "--total-steps", "640", "--run-dir", str(run),
                 *TINY)
    assert result.returncode == EXIT_RUN
    line = one_error_line(result.stderr)
    # env index 1 (seeded 8) goes wrong at its 40th step: 40 vector steps of 2 envs = global step 80
    assert f"env fault_envs:{env} (env index 1) {what} at step 80" in line, line
    assert "--resume" in line and "latest.pt" in line
    (state,) = assert_checkpoints_whole_and_finite(run)
    assert state["global_step"] == 64  # the update before the fault; nothing learned from the NaN


def test_non_finite_losses_are_skipped_counted_and_stop_the_run_after_a_limit(tmp_path, monkeypatch, capsys):
    import brims_rl.ppo as ppo

    real_masked_mean, real_log = ppo.masked_mean, trainer_module.Trainer._log
    poison = {"on": False}

    def poisoned(x, mask):  # once the first update is logged, every loss is NaN
        value = real_masked_mean(x, mask)
        return value * float("nan") if poison["on"] else value

    def log_then_poison(self, *args, **kwargs):
        real_log(self, *args, **kwargs)
        poison["on"] = True

    monkeypatch.setattr(trainer_module.Trainer, "_log", log_then_poison)
    monkeypatch.setattr(ppo, "masked_mean", poisoned)
    run = tmp_path / "run"
    code = main(["train", "--env", MEMORY, "--total-steps", "6400", "--run-dir", str(run), *TINY,
                 "--set", "ppo.max_nonfinite_skips=5"])
    assert code == EXIT_RUN
    line = one_error_line(capsys.readouterr().err)
    assert "5 optimizer steps in a row" in line and "ppo.max_nonfinite_skips" in line
    states = assert_checkpoints_whole_and_finite(run)
    assert max(s["global_step"] for s in states) == 192  # updates 2 and 3 skipped all 4 steps: no checkpoint moved
    from test_train_cli import scalars

    skips = dict(scalars(run, "losses/nonfinite_skips"))
    assert skips[64] == 0 and skips[128] == 2 and skips[192] == 2  # 2 minibatches per update, 1 epoch


def test_a_non_finite_checkpoint_is_never_written(tmp_path):
    good = {"model": {"w": torch.ones(3)}, "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}}}
    path = tmp_path / "latest.pt"
    checkpoint.save_atomic(good, path)
    before = path.read_bytes()
    bad = {"model": {"w": torch.ones(3)}, "optimizer": {"state": {0: {"exp_avg": torch.tensor([0, float("inf"), 0])}}}}
    from brims_rl.errors import RunFailure

    with pytest.raises(RunFailure, match=r"optimizer\['state'\]\[0\]\['exp_avg'\]"):
        checkpoint.save_atomic(bad, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]


# ---- I/O faults in training ------------------------------------------------------------------------------------
class ClosedEnvs:
    """Wraps make_vec_env so a test can see that every env built was closed."""

    def __init__(self, monkeypatch):
        self.opened, self.closed = 0, 0
        real = assembly.make_vec_env

        def make(*args, **kwargs):
            env = real(*args, **kwargs)
            self.opened += 1
            close = env.close

            def counting_close():
                self.closed += 1
                close()

            env.close = counting_close
            return env

        monkeypatch.setattr(assembly, "make_vec_env", make)


def fail_on_write(monkeypatch, module, name: str, error: int, after: int) -> None:
    """Let `module.name` succeed `after` times, then raise OSError(error) each time."""
    real = getattr(module, name)
    count = {"n": 0}

    def failing(*args, **kwargs):
        count["n"] += 1
        if count["n"] > after:
            raise OSError(error, os.strerror(error))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, failing)


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EACCES], ids=["disk-full", "permission-denied"])
def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_last_one(error, tmp_path, monkeypatch, capsys):
    envs = ClosedEnvs(monkeypatch)
    # fsync ends the writing of each temp file: config.json, checkpoints at steps 0 and 64 succeed, the next fails
    fail_on_write(monkeypatch, atomic.os, "fsync", error, after=3)
    run = tmp_path / "run"
    code = main(["train", "--env", MEMORY, "--total-steps", "640", "--run-dir", str(run), *TINY])
    assert code == EXIT_IO
    line = one_error_line(capsys.readouterr().err)
    assert line == f"brims-rl: error: I/O error: {run / 'checkpoints' / 'latest.pt'}: {os.strerror(error)}"
    (state,) = assert_checkpoints_whole_and_finite(run)
    assert state["global_step"] == 64
    assert envs.opened == envs.closed == 1
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--total-steps", "192"]) == 0  # resumable once the disk is fixed
    assert checkpoint.load(run / "checkpoints" / "latest.pt")["global_step"] == 192


def test_tensorboard_events_that_cannot_be_written_end_the_run_with_one_line(tmp_path, monkeypatch, capsys):
    from tensorboard.summary.writer import record_writer

    envs = ClosedEnvs(monkeypatch)
    fail_on_write(monkeypatch, record_writer.RecordWriter, "write",
                  errno.ENOSPC, after=12)
    run = tmp_path / "run"
    code = main(["train", "--env", MEMORY, "--total-steps", "6400", "--run-dir", str(run), *TINY])
    assert code == EXIT_IO
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"brims-rl: error: I/O error: {run}") and "No space left on device" in line
    assert_checkpoints_whole_and_finite(run)
    assert envs.opened == envs.closed == 1


def test_a_vanished_run_folder_is_one_line_and_not_recreated(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real_log = trainer_module.Trainer._log

    def log_then_vanish(self, *args, **kwargs):
        real_log(self, *args, **kwargs)
        if self.global_step == 128:
            self.run_dir.rename(self.run_dir.with_name("moved"))  # gone in one step, under the writer's feet

    monkeypatch.setattr(trainer_module.Trainer, "_log", log_then_vanish)
    code = main(["train", "--env", MEMORY, "--total-steps", "640", "--run-dir", str(run), *TINY])
    assert code == EXIT_IO
    line = one_error_line(capsys.readouterr().err)
    # the checkpoint (or, if its thread writes first, the TensorBoard writer) finds the folder gone
    assert str(run) in line and "No such file or directory" in line
    assert not run.exists()  # not silently re-created
    assert checkpoint.load(tmp_path / "moved" / "checkpoints" / "latest.pt")["global_step"] == 64


def mount_tmpfs(path: Path, size_bytes: int, read_only: bool = False) -> None:
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size_bytes}" + (",ro" if read_only else "")
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")


@pytest.fixture
def tmpfs(tmp_path):
    mounts: list[Path] = []

    def mount(name: str, size_bytes: int, read_only: bool = False) -> Path:
        path = tmp_path / name
        mount_tmpfs(path, size_bytes, read_only)
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", str(path)], check=False)


def test_a_really_full_disk_ends_the_run_with_one_line(tmp_path, tmpfs):
    probe = tmp_path / "probe"
    assert cli("train", "--env", MEMORY, "--total-steps", "64", "--run-dir", str(probe), *TINY).returncode == 0
    size = (probe / "checkpoints" / "latest.pt").stat().st_size
    # room for one checkpoint and the logs, not for the temp file of a second one beside it
    disk = tmpfs("disk", size * 3 // 2 + 64 * 1024)
    run = disk / "run"
    result = cli("train", "--env", MEMORY, "--total-steps", "640", "--run-dir", str(run), *TINY)
    assert result.returncode == EXIT_IO, result.stderr[-3000:]
    line = one_error_line(result.stderr)
    assert "No space left on device" in line and str(run) in line
    assert_checkpoints_whole_and_finite(run)
    rescued = tmp_path / "rescued"
    shutil.copytree(run, rescued)
    resumed = cli("train", "--resume", str(rescued), "--total-steps", "192")
    assert resumed.returncode == 0, resumed.stderr[-3000:]


# ---- two trainings of one run folder ---------------------------------------------------------------------------
def test_a_run_folder_in_training_is_refused_to_a_second_training_and_left_as_it_was(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--env", MEMORY, "--total-steps", "64", "--run-dir", str(run), *TINY]) == 0
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    held = TrainingLock(run)  # what a training in another process holds on the folder
    try:
        result = cli("train", "--resume", str(run), "--total-steps", "128")
        assert result.returncode == 2
        assert one_error_line(result.stderr) == (
            f"brims-rl: error: {run} is being trained by another process; let it finish or stop it first (two "
            "processes training one run folder would overwrite each other's checkpoints)")
        assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    finally:
        held.release()
    assert main(["train", "--resume", str(run), "--total-steps", "128"]) == 0  # free again: it trains
    TrainingLock(run).release()  # and a finished training holds nothing


# ---- evaluate and compare --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def memory_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("faults") / "memory"
    assert main(["train", "--env", MEMORY, "--total-steps", "64", "--run-dir", str(run), *TINY]) == 0
    return run


def test_eval_json_that_cannot_be_written_is_one_line(memory_run, monkeypatch, capsys):
    import brims_rl.evaluation.play as evaluate_module

    envs = ClosedEnvs(monkeypatch)
    monkeypatch.setattr(evaluate_module, "make_vec_env", assembly.make_vec_env)
    fail_on_write(monkeypatch, atomic.os, "fsync", errno.ENOSPC, after=0)
    before = sorted(p.name for p in memory_run.iterdir())
    code = main(["evaluate", str(memory_run), "--episodes", "2", "--num-envs", "2"])
    assert code == EXIT_IO
    line = one_error_line(capsys.readouterr().err)
    # eval.json goes to the run folder, else next to the checkpoint: both attempts are named
    assert str(memory_run / "eval.json") in line and "No space left on device" in line
    assert str(memory_run / "checkpoints" / "eval.json") in line
    assert sorted(p.name for p in memory_run.iterdir()) == before  # no eval.json, no temp file
    assert envs.opened == envs.closed == 1


def test_compare_into_a_read_only_out_folder_is_one_line(memory_run, tmp_path, tmpfs):
    if os.geteuid() != 0:
        out = tmp_path / "out"
        out.mkdir()
        out.chmod(0o555)
    else:  # root ignores permissions: a read-only file system it is
        out = tmpfs("out", 1 << 20, read_only=True)
    result = cli("compare", str(memory_run), "--out", str(out))
    assert result.returncode == EXIT_IO, result.stderr[-3000:]
    line = one_error_line(result.stderr)
    # names the first output it could not write (a figure or compare.md), never a temporary name
    assert f"{out}/compare" in line and ".tmp" not in line
    assert "Read-only file system" in line or "Permission denied" in line
    assert list(out.iterdir()) == []


def test_compare_into_an_out_path_under_a_file_is_one_line(memory_run, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = cli("compare", str(memory_run), "--out", str(afile / "out"))
    assert result.returncode != 0
    one_error_line(result.stderr)


def test_a_video_on_a_full_disk_is_one_line_and_leaves_no_file(tmp_path, tmpfs):
    run = tmp_path / "breakout"
    assert main(["train", "--env", "Breakout", "--total-steps", "64", "--run-dir", str(run), *TINY]) == 0
    disk = tmpfs("disk", 64 * 1024)
    (disk / "filler").write_bytes(b"\0" * 48 * 1024)  # ffmpeg's own write errors never reach Python
    result = cli("evaluate", str(run), "--episodes", "1", "--num-envs", "1", "--max-episode-steps", "200",
                 "--video", str(disk / "game.mp4"))
    assert result.returncode == EXIT_IO, result.stderr[-3000:]
    line = one_error_line(result.stderr)
    assert str(disk / "game.mp4") in line
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # neither the video nor its temp file


def test_a_figure_that_cannot_be_written_leaves_no_temp_file(tmp_path, monkeypatch):
    """compare's figures are written like checkpoints; a full disk leaves no temp file and the error names the figure."""
    from brims_rl.compare import figures

    def full_disk(src, dst):  # the temp file is written; moving it into place fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full_disk)
    fig = figures._pyplot().figure()
    with pytest.raises(OSError, match="No space left") as raised:
        figures._save(fig, tmp_path / "compare_intervals.png")
    assert raised.value.filename == str(tmp_path / "compare_intervals.png")
    assert list(tmp_path.iterdir()) == []
