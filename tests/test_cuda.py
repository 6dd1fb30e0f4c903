"""CUDA correctness (run by scripts/gpu_check.sh on a GPU machine; skipped without CUDA).

The GPU path must compute what the CPU path computes: same forward within float32 rounding, an exact replay (PPO's
first ratio is 1), identical rollouts with and without pinned staging, and checkpoints that move between devices.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from brims_rl.agent import Agent
from brims_rl.checkpoint import find_checkpoint, load
from brims_rl.cli import main
from brims_rl.config import Config, PerfConfig, PPOConfig
from brims_rl.learner import Learner
from brims_rl.ppo import make_optimizer, ppo_update
from brims_rl.rollout import Collector
from brims_rl.runtime import seed_everything
from brims_rl.speedups import PinnedTransfer, speed_up_acting
from scripted_env import ScriptedVecEnv

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")]
CUDA = torch.device("cuda")
CORES = ["ff", "lstm", "gru", "rims", "brims"]
MODULAR = {"module_size": 8, "input_value_size": 16, "input_key_size": 8, "comm_key_size": 8, "comm_value_size": 8}


def small_config(core: str, compile_core: bool = False) -> Config:
    config = Config()
    config.core.name = core
    if core in ("rims", "brims"):
        config.core.options = {**MODULAR, "compile": compile_core}
    elif core != "ff":
        config.core.options = {"hidden_size": 16}
    config.model.encoder_size = 32
    config.model.mlp_hidden = 16
    config.ppo = PPOConfig(num_steps=32, num_minibatches=2, update_epochs=2)
    return config


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


@pytest.fixture(autouse=True)
def exact_float32():
    seed_everything(0, deterministic=True, tf32=False)
    yield


@pytest.mark.parametrize("core", CORES)
def test_cuda_forward_matches_cpu(core):
    torch.manual_seed(0)
    cpu = Agent((4, 84, 84), 6, small_config(core))
    gpu = copy.deepcopy(cpu).to(CUDA)
    obs = torch.randint(0, 256, (12, 4, 4, 84, 84), dtype=torch.uint8)
    starts = torch.zeros(12, 4, dtype=torch.bool)
    starts[0] = starts[5, 1] = True
    state = cpu.initial_state(4)
    with torch.no_grad():
        logits_c, values_c, _ = cpu(obs, state, starts)
        logits_g, values_g, _ = gpu(obs.to(CUDA), tuple(s.to(CUDA) for s in state), starts.to(CUDA))
    # float32 on both sides: agreement far below 1e-3 relative (a flipped top-k selection would be ~1e-1)
    assert relative_error(logits_g, logits_c) < 1e-4
    assert relative_error(values_g, values_c) < 1e-4


@pytest.mark.parametrize("core,compile_core", [(c, False) for c in CORES] + [("rims", True), ("brims", True)])
def test_cuda_replay_is_exact(core, compile_core):
    """Replaying the rollout's env columns from its stored state gives its log-probs: first approx_kl ~ 0."""
    torch.manual_seed(0)
    config = small_config(core, compile_core)
    agent = Agent((5,), 3, config).to(CUDA)
    with torch.no_grad():
        agent.actor.weight.normal_(0.0, 30.0)  # confident policy: replay errors show in the log-probs
    collector = Collector(ScriptedVecEnv(num_envs=4), agent, config.ppo.num_steps, CUDA)
    collector.collect()
    collector.collect()
    r = collector.rollout
    with torch.no_grad():  # as PPO replays: with the selections the core recorded while acting
        logits, values, _ = agent(r.obs, r.initial_state, r.starts, r.decisions)
    if r.decisions is not None:  # RIMs/BRIMs: every selection of the replay is the rollout's
        assert torch.equal(agent.last_decisions(), r.decisions)
    logprobs = torch.distributions.Categorical(logits=logits).log_prob(r.actions)
    scale = float(logits.abs().max())  # log-prob rounding grows with the logits' magnitude
    assert float((logprobs - r.logprobs).abs().max()) <= 1e-5 * max(scale, 1.0)
    stats = ppo_update(agent, make_optimizer(agent, config.ppo, CUDA), r, config.ppo,
                       torch.Generator().manual_seed(0))
    assert stats.first_approx_kl < 1e-6
    assert math.isfinite(stats.policy_loss) and math.isfinite(stats.value_loss)


