"""Acting always uses the trained weights.

RIMs/BRIMs cache the weights they fuse for acting (one forward call per env step). Whatever changes the parameters
must invalidate that cache: every optimizer step, whichever kernel it runs (fused and foreach Adam do not bump a
parameter's `_version`), also when the gradients were written without a Python forward (as a replayed CUDA graph
does), and edits outside an optimizer (load_state_dict).
"""

from __future__ import annotations

import pytest
import torch

from brims_rl.agent import Agent
from brims_rl.cores import make_core
from brims_rl.ppo import ppo_update
from brims_rl.rollout import Collector
from scripted_env import ScriptedVecEnv
from test_ppo import small_config

T, B, IN = 3, 4, 16


def act(core: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y, _ = core(x, core.initial_state(B), torch.zeros(T, B, dtype=torch.bool))
    return y


def fresh_copy(core: torch.nn.Module, name: str) -> torch.nn.Module:
    """A newly built core (no cache of any kind) holding `core`'s current weights."""
    twin = make_core(name, IN)
    twin.load_state_dict(core.state_dict())
    return twin


ADAM_KERNELS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


@pytest.mark.parametrize("kernel", list(ADAM_KERNELS))
@pytest.mark.parametrize("name", ["rims", "brims"])
def test_acting_after_an_optimizer_step_uses_the_new_weights(name, kernel):
    """Act, write gradients straight into p.grad (no forward: what a replayed graph leaves), step, act again."""
    torch.manual_seed(0)
    core = make_core(name, IN)
    x = torch.randn(T, B, IN)
    before = act(core, x)  # fills the acting cache
    optimizer = torch.optim.Adam(core.parameters(), lr=1e-2, **ADAM_KERNELS[kernel])
    gen = torch.Generator().manual_seed(1)
    for p in core.parameters():
        p.grad = torch.randn(p.shape, generator=gen)
    optimizer.step()
    after = act(core, x)
    assert not torch.equal(after, before)
    assert torch.equal(after, act(fresh_copy(core, name), x))


@pytest.mark.parametrize("name", ["rims", "brims"])
def test_acting_after_load_state_dict_uses_the_loaded_weights(name):
    torch.manual_seed(0)
    core = make_core(name, IN)
    x = torch.randn(T, B, IN)
    act(core, x)
    torch.manual_seed(5)
    other = make_core(name, IN)
    core.load_state_dict(other.state_dict())
    assert torch.equal(act(core, x), act(other, x))


@pytest.mark.parametrize("kernel", ["foreach", "fused"])
def test_acting_after_a_ppo_update_uses_the_trained_weights(kernel):
    """The whole path: collect (acting fills the cache), PPO update, act again = a fresh core with those weights."""
    torch.manual_seed(0)
    config = small_config("brims")
    agent = Agent((5,), 3, config)
    collector = Collector(ScriptedVecEnv(num_envs=4), agent, config.ppo.num_steps, torch.device("cpu"))
    collector.collect()
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3, **ADAM_KERNELS[kernel])
    ppo_update(agent, optimizer, collector.rollout, config.ppo, torch.Generator().manual_seed(0))
    x = torch.randn(T, B, config.model.encoder_size)
    twin = make_core("brims", x.shape[-1], **config.core.options)
    twin.load_state_dict(agent.core.state_dict())
    assert torch.equal(act(agent.core, x), act(twin, x))
