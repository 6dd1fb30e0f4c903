"""`train --track`: Weights & Biases mirrors the TensorBoard scalars and config.json (offline, no network)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from brims_rl.cli import main

MEMORY = "brims_rl.environments.memory:CueMemory-v0"
TINY = ["--num-envs", "2", "--total-steps", "128", "--set", "ppo.num_steps=32", "--set", "ppo.num_minibatches=2",
        "--set", "ppo.update_epochs=1"]


def wandb_records(path: Path):
    """The Record protos of an offline W&B run file (a LevelDB-style log: 7-byte file header, then 32 KiB blocks of
    chunks with a 7-byte header: CRC-32, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # block padding
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def run_train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wb"), "WANDB_SILENT": "true",
           "OMP_NUM_THREADS": "1"}
    (tmp_path / "wb").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "brims_rl", "train", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)


def test_track_offline_holds_the_config_and_the_scalars(tmp_path):
    pytest.importorskip("wandb")
    run = tmp_path / "myrun"
    result = run_train(tmp_path, "--env", MEMORY, *TINY, "--set", "ppo.learning_rate=0.000123", "--run-dir", str(run),
                       "--track", "--wandb-project", "proj", "--wandb-group", "grid-1")
    assert result.returncode == 0, result.stderr[-3000:]
    (offline,) = (tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb")
    assert not (run / "wandb").exists()  # W&B's files stay out of the run folder
    records = list(wandb_records(offline))
    (info,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (info.display_name, info.project, info.run_group) == ("myrun", "proj", "grid-1")
    config = {item.key: json.loads(item.value_json) for item in info.config.update}
    saved = json.loads((run / "config.json").read_text())
    for key in ("env", "core", "ppo", "total_steps", "seed"):
        assert config[key] == saved[key], key  # the W&B config is config.json
    assert config["ppo"]["learning_rate"] == 0.000123
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    steps = [h["global_step"] for h in history if "losses/value_loss" in h]
    assert steps == [64, 128]  # one PPO update per 64 steps, under CleanRL's TensorBoard tag and step
    assert any("charts/episodic_return" in h for h in history)


def test_track_without_wandb_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    run = tmp_path / "run"
    code = main(["train", "--env", MEMORY, *TINY, "--run-dir", str(run), "--track"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [f"brims-rl: error: --track needs the wandb package: "
                                        f'pip install -e ".[wandb]" (or pip install wandb)']
    assert not run.exists()


def test_wandb_options_need_track(tmp_path, capsys):
    code = main(["train", "--env", MEMORY, *TINY, "--run-dir", str(tmp_path / "run"), "--wandb-group", "g"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("brims-rl: error: --wandb-group only applies with --track")
    assert not (tmp_path / "run").exists()


def test_only_rank_0_tracks_under_torchrun(tmp_path):
    pytest.importorskip("wandb")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "brims_rl",
               "train", "--env", MEMORY, *TINY, "--run-dir", str(tmp_path / "run"), "--track"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1
