"""Data-parallel training under torchrun (gloo on CPU): global steps, ranks in sync, rank 0 alone writes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from brims_rl import checkpoint
from brims_rl.cli import main

MEMORY = "brims_rl.environments.memory:CueMemory-v0"
TINY = ["--set", "ppo.num_steps=32", "--set", "ppo.num_minibatches=2", "--set", "ppo.update_epochs=2"]


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "brims_rl", "train", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.parametrize("core", ["lstm", "brims"])
def test_two_processes_train_one_agent_and_resume(core, tmp_path):
    run = tmp_path / "run"
    extra = ["--set", "core.options.compile=false"] if core == "brims" else []
    result = torchrun(2, "--env", MEMORY, "--core", core, "--num-envs", "2", "--total-steps", "256",
                      "--run-dir", str(run), *TINY, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "weights on all 2 ranks identical" in result.stdout
    state = checkpoint.load(run / "checkpoints" / "latest.pt")
    # each update: 2 ranks x 2 envs x 32 steps = 128 global steps
    assert state["global_step"] == 256 and state["updates"] == 2
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # one writer: rank 0

    resumed = torchrun(2, "--resume", str(run), "--total-steps", "512", *extra)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "weights on all 2 ranks identical" in resumed.stdout
    assert checkpoint.load(run / "checkpoints" / "latest.pt")["global_step"] == 512


def test_one_process_under_torchrun_is_a_plain_run(tmp_path):
    common = ["--env", MEMORY, "--num-envs", "2", "--total-steps", "128", "--seed", "3", *TINY]
    assert torchrun(1, *common, "--run-dir", str(tmp_path / "torchrun")).returncode == 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same thread count as the torchrun worker, so the float maths matches
    try:
        assert main(["train", *common, "--run-dir", str(tmp_path / "plain")]) == 0
    finally:
        torch.set_num_threads(threads)
    a = checkpoint.load(tmp_path / "torchrun" / "checkpoints" / "latest.pt")
    b = checkpoint.load(tmp_path / "plain" / "checkpoints" / "latest.pt")
    assert a["global_step"] == b["global_step"] == 128
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_bad_input_under_torchrun_is_one_error_per_rank_and_no_hang(tmp_path):
    result = torchrun(2, "--resume", str(tmp_path / "nowhere"))
    assert result.returncode != 0
    # Rank 0 finds the error and hands it to rank 1: both print the one line and exit 2. (torchrun then reports
    # the failed workers in its own words, which brims-rl does not control.)
    assert result.stderr.count("brims-rl: error: ") == 2 and "no config.json" in result.stderr
    assert "exitcode  : 2" in result.stderr
    assert 'brims_rl/' not in "".join(line for line in result.stderr.splitlines() if line.strip().startswith("File"))


def test_an_error_on_rank_0_alone_ends_every_rank(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    # Only rank 0 creates the run folder, so only rank 0 meets the error; it hands it to the others, so that every
    # rank stops with the one line and exit 2 (not with a broken collective's traceback, whichever exits first).
    result = torchrun(2, "--env", MEMORY, "--num-envs", "2", "--total-steps", "256",
                      "--run-dir", str(afile / "run"), *TINY)
    assert result.returncode != 0
    assert "cannot write the run folder" in result.stderr and "exitcode  : 2" in result.stderr
    assert "exitcode  : 1" not in result.stderr and "[rank1]: Traceback" not in result.stderr


def test_a_two_rank_update_equals_the_average_of_the_two_halves_in_one_process(tmp_path):
    """Checked here from the weights themselves, not from the program's own "identical" line."""
    from ddp_update import DROPPED, Agent, Rollout, columns, config, update

    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             os.path.join(tests, "ddp_update.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    batch = torch.load(tmp_path / "batch.pt", weights_only=False)
    agent = Agent((5,), 3, config())
    agent.load_state_dict(batch["agent"])
    rollout = Rollout(**batch["rollout"])
    start = agent.state_dict()
    # SGD: each half's own step is -lr * its gradient, so the data-parallel step is the mean of the two steps
    halves = [update(agent, columns(rollout, cols)).state_dict() for cols in ([0, 1], [2, 3])]
    for scenario in ("plain", "drop"):
        ranks = [torch.load(tmp_path / f"rank{r}_{scenario}.pt") for r in (0, 1)]
        for name in start:
            step_a, step_b = halves[0][name] - start[name], halves[1][name] - start[name]
            if scenario == "drop" and name == DROPPED:
                step_b = torch.zeros_like(step_b)  # rank 1 had no gradient there: it counts as zero
            expected = start[name] + (step_a + step_b) / 2
            assert torch.equal(ranks[0][name], ranks[1][name]), (scenario, name)  # ranks in sync
            largest = max(float((step_a.abs() + step_b.abs()).max()), 1e-12)
            assert float((step_a - step_b).abs().max()) > 1e-3 * largest or name.endswith("bias_hh"), name
            torch.testing.assert_close(ranks[0][name], expected, rtol=0, atol=1e-4 * largest,
                                       msg=lambda m: f"{scenario} {name}: {m}")