def test_pinned_staging_gives_the_same_rollout():
    rollouts = []
    for pinned in (True, False):
        torch.manual_seed(0)
        config = small_config("lstm")
        agent = Agent((5,), 3, config).to(CUDA)
        collector = Collector(ScriptedVecEnv(num_envs=4, seed=3), agent, 16, CUDA)
        speed_up_acting(collector, PerfConfig(pinned_memory=pinned, cuda_graph=False))
        assert isinstance(collector.transfer, PinnedTransfer) == pinned
        collector.collect()
        collector.collect()
        rollouts.append(collector.rollout)
    a, b = rollouts
    for name in ("obs", "starts", "actions", "logprobs", "values", "rewards", "terminated", "truncated", "ignored"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_bf16_cnn_is_close_to_float32():
    torch.manual_seed(0)
    config = small_config("lstm")
    fp32 = Agent((4, 84, 84), 6, config).to(CUDA)
    config.perf.cnn_bf16 = True
    bf16 = Agent((4, 84, 84), 6, config).to(CUDA)
    bf16.load_state_dict(fp32.state_dict())
    obs = torch.randint(0, 256, (64, 4, 84, 84), dtype=torch.uint8, device=CUDA)
    with torch.no_grad():
        a, b = fp32.encoder(obs), bf16.encoder(obs)
    assert b.dtype == torch.float32
    assert 0 < relative_error(b, a) < 2e-2  # bf16 keeps 8 bits of mantissa: ~1e-2 relative at worst


def test_fused_adam_matches_plain_adam():
    torch.manual_seed(0)
    config = small_config("lstm")
    a = Agent((5,), 3, config).to(CUDA)
    b = copy.deepcopy(a)
    fused = make_optimizer(a, config.ppo, CUDA)
    assert fused.defaults["fused"]
    plain = torch.optim.Adam(b.parameters(), lr=config.ppo.learning_rate, eps=config.ppo.adam_eps)
    for step in range(3):
        for agent, opt in ((a, fused), (b, plain)):
            torch.manual_seed(step)
            obs = torch.randn(8, 4, 5, device=CUDA)
            logits, values, _ = agent(obs, agent.initial_state(4, CUDA), torch.zeros(8, 4, dtype=torch.bool, device=CUDA))
            opt.zero_grad()
            (logits.square().mean() + values.square().mean()).backward()
            opt.step()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert relative_error(p, q) < 1e-5, name


def test_train_on_cuda_then_resume_on_cpu(tmp_path):
    run = tmp_path / "run"
    memory = "brims_rl.environments.memory:CueMemory-v0"
    tiny = ["--num-envs", "4", "--set", "ppo.num_steps=32", "--set", "ppo.num_minibatches=2"]
    assert main(["train", "--env", memory, "--core", "brims", "--device", "cuda", "--total-steps", "256",
                 "--run-dir", str(run), "--set", "core.options.compile=false", *tiny]) == 0
    state = load(find_checkpoint(run))
    assert state["global_step"] == 256
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert main(["train", "--resume", str(run), "--device", "cpu", "--total-steps", "384"]) == 0
    assert load(find_checkpoint(run))["global_step"] == 384


@pytest.mark.parametrize("core,compile_core", [("lstm", False), ("brims", False), ("brims", True)])
def test_graphed_policy_step_computes_the_eager_step(core, compile_core):
    from brims_rl.policy_graph import GraphedPolicyStep

    torch.manual_seed(0)
    agent = Agent((4, 84, 84), 6, small_config(core, compile_core)).to(CUDA)
    B = 8
    state = tuple(torch.randn_like(s) for s in agent.initial_state(B, CUDA))
    first = torch.zeros(B, dtype=torch.bool, device=CUDA)
    obs = torch.randint(0, 256, (B, 4, 84, 84), dtype=torch.uint8, device=CUDA)
    graphed = GraphedPolicyStep(agent, obs, state, first)
    for step in range(3):  # new inputs each time: the graph reads its static buffers, not the capture's values
        with torch.no_grad():  # and new weights, changed in place as the optimizer does: no stale derived weights
            for p in agent.parameters():
                p.add_(0.05 * torch.randn_like(p))
        obs = torch.randint(0, 256, (B, 4, 84, 84), dtype=torch.uint8, device=CUDA)
        first = torch.rand(B, device=CUDA) < 0.3
        action, logprob, value, new_state, decisions, _ = graphed(obs, state, first)
        with torch.no_grad():
            logits, value_e, state_e = agent(obs.unsqueeze(0), state, first.unsqueeze(0))
        if agent.decision_size:  # the same kernels on the same shapes select the same modules
            assert torch.equal(decisions, agent.last_decisions()[0])
        logprob_e = torch.distributions.Categorical(logits=logits[0]).log_prob(action)
        assert relative_error(value, value_e[0]) < 1e-5
        assert relative_error(logprob, logprob_e) < 1e-5
        for a, b in zip(new_state, state_e):
            assert relative_error(a, b) < 1e-5
        state = new_state


@pytest.mark.parametrize("core", ["lstm", "gru", "brims"])
def test_graphed_collector_replays_exactly(core):
    torch.manual_seed(0)
    config = small_config(core)
    agent = Agent((5,), 3, config).to(CUDA)
    collector = Collector(ScriptedVecEnv(num_envs=4), agent, config.ppo.num_steps, CUDA)
    speed_up_acting(collector, PerfConfig(cuda_graph=True))
    assert collector.graphed is not None
    collector.collect()
    collector.collect()
    if core == "brims":  # diagnostics counted at every replay of the graph; decisions recorded from its outputs
        diagnostics = agent.core.diagnostics()
        for l, layer in enumerate(agent.core.layers):
            fractions = [diagnostics[f"layer{l}/module{k}_active"] for k in range(layer.num_modules)]
            assert sum(fractions) == pytest.approx(layer.top_k, rel=1e-6)
        assert (collector.rollout.decisions.sum(-1) == sum(l.top_k for l in agent.core.layers)).all()
    stats = ppo_update(agent, make_optimizer(agent, config.ppo, CUDA), collector.rollout, config.ppo,
                       torch.Generator().manual_seed(0))
    assert stats.first_approx_kl < 1e-6


def test_a_core_with_python_side_diagnostics_keeps_the_eager_step():
    brims = Agent((5,), 3, small_config("brims")).to(CUDA)
    brims.core.capturable_diagnostics = False  # as a core whose diagnostics run Python at every step would say
    collector = Collector(ScriptedVecEnv(num_envs=4), brims, 8, CUDA)
    speed_up_acting(collector, PerfConfig(cuda_graph=True))
    assert collector.graphed is None


@pytest.mark.parametrize("core,compile_core", [("brims", False), ("brims", True), ("rims", True)])
def test_graphed_minibatch_update_is_the_eager_update(core, compile_core):
    """perf.cuda_graph_update: each minibatch's forward, loss and backward replayed from one captured graph give
    the eager update's losses and weights, over two updates (the second reuses the captured graph)."""
    from brims_rl import minibatch_graph

    torch.manual_seed(0)
    config = small_config(core, compile_core)
    eager = Agent((5,), 3, config).to(CUDA)
    graphed = copy.deepcopy(eager)
    collector = Collector(ScriptedVecEnv(num_envs=4), eager, config.ppo.num_steps, CUDA)
    optimizers = [make_optimizer(a, config.ppo, CUDA) for a in (eager, graphed)]
    for update in range(2):
        collector.collect()
        stats = [Learner(a, opt, config.ppo, cuda_graph=flag).update(collector.rollout,
                                                                     torch.Generator().manual_seed(update))
                 for a, opt, flag in zip((eager, graphed), optimizers, (False, True))]
        assert minibatch_graph._minibatch_graphs[graphed][1] is not None  # captured, not fallen back
        for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac"):
            assert getattr(stats[1], key) == pytest.approx(getattr(stats[0], key), rel=1e-4, abs=1e-6), key
        for p, q in zip(eager.parameters(), graphed.parameters()):
            assert relative_error(q, p) < 1e-4
        with torch.no_grad():  # the next rollout is collected by the eager agent: keep the two in step
            for p, q in zip(eager.parameters(), graphed.parameters()):
                q.copy_(p)


@pytest.mark.parametrize("compile_core", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cuda_sequence_path_computes_what_cpu_step_by_step_computes(cell, compile_core):
    """The RIMs/BRIMs training path on CUDA (a Python loop of steps there; compiled steps with `compile`) against
    the plain computation on the CPU, float64: outputs, final state and every gradient."""
    torch.manual_seed(0)
    options = dict(num_layers=2, num_modules=5, top_k=3, module_size=[4, 8], input_value_size=8, input_key_size=8,
                   comm_key_size=4, comm_value_size=4, cell=cell, top_down_slots="layer")
    from brims_rl.cores import make_core

    cpu = make_core("brims", 10, **options).double()
    gpu = make_core("brims", 10, **options, compile=compile_core).double().to(CUDA)
    gpu.load_state_dict(cpu.state_dict())
    T, B = 7, 3
    x = torch.randn(T, B, 10, dtype=torch.float64)
    starts = torch.zeros(T, B, dtype=torch.bool)
    starts[0, 1] = starts[4, 0] = True
    state = tuple(torch.randn_like(s, dtype=torch.float64) for s in cpu.initial_state(B))
    weight = torch.randn(T, B, cpu.output_size, dtype=torch.float64)
    results = []
    for core, device, run in ((cpu, "cpu", cpu.step_by_step), (gpu, CUDA, gpu.forward)):
        x_ = x.to(device).requires_grad_()
        state_ = tuple(s.to(device).requires_grad_() for s in state)
        y, final = run(x_, state_, starts.to(device))
        ((y * weight.to(device)).sum() + sum(f.square().sum() for f in final)).backward()
        results.append([y, *final, x_.grad, *(s.grad for s in state_), *(p.grad for p in core.parameters())])
    for a, b in zip(*results):
        assert relative_error(b, a) < 1e-10


@pytest.mark.parametrize("core", ["lstm", "gru"])
def test_cuda_packed_rnn_computes_the_step_loop(core):
    """On CUDA a sequence with episode starts runs as one packed call (cores/rnn.py): it equals one-step calls."""
    from brims_rl.cores import make_core

    torch.manual_seed(0)
    rnn = make_core(core, 6, hidden_size=5, num_layers=2).double().to(CUDA)
    T, B = 20, 4
    x = torch.randn(T, B, 6, dtype=torch.float64, device=CUDA)
    starts = torch.rand(T, B, device=CUDA) < 0.25
    state = tuple(torch.randn_like(s, dtype=torch.float64) for s in rnn.initial_state(B, CUDA))
    y, final = rnn(x, state, starts)
    outputs, s = [], state
    for t in range(T):
        out, s = rnn(x[t:t + 1], s, starts[t:t + 1])
        outputs.append(out)
    assert relative_error(y, torch.cat(outputs)) < 1e-12
    for a, b in zip(final, s):
        assert relative_error(a, b) < 1e-12
