"""Where one PPO update spends its time: torch.profiler over a full update (default PPO settings) on a synthetic
Atari-shaped rollout, after one warm-up update (compiling). Prints the update's wall time, the number of kernel
launches (CUDA) and the top operators by self time, for finding what bounds a core's update (e.g. BRIMs on a GPU).

    python scripts/profile_update.py --agent brims --device cuda --num-envs 64 [--rows 25] [--set K=V]
"""

from __future__ import annotations

import sys
import time

import torch
import torch._dynamo
from torch.profiler import ProfilerActivity, profile

from brims_rl.agent import Agent
from brims_rl.ppo import make_optimizer, ppo_update
from brims_rl.rollout import Rollout
from script_setup import script_config, script_parser


def synthetic_rollout(agent: Agent, T: int, N: int, device: torch.device) -> Rollout:
    """Random frames, a few episode starts, and actions, log-probs, values and decisions from the agent itself."""
    r = Rollout.allocate(T, N, agent.obs_shape, torch.uint8, device, agent.decision_size)
    r.obs.random_(0, 256)
    r.starts.bernoulli_(0.01)
    r.starts[0] = True
    r.rewards.bernoulli_(0.05)
    r.terminated.bernoulli_(0.005)
    r.initial_state = agent.initial_state(N, device)
    with torch.no_grad():
        logits, values, _ = agent(r.obs, r.initial_state, r.starts)
        dist = torch.distributions.Categorical(logits=logits)
        r.actions = dist.sample()
        r.logprobs, r.values = dist.log_prob(r.actions), values
        if r.decisions is not None:
            r.decisions = agent.last_decisions()
    r.next_value = torch.zeros(N, device=device)
    return r


def main() -> int:
    p = script_parser(__doc__, env="Pong")
    p.add_argument("--num-actions", type=int, default=6)
    p.add_argument("--rows", type=int, default=25)
    args = p.parse_args()
    config, device = script_config(args)
    obs_shape = (config.env.frame_stack, config.env.image_size, config.env.image_size)
    agent = Agent(obs_shape, args.num_actions, config).to(device)
    optimizer = make_optimizer(agent, config.ppo, device)
    rollout = synthetic_rollout(agent, config.ppo.num_steps, args.num_envs, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    ppo_update(agent, optimizer, rollout, config.ppo)  # warm-up: compiles, allocator, cuDNN plans
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        begin = time.perf_counter()
        ppo_update(agent, optimizer, rollout, config.ppo)
        sync()
        seconds = time.perf_counter() - begin
    samples = config.ppo.num_steps * args.num_envs * config.ppo.update_epochs
    events = prof.key_averages()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    kernels = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    print(f"agent {args.agent} | core {config.core.name} {config.core.options} | device {device} | "
          f"{args.num_envs} envs x {config.ppo.num_steps} steps, {config.ppo.update_epochs} epochs x "
          f"{config.ppo.num_minibatches} minibatches")
    print(f"update (profiled): {seconds:.3f} s = {samples / seconds:,.0f} samples/s | CUDA kernel launches: {kernels:,}")
    dynamo = torch._dynamo.utils.counters  # were the compiled steps really compiled, and how often?
    print(f"torch.compile: {dict(dynamo['stats'])} | frames {dict(dynamo['frames'])} | "
          f"recompiles {dict(dynamo['recompiles'])} | graph breaks {sum(dynamo['graph_break'].values())}")
    print(events.table(sort_by=sort, row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
