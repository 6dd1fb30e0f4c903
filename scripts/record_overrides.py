"""How often PPO's replay record overrides the current weights' own top-k choice, and how wide the top-k gaps are.

On real rollouts (default: Breakout, the `brims` preset, 8 envs, CPU), for each of `--updates` PPO updates:
- `overrides`: per layer, the share of all the update's replayed layer-steps (env x step, every minibatch of every
  epoch) where the selection made with the recorded decisions differs from the one the replaying weights make
  without them (in any module);
- `gaps`: per layer, quantiles of the gap between the k-th and (k+1)-th smallest null-attention score while acting,
  and the share of acting layer-steps with a gap under 1e-6 and 1e-5;
- `first_approx_kl`: the update's first minibatch (0 when the replay is exact).
The modular core runs eagerly (core.options.compile=false) so that every selection can be counted; its maths is the
compiled step's. Run it on another checkout (e.g. a `git worktree` of an older commit) with that checkout as the
working directory and PYTHONPATH, to measure that checkout's PPO.

    python scripts/record_overrides.py --agent brims --updates 6 [--env Breakout] [--num-envs 8] [--set K=V]
"""

from __future__ import annotations

import json
import sys

import torch

import brims_rl.cores.modular as modular
from brims_rl.agent import Agent
from brims_rl.environments import make_vec_env
from brims_rl.ppo import make_optimizer, ppo_update
from brims_rl.rollout import Collector
from script_setup import script_config, script_parser

GAP_LEVELS = (1e-6, 1e-5)


class SelectionCounter:
    """Wraps select_top_k: counts replay overrides (grad enabled, a record given) and acting gaps (grad disabled)."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.layer = 0  # the layer whose step is running (set by the wrapped ModularLayer.step)
        self.reset()

    def reset(self) -> None:
        self.replayed = [0] * self.num_layers
        self.overridden = [0] * self.num_layers
        self.gaps: list[list[torch.Tensor]] = [[] for _ in range(self.num_layers)]

    def __call__(self, null_attention, top_k, preferred=None, tolerance=0.0):
        layer = self.layer
        chosen = ORIGINAL(null_attention, top_k, preferred, tolerance)
        if torch.is_grad_enabled():  # a replay: every replayed layer-step counts, with or without a record
            self.replayed[layer] += chosen.shape[1]
            if preferred is not None:
                own = ORIGINAL(null_attention, top_k)
                self.overridden[layer] += int((own != chosen).any(0).sum())
        elif top_k < null_attention.shape[0]:
            ordered = null_attention.detach().sort(dim=0).values
            self.gaps[layer].append(ordered[top_k] - ordered[top_k - 1])
        return chosen

    def report(self) -> dict:
        out = {"overrides": [o / r if r else None for o, r in zip(self.overridden, self.replayed)],
               "replayed_layer_steps": self.replayed, "gaps": []}
        for layer_gaps in self.gaps:
            if not layer_gaps:
                out["gaps"].append(None)
                continue
            g = torch.cat(layer_gaps).double()
            q = torch.quantile(g, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
            out["gaps"].append({"p10": q[0], "median": q[1], "p90": q[2],
                                **{f"under_{level:g}": float((g < level).double().mean()) for level in GAP_LEVELS}})
        return out


ORIGINAL = modular.select_top_k


def main() -> int:
    p = script_parser(__doc__, env="Breakout")
    p.set_defaults(device="cpu", num_envs=8)
    p.add_argument("--updates", type=int, default=6)
    args = p.parse_args()
    args.set = ["core.options.compile=false", *args.set]
    config, device = script_config(args)
    env = make_vec_env(config.env, config.env.num_envs, seed=config.seed, training=True)
    agent = Agent(env.single_observation_space.shape, int(env.single_action_space.n), config).to(device)
    counter = SelectionCounter(len(agent.core.layers))
    modular.select_top_k = counter
    for index, layer in enumerate(agent.core.layers):  # tell the counter which layer selects
        def step(*step_args, _step=layer.step, _index=index, **step_kwargs):
            counter.layer = _index
            return _step(*step_args, **step_kwargs)
        layer.step = step
    optimizer = make_optimizer(agent, config.ppo, device)
    collector = Collector(env, agent, config.ppo.num_steps, device)  # the eager step: the counter runs in Python
    generator = torch.Generator().manual_seed(config.seed)
    results = []
    for update in range(1, args.updates + 1):
        counter.reset()
        collector.collect()
        acting = counter.report()["gaps"]
        counter.reset()
        stats = ppo_update(agent, optimizer, collector.rollout, config.ppo, generator)
        entry = {"update": update, "first_approx_kl": stats.first_approx_kl, "approx_kl": stats.approx_kl,
                 "overrides": counter.report()["overrides"], "acting_gaps": acting}
        results.append(entry)
        print(json.dumps(entry), flush=True)
    env.close()
    print(json.dumps({"env": args.env, "agent": args.agent, "num_envs": args.num_envs, "settings": args.set,
                      "updates": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
