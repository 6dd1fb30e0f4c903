"""CUDA replay check: on a real Atari rollout, PPO's replay of every env column reproduces the rollout exactly.

For a modular core (RIMs/BRIMs) the fragile part is top-k selection: a near tie between the k-th and (k+1)-th
module can flip if the replay computes in a different order (fused compiled graphs, batch-dependent kernels). The
core records its selections while acting and PPO's replay passes them back (near ties then go as recorded). This
script collects real rollouts, replays every env column in the minibatch shapes PPO uses, with the weights of the
rollout, and compares (1) every module's active/inactive state at every step with the rollout's record, for the
replay as PPO runs it and, for information, for a replay without the record, and (2) the log-probs; then it runs one
PPO update and reports the first minibatch's approx_kl. Which modules were active in a replay is read from its
outputs: an active module's state changes at a step, an inactive one's is kept bit for bit (the core contract).

    python scripts/replay_check.py --env Breakout --agent brims --device cuda --num-envs 64 --rollouts 3 [--set K=V]
"""

from __future__ import annotations

import json
import sys

import torch

from brims_rl.assembly import build_training
from script_setup import script_config, script_parser


def module_activity(core, y: torch.Tensor, state: tuple, starts: torch.Tensor) -> torch.Tensor:
    """[T, B, total modules] bool: which modules changed their state at each step of a core call."""
    T, B = y.shape[:2]
    prev, offset, i, columns = [], 0, 0, []
    for layer in core.layers:
        n, H = layer.num_modules, layer.module_size
        h0 = state[i]  # [B, n, H]
        i += 2 if layer.cell == "lstm" else 1
        h = y[..., offset:offset + n * H].reshape(T, B, n, H)
        offset += n * H
        before = torch.cat([h0.unsqueeze(0), h[:-1]])  # state before each step
        before = torch.where(starts.reshape(T, B, 1, 1), torch.zeros_like(before), before)
        columns.append((h != before).any(-1))
    return torch.cat(columns, -1)


def main() -> int:
    p = script_parser(__doc__, env="Breakout")
    p.add_argument("--rollouts", type=int, default=3)
    args = p.parse_args()
    config, device = script_config(args)
    parts = build_training(config, device)  # as a training run builds them, with config.perf's speed-ups
    agent, collector = parts.agent, parts.collector
    modular = hasattr(agent.core, "layers")
    report = {"env": args.env, "agent": args.agent, "num_envs": args.num_envs, "settings": args.set, "rollouts": []}
    ok = True
    for index in range(args.rollouts):
        collector.collect()
        r = collector.rollout
        T, N = r.rewards.shape
        envs_per_batch = N // config.ppo.num_minibatches
        mismatches = flips_without_record = selections = 0
        max_logprob_error = 0.0
        with torch.no_grad():
            for start in range(0, N, envs_per_batch):
                cols = torch.arange(start, start + envs_per_batch, device=device)
                state = tuple(s[cols] for s in r.initial_state)
                recorded = None if r.decisions is None else r.decisions[:, cols]
                # as Agent.forward replays, with the encoder's features kept for a second core call
                features = agent.encoder(r.obs[:, cols].flatten(0, 1)).unflatten(0, (T, -1))
                y, _ = agent.core(features, state, r.starts[:, cols], **({} if recorded is None else
                                                                        {"decisions": recorded}))
                logprobs = torch.distributions.Categorical(logits=agent.actor(y)).log_prob(r.actions[:, cols])
                max_logprob_error = max(max_logprob_error, float((logprobs - r.logprobs[:, cols]).abs().max()))
                if modular:
                    mismatches += int((module_activity(agent.core, y, state, r.starts[:, cols]) != recorded).sum())
                    y, _ = agent.core(features, state, r.starts[:, cols])
                    flips_without_record += int(
                        (module_activity(agent.core, y, state, r.starts[:, cols]) != recorded).sum())
                    selections += recorded.numel()
        stats = parts.learner.update(r, parts.generator)
        entry = {"rollout": index, "module_decisions": selections, "mismatched_decisions": mismatches,
                 "flips_without_record": flips_without_record, "max_logprob_error": max_logprob_error,
                 "first_approx_kl": stats.first_approx_kl}
        if modular:
            k = sum(layer.top_k for layer in agent.core.layers)
            entry["active_per_step_ok"] = bool((r.decisions.sum(-1) == k).all())
            ok &= entry["active_per_step_ok"]
        ok &= mismatches == 0 and stats.first_approx_kl < 1e-6
        report["rollouts"].append(entry)
        print(json.dumps(entry), flush=True)
    parts.close()
    report["passed"] = ok
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
