"""`brims-rl train` end to end: real Atari runs on both backends, resume, interrupt, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from brims_rl import checkpoint
from brims_rl.cli import main

MEMORY = "brims_rl.environments.memory:CueMemory-v0"
TINY = ["--set", "ppo.num_steps=32", "--set", "ppo.num_minibatches=2", "--set", "ppo.update_epochs=1"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "brims_rl", *args], capture_output=True, text=True, timeout=300)


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


@pytest.mark.parametrize("backend", ["envpool", "ale"])
def test_tiny_atari_run_writes_config_logs_and_checkpoints(backend, tmp_path):
    run = tmp_path / "run"
    code = main(["train", "--env", "Breakout", "--env-backend", backend, "--core", "lstm", "--num-envs", "2",
                 "--total-steps", "128", "--run-dir", str(run), *TINY])
    assert code == 0
    config = json.loads((run / "config.json").read_text())
    assert config["env"]["id"] == "Breakout" and config["env"]["backend"] == backend
    assert config["env"]["episodic_life"] and config["core"]["name"] == "lstm"
    state = checkpoint.load(run / "checkpoints" / "latest.pt")
    assert state["global_step"] == 128 and state["updates"] == 2
    tags = {"charts/SPS", "charts/learning_rate", "losses/value_loss", "losses/policy_loss", "losses/entropy",
            "losses/approx_kl", "losses/clipfrac", "losses/explained_variance"}
    for tag in tags:
        assert [step for step, _ in scalars(run, tag)] == [64, 128], tag


def test_resume_continues_steps_and_learning_rate_schedule(tmp_path):
    common = ["--env", MEMORY, "--num-envs", "2", "--set", "latest_every_s=0", *TINY]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", "--total-steps", "256", "--run-dir", str(straight), *common]) == 0
    assert main(["train", "--total-steps", "128", "--run-dir", str(split), *common]) == 0
    assert checkpoint.load(split / "checkpoints" / "latest.pt")["global_step"] == 128
    assert main(["train", "--resume", str(split), "--total-steps", "256", *TINY]) == 0
    state = checkpoint.load(split / "checkpoints" / "latest.pt")
    assert state["global_step"] == 256 and state["updates"] == 4
    assert json.loads((split / "config.json").read_text())["total_steps"] == 256
    # The schedule anneals over the final total: resuming with a raised total re-plans the remaining decay.
    lrs = dict(scalars(split, "charts/learning_rate"))
    assert sorted(lrs) == [64, 128, 192, 256]
    assert lrs[192] == pytest.approx(2.5e-4 * (1 - 128 / 256))
    assert lrs[256] == pytest.approx(dict(scalars(straight, "charts/learning_rate"))[256])


def test_same_seed_same_run(tmp_path):
    finals = []
    for name in ("a", "b"):
        run = tmp_path / name
        assert main(["train", "--env", MEMORY, "--num-envs", "2", "--total-steps", "128", "--run-dir", str(run),
                     "--seed", "7", *TINY]) == 0
        finals.append(checkpoint.load(run / "checkpoints" / "latest.pt")["model"])
    for key in finals[0]:
        assert torch.equal(finals[0][key], finals[1][key]), key


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "brims_rl", "train", "--env", MEMORY, "--num-envs", "2",
                             "--total-steps", "10000000", "--run-dir", str(run), "--set", "latest_every_s=1000",
                             *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(run.glob("events.out.tfevents.*")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "interrupted at step" in out
    state = checkpoint.load(run / "checkpoints" / "latest.pt")
    assert 0 < state["global_step"] < 10_000_000
    assert not list((run / "checkpoints").glob(".*tmp"))  # no half-written file left behind


def test_sigkill_resumes_from_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "brims_rl", "train", "--env", MEMORY, "--num-envs", "2",
                             "--total-steps", "10000000", "--run-dir", str(run), "--set", "latest_every_s=0",
                             *TINY], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run / "checkpoints" / "latest.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not (latest.exists() and checkpoint.load(latest)["global_step"] > 0):
        time.sleep(0.1)
    time.sleep(0.5)  # kill at some moment while checkpoints keep being rewritten
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = checkpoint.load(latest)["global_step"]  # whatever moment the kill hit, the file is whole
    assert step > 0
    result = cli("train", "--resume", str(run), "--total-steps", str(step + 128))
    assert result.returncode == 0, result.stderr
    assert checkpoint.load(latest)["global_step"] == step + 128


BAD_INPUTS = [
    (["--env", "MsPacmn"], "MsPacman"),
    (["--core", "transformer"], "unknown core"),
    (["--total-steps", "0"], "total_steps must be positive"),
    (["--total-steps", "-5"], "must be positive"),
    (["--num-envs", "0"], "num_envs must be positive"),
    (["--num-envs", "6"], "divisible"),
    (["--total-steps", "abc"], "whole number"),
    (["--set", "ppo.learning_rate=-1"], "learning_rate must be positive"),
    (["--set", "ppo.nonsense=1"], "unknown setting"),
    (["--set", "ppo.gamma=1.5"], "gamma must be in [0, 1]"),
    (["--agent", "nope"], "unknown agent preset"),
    (["--env", "nosuchmodule_xyz:Foo-v0"], "nosuchmodule_xyz"),
    (["--device", "cuda:7"], "CUDA"),
    (["--device", "meta"], "unknown device"),
    (["--total-steps", "inf"], "whole number"),
    (["--seed", "1e20"], "seed must be in"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2(args, message, tmp_path):
    if args[:2] == ["--device", "cuda:7"] and torch.cuda.is_available():
        pytest.skip("CUDA present")
    result = cli("train", "--run-dir", str(tmp_path / "run"), "--total-steps", "64", *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_run_killed_before_its_first_checkpoint_resumes_from_scratch(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--env", MEMORY, "--num-envs", "2", "--total-steps", "64", "--run-dir", str(run),
                 *TINY]) == 0
    (run / "checkpoints" / "latest.pt").unlink()
    (run / "checkpoints").rmdir()  # as if killed between writing config.json and the step-0 checkpoint
    assert main(["train", "--resume", str(run), "--total-steps", "128"]) == 0
    assert checkpoint.load(run / "checkpoints" / "latest.pt")["global_step"] == 128


def test_run_dir_that_is_a_file(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    result = cli("train", "--env", MEMORY, "--run-dir", str(afile), "--total-steps", "64")
    assert result.returncode == 2 and "is a file" in result.stderr and "Traceback" not in result.stderr
    under = cli("train", "--env", MEMORY, "--run-dir", str(afile / "run"), "--total-steps", "64", *TINY)
    assert under.returncode == 2 and "cannot write the run folder" in under.stderr
    assert afile.read_text() == "keep me"


def test_bad_resume_targets(tmp_path):
    missing = cli("train", "--resume", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no config.json" in missing.stderr

    run = tmp_path / "run"
    assert main(["train", "--env", MEMORY, "--num-envs", "2", "--total-steps", "64", "--run-dir", str(run),
                 *TINY]) == 0
    latest = run / "checkpoints" / "latest.pt"
    good = latest.read_bytes()
    for content, why in [(good[: len(good) // 2], "readable"), (b"not a checkpoint", "readable")]:
        latest.write_bytes(content)
        result = cli("train", "--resume", str(run), "--total-steps", "128")
        assert result.returncode == 2 and why in result.stderr and "Traceback" not in result.stderr
        assert latest.read_bytes() == content  # nothing already written is touched
    torch.save({"some": "other file"}, latest)
    foreign = cli("train", "--resume", str(run), "--total-steps", "128")
    assert foreign.returncode == 2 and "not a brims-rl checkpoint" in foreign.stderr

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"format": checkpoint.FORMAT, "x": Evil()}, latest)
    evil = cli("train", "--resume", str(run), "--total-steps", "128")
    assert evil.returncode == 2 and not (tmp_path / "pwned").exists()  # loading never executes code
    assert "objects other than tensors" in evil.stderr

    again = cli("train", "--env", MEMORY, "--run-dir", str(run), "--total-steps", "64")
    assert again.returncode == 2 and "--resume" in again.stderr


def test_resume_restores_adam_rng_and_schedule_exactly_and_the_next_update_matches_an_uninterrupted_twin(tmp_path):
    """The resumed trainer's state equals the saved one, and one more update from it equals the same update by the
    trainer that wrote the checkpoint and simply went on (on the same rollout: env seeds shift on resume by design,
    so the episodes themselves differ)."""
    import copy

    from brims_rl.distributed import DistContext
    from brims_rl.ppo import ppo_update
    from brims_rl.configure import compose_config
    from brims_rl.trainer import Trainer

    config = compose_config(MEMORY, flags={("env", "num_envs"): 2, ("total_steps",): 128},
                         overrides=["ppo.num_steps=32", "ppo.num_minibatches=2", "ppo.update_epochs=2"])
    run = tmp_path / "run"
    twin = Trainer(config, run, DistContext(), None)
    assert twin.train() == 0  # two updates; its final state is what latest.pt holds
    saved = checkpoint.load(run / "checkpoints" / "latest.pt")
    assert saved["global_step"] == 128 and saved["updates"] == 2

    config.total_steps = 256  # as `--resume RUN --total-steps 256` does, for both
    twin.config.total_steps = 256
    resumed = Trainer(config, run, DistContext(), saved)
    try:
        # Adam: every moment and step count, exactly
        a, b = twin.optimizer.state_dict(), resumed.optimizer.state_dict()
        assert a["state"].keys() == b["state"].keys() and len(a["state"]) > 0
        for key in a["state"]:
            for name in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(a["state"][key][name], b["state"][key][name]), (key, name)
                assert torch.equal(saved["optimizer"]["state"][key][name], b["state"][key][name])
        assert float(b["state"][0]["step"]) == 2 * 2 * 2  # updates x epochs x minibatches
        # RNG streams: the global torch stream (actions) and the minibatch generator, as saved and as the twin's
        assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
        assert torch.equal(resumed.generator.get_state(), saved["rng"]["generator"])
        assert torch.equal(resumed.generator.get_state(), twin.generator.get_state())
        # schedule: step counters and the learning rate of the next update
        assert (resumed.global_step, resumed.updates) == (twin.global_step, twin.updates) == (128, 2)
        assert resumed._learning_rate() == twin._learning_rate() == pytest.approx(2.5e-4 * (1 - 128 / 256))

        # the next update, on one rollout, from both trainers
        resumed.collector.collect()
        rollout = resumed.collector.rollout
        for trainer in (twin, resumed):
            for group in trainer.optimizer.param_groups:
                group["lr"] = trainer._learning_rate()
            ppo_update(trainer.agent, trainer.optimizer, copy.deepcopy(rollout), config.ppo, trainer.generator)
        for (name, p), q in zip(twin.agent.named_parameters(), resumed.agent.parameters()):
            assert torch.equal(p, q), name
        moved = [not torch.equal(p, saved["model"][n]) for n, p in resumed.agent.named_parameters()]
        assert sum(moved) > len(moved) // 2  # the update did change the weights
    finally:
        resumed._close()
