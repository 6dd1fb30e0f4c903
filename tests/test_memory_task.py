"""Every recurrent core learns a task that needs memory, with default PPO settings; a memoryless agent cannot.

CueMemory: a cue (one of two) is shown at the first step, then 4 blank steps, then a query where the action must
name the cue: +1 if right, -1 if wrong. Without memory the expected return is 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brims_rl.cli import main

pytestmark = pytest.mark.slow  # minutes of training: `pytest -m "not slow"` skips them

MEMORY = "brims_rl.environments.memory:CueMemory-v0"
STEPS = 36_864  # 36 updates of the default 8 envs x 128 steps


def final_return(run: Path) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("charts/episodic_return")
    last = [e.value for e in events if e.step > STEPS - 4096]  # the last four updates (~600 episodes)
    assert len(last) > 100
    return float(np.mean(last))


@pytest.fixture(scope="module")
def memoryless_return(tmp_path_factory) -> float:
    run = tmp_path_factory.mktemp("memory") / "ff"
    assert main(["train", "--env", MEMORY, "--core", "ff", "--total-steps", str(STEPS), "--run-dir", str(run)]) == 0
    return final_return(run)


def test_memoryless_agent_stays_at_chance(memoryless_return):
    assert abs(memoryless_return) < 0.3


@pytest.mark.parametrize("core", ["lstm", "gru", "rims", "brims"])
def test_recurrent_core_learns_the_memory_task(core, memoryless_return, tmp_path):
    run = tmp_path / core
    # Default PPO settings and presets. The modular presets compile their step (measured on 2 busy Xeon cores: BRIMs
    # 455 -> 227 CPU seconds, RIMs 150 -> 113, compile time included); without a C++ compiler they run eagerly.
    assert main(["train", "--env", MEMORY, "--core", core, "--total-steps", str(STEPS), "--run-dir", str(run)]) == 0
    learned = final_return(run)
    assert learned > 0.8
    assert learned - memoryless_return > 0.6
