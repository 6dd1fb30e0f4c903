"""Every recurrent core learns a task that needs memory, with default PPO settings; a memoryless agent cannot.

CueMemory: a cue (one of two) is shown at the first step, then 4 blank steps, then a query where the action must
name the cue: +1 if right, -1 if wrong. Without memory the expected return is 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # minutes of training: `pytest -m "not slow"` skips them

MEMORY = "brims_rl.environments.memory:CueMemory-v0"
STEPS = 36_864  # 36 updates of the default 8 envs x 128 steps
CORES = ["brims", "rims", "lstm", "gru", "ff"]  # longest first


def final_return(run: Path) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("charts/episodic_return")
    last = [e.value for e in events if e.step > STEPS - 4096]  # the last four updates (~600 episodes)
    assert len(last) > 100
    return float(np.mean(last))


@pytest.fixture(scope="module")
def returns(tmp_path_factory) -> dict[str, float]:
    """Each core trained once with default PPO settings and its preset (the modular presets compile their step).

    The runs are separate processes of one thread each, as many at once as there are cores (at most two): these
    small models gain little from a second thread, so the five runs take about half the time of running them in turn.
    """
    root = tmp_path_factory.mktemp("memory")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    slots = max(1, min(2, os.cpu_count() or 1))
    pending, running, results = list(CORES), {}, {}
    try:
        while pending or running:
            while pending and len(running) < slots:
                core = pending.pop(0)
                command = [sys.executable, "-m", "brims_rl", "train", "--env", MEMORY, "--core", core,
                           "--total-steps", str(STEPS), "--run-dir", str(root / core)]
                log = open(root / f"{core}.log", "w")
                running[core] = (subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log)
            time.sleep(0.5)
            for core, (proc, log) in list(running.items()):
                if proc.poll() is not None:
                    log.close()
                    del running[core]
                    output = (root / f"{core}.log").read_text()[-3000:]
                    assert proc.returncode == 0, f"{core} training failed:\n{output}"
                    results[core] = final_return(root / core)
    finally:  # a failed run ends the others too
        for proc, log in running.values():
            proc.kill()
            proc.wait()
            log.close()
    return results


def test_memoryless_agent_stays_at_chance(returns):
    assert abs(returns["ff"]) < 0.3


@pytest.mark.parametrize("core", ["lstm", "gru", "rims", "brims"])
def test_recurrent_core_learns_the_memory_task(core, returns):
    assert returns[core] > 0.8
    assert returns[core] - returns["ff"] > 0.6
