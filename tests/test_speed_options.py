"""Speed options keep the maths: a compiled core step gives the same outputs, gradients and PPO losses."""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import subprocess
import sys

import pytest
import torch
import torch._dynamo

from brims_rl.agent import Agent
from brims_rl.cores import compile as core_compile
from brims_rl.cores import modular
from brims_rl.config import Config, PPOConfig
from brims_rl.ppo import ppo_update
from brims_rl.rollout import Collector
from scripted_env import ScriptedVecEnv


def agent_config(compile_core: bool) -> Config:
    config = Config()
    config.core.name = "rims"
    config.core.options = {"module_size": 8, "input_value_size": 16, "input_key_size": 8, "compile": compile_core}
    config.model.encoder_size = 16
    config.model.mlp_hidden = 16
    config.ppo = PPOConfig(num_steps=16, num_minibatches=2, update_epochs=2)
    return config


def test_compiled_core_gives_the_same_ppo_losses_as_eager(monkeypatch):
    torch.manual_seed(0)
    eager = Agent((5,), 3, agent_config(False))
    compiled = Agent((5,), 3, agent_config(True))
    compiled.load_state_dict(eager.state_dict())

    collector = Collector(ScriptedVecEnv(num_envs=4), eager, 16, torch.device("cpu"))
    collector.collect()
    rollout = collector.rollout
    results = []
    for agent in (eager, compiled):
        optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
        stats = ppo_update(agent, optimizer, copy.deepcopy(rollout), agent_config(False).ppo,
                           torch.Generator().manual_seed(0))
        results.append((dataclasses.asdict(stats), agent.state_dict()))
    assert not core_compile.compile_failed()  # the compiled path really ran, it did not fall back to eager
    (stats_e, weights_e), (stats_c, weights_c) = results
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac"):
        assert stats_c[key] == pytest.approx(stats_e[key], rel=1e-4, abs=1e-6), key
    for key in weights_e:
        torch.testing.assert_close(weights_c[key], weights_e[key], atol=1e-5, rtol=1e-4)


def small_core(compile_core: bool) -> modular.ModularCore:
    return modular.ModularCore(6, num_layers=2, num_modules=3, top_k=2, module_size=8, input_key_size=8,
                               input_value_size=8, comm_key_size=4, comm_value_size=4, comm_heads=2,
                               compile=compile_core)


def core_outputs(core: modular.ModularCore, x: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y, state = core(x, core.initial_state(x.shape[1]), starts)
    return torch.cat([y.flatten(), *(s.flatten() for s in state)])


def test_a_deepcopied_or_pickled_compiled_core_runs_its_own_weights():
    torch.manual_seed(0)
    x, starts = torch.randn(5, 3, 6), torch.zeros(5, 3, dtype=torch.bool)
    starts[0] = starts[3, 1] = True
    original = small_core(True)
    core_outputs(original, x, starts)  # compile with the original's weights first

    copy_ = copy.deepcopy(original)
    with torch.no_grad():
        for p in copy_.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # the copy's weights now differ from the original's
    eager = small_core(False)
    eager.load_state_dict(copy_.state_dict())
    expected = core_outputs(eager, x, starts)
    got = core_outputs(copy_, x, starts)
    assert not torch.allclose(expected, core_outputs(original, x, starts), atol=1e-3)  # the change shows
    # compiled kernels fuse and reorder float32 ops: a tolerance of ~1e-4 of the outputs' scale, far below the O(0.1)
    # that running the wrong weights gives
    tol = 1024 * torch.finfo(torch.float32).eps * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(got, expected, atol=tol, rtol=0)

    unpickled = pickle.loads(pickle.dumps(copy_))
    torch.testing.assert_close(core_outputs(unpickled, x, starts), expected, atol=tol, rtol=0)

    loaded = small_core(True)  # load_state_dict into a compiled core
    loaded.load_state_dict(copy_.state_dict())
    torch.testing.assert_close(core_outputs(loaded, x, starts), expected, atol=tol, rtol=0)
    assert not core_compile.compile_failed()
    assert torch._dynamo.config.suppress_errors is False  # no process-wide dynamo setting was changed


def test_compile_modes_are_checked_and_a_named_mode_computes_what_eager_does():
    for bad in (1, "fast", None):
        with pytest.raises(ValueError, match="compile must be"):
            small_core(bad)
    assert small_core(True).compile_step == "default" and small_core(False).compile_step is None
    torch.manual_seed(0)
    x, starts = torch.randn(5, 3, 6), torch.zeros(5, 3, dtype=torch.bool)
    starts[0] = starts[2, 1] = True
    eager = small_core(False)
    named = small_core("reduce-overhead")  # on CPU: compiled as "default", no CUDA graphs
    named.load_state_dict(eager.state_dict())
    expected = core_outputs(eager, x, starts)
    tol = 1024 * torch.finfo(torch.float32).eps * max(1.0, expected.abs().max().item())  # as in the test above
    torch.testing.assert_close(core_outputs(named, x, starts), expected, atol=tol, rtol=0)
    assert "reduce-overhead" in core_compile.compiled_modes() and not core_compile.compile_failed()


FALLBACK = """
import torch
from brims_rl.cores.modular import ModularCore
torch.manual_seed(0)
core = ModularCore(6, num_layers=1, num_modules=3, top_k=2, module_size=8, compile=True)
eager = ModularCore(6, num_layers=1, num_modules=3, top_k=2, module_size=8, compile=False)
eager.load_state_dict(core.state_dict())
x, starts = torch.randn(4, 2, 6), torch.ones(4, 2, dtype=torch.bool)
with torch.no_grad():
    a, b = core(x, core.initial_state(2), starts)[0], eager(x, eager.initial_state(2), starts)[0]
    core(x, core.initial_state(2), starts)
print("equal", torch.equal(a, b))
"""


def test_a_failed_compile_warns_in_one_line_and_runs_eagerly(tmp_path):
    # No C++ compiler: inductor cannot build its kernels. A fresh cache dir so no earlier build is reused.
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "CC": str(tmp_path / "no-such-compiler"),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "equal True"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("brims-rl: warning: torch.compile of _step_all_layers failed"), result.stderr[-3000:]


TRAIN_WITHOUT_COMPILER = """
import sys
from brims_rl.cli import main
sys.exit(main(["train", "--env", "CueMemory-v0", "--core", "rims", "--total-steps", "256", "--num-envs", "4",
               "--set", "ppo.num_steps=32", "--set", "ppo.num_minibatches=2", "--run-dir", sys.argv[1]]))
"""


def test_a_run_whose_compile_fails_says_so_once_on_stderr_and_in_tensorboard(tmp_path):
    """No silent slow path: a compiled core that falls back to eager (here: no C++ compiler) prints one warning
    line, and the run's event files count the fallbacks (perf/compile_fallbacks) and hold each one's text."""
    from brims_rl.compare.tbdata import read_run_scalars

    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "CC": str(tmp_path / "no-such-compiler"),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", TRAIN_WITHOUT_COMPILER, str(run)], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("brims-rl: warning: torch.compile")]
    assert len(warnings) == 1, result.stderr[-3000:]
    counts = read_run_scalars(run)["perf/compile_fallbacks"].values
    assert counts[-1] >= 2  # the acting step and the training path's loop, at least
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"tensors": 0})
    events.Reload()
    texts = [event.tensor_proto.string_val[0].decode() for tag in events.Tags()["tensors"]
             if tag.startswith("perf/compile_fallback") for event in events.Tensors(tag)]
    assert len(texts) == counts[-1] and all("runs eagerly" in text for text in texts)
