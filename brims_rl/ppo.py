"""Recurrent PPO: masked GAE and the clipped-objective update of a Rollout (rollout.py).

Rollouts follow next-step autoreset (see environments/base.py): a transition whose action the env ignored is
masked out of every loss, advantage and return. Minibatches are whole env columns, replayed through the core from
the state stored at the rollout's start (and, for a core that makes discrete choices such as top-k module selection,
with the choices it recorded while acting), so the policy ratio on the first minibatch of the first epoch is 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from brims_rl.agent import Agent, State
from brims_rl.config import PPOConfig
from brims_rl.errors import RunFailure
from brims_rl.minibatch_graph import minibatch_graph
from brims_rl.rollout import Rollout


def make_optimizer(agent: nn.Module, cfg: PPOConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam with CleanRL's eps; the fused CUDA kernel on GPU (one launch for all parameters)."""
    return torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps, fused=device.type == "cuda")


def compute_gae(rollout: Rollout, gamma: float, gae_lambda: float) -> tuple[Tensor, Tensor]:
    """Advantages and returns [T, N] with episode ends, time-limit bootstrap and ignored steps.

    A terminated step does not bootstrap. A truncated step bootstraps on the value of its final observation, which
    is the value stored at t+1 (the ignored autoreset step that consumed it) or `next_value` at the rollout's end.
    The recursion never crosses an episode end, and ignored steps get advantage 0.
    """
    T = rollout.rewards.shape[0]
    advantages = torch.zeros_like(rollout.rewards)
    last = torch.zeros_like(rollout.next_value)
    for t in reversed(range(T)):
        next_value = rollout.next_value if t == T - 1 else rollout.values[t + 1]
        not_terminal = (~rollout.terminated[t]).float()
        continues = (~(rollout.terminated[t] | rollout.truncated[t])).float()
        delta = rollout.rewards[t] + gamma * next_value * not_terminal - rollout.values[t]
        last = delta + gamma * gae_lambda * continues * last
        last = torch.where(rollout.ignored[t], torch.zeros_like(last), last)
        advantages[t] = last
    return advantages, advantages + rollout.values


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


class NonFiniteGuard:
    """Counts optimizer steps skipped for a non-finite loss or gradient norm; too many in a row stop the run."""

    def __init__(self, max_in_row: int) -> None:
        self.max_in_row, self.in_row, self.total = max_in_row, 0, 0

    def allow(self, finite: bool) -> bool:
        """Whether to take this optimizer step; raises RunFailure at `max_in_row` skips in a row."""
        if finite:
            self.in_row = 0
            return True
        self.in_row += 1
        self.total += 1
        if self.in_row >= self.max_in_row:
            raise RunFailure(f"the loss or gradient norm was NaN or infinite in {self.in_row} optimizer steps in a "
                             "row (each was skipped); training diverged (ppo.max_nonfinite_skips sets the limit)")
        return False


@dataclass
class UpdateStats:
    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    old_approx_kl: float
    clipfrac: float
    explained_variance: float
    first_approx_kl: float  # approx_kl of the very first minibatch (0 when the replay is exact)
    nonfinite_skips: int = 0  # optimizer steps skipped in this update (non-finite loss or gradient norm)


def ppo_loss(ratio: Tensor, advantages: Tensor, new_values: Tensor, old_values: Tensor, returns: Tensor,
             entropy: Tensor, mask: Tensor, cfg: PPOConfig) -> tuple[Tensor, Tensor, Tensor]:
    """(policy loss, value loss, total loss) of one minibatch; entries where `mask` is 0 count nowhere.

    Policy: the clipped surrogate, mean of max(-A * r, -A * clip(r, 1 - eps, 1 + eps)), with A normalised over the
    minibatch's valid entries when cfg.norm_adv (population std). Value: 0.5 * mean of max((V - R)^2,
    (V_old + clip(V - V_old, -eps, eps) - R)^2) with cfg.clip_vloss, else 0.5 * mean (V - R)^2. Total:
    policy - ent_coef * entropy + vf_coef * value (a higher entropy lowers the loss).
    """
    adv = advantages
    if cfg.norm_adv:
        adv_mean = masked_mean(adv, mask)
        adv_std = masked_mean((adv - adv_mean) ** 2, mask).sqrt()
        adv = (adv - adv_mean) / (adv_std + 1e-8)
    policy_loss = masked_mean(torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)), mask)
    if cfg.clip_vloss:
        clipped = old_values + (new_values - old_values).clamp(-cfg.clip_coef, cfg.clip_coef)
        value_loss = 0.5 * masked_mean(torch.max((new_values - returns) ** 2, (clipped - returns) ** 2), mask)
    else:
        value_loss = 0.5 * masked_mean((new_values - returns) ** 2, mask)
    return policy_loss, value_loss, policy_loss - cfg.ent_coef * entropy + cfg.vf_coef * value_loss


@dataclass
class Minibatch:
    """Whole env columns of a rollout, everything one PPO minibatch reads ([T, b, ...]; state [b, ...])."""

    obs: Tensor
    state: State
    starts: Tensor
    decisions: Tensor | None
    actions: Tensor
    logprobs: Tensor
    values: Tensor
    advantages: Tensor
    returns: Tensor
    mask: Tensor  # float: 1 for valid steps, 0 for ignored autoreset steps

    @classmethod
    def take(cls, rollout: Rollout, advantages: Tensor, returns: Tensor, valid: Tensor, cols: Tensor,
             with_decisions: bool = True) -> "Minibatch":
        """The columns `cols`; with_decisions=False leaves out the rollout's recorded decisions."""
        decisions = rollout.decisions[:, cols] if with_decisions and rollout.decisions is not None else None
        return cls(obs=rollout.obs[:, cols], state=tuple(s[cols] for s in rollout.initial_state),
                   starts=rollout.starts[:, cols], decisions=decisions,
                   actions=rollout.actions[:, cols], logprobs=rollout.logprobs[:, cols], values=rollout.values[:, cols],
                   advantages=advantages[:, cols], returns=returns[:, cols], mask=valid[:, cols])


def minibatch_loss(agent: Agent, mb: Minibatch, cfg: PPOConfig) -> tuple[Tensor, ...]:
    """Replay the minibatch's columns through the agent: (loss, policy loss, value loss, entropy, approx_kl,
    old_approx_kl, clipfrac). No host synchronisation, so it can run inside a captured CUDA graph."""
    logits, new_values, _ = agent(mb.obs, mb.state, mb.starts, mb.decisions)
    new_logprobs, entropy = agent.action_head.log_prob_entropy(logits, mb.actions)  # action_heads.py
    entropy = masked_mean(entropy, mb.mask)

    log_ratio = new_logprobs - mb.logprobs
    ratio = log_ratio.exp()
    with torch.no_grad():
        old_approx_kl = masked_mean(-log_ratio, mb.mask)
        approx_kl = masked_mean((ratio - 1) - log_ratio, mb.mask)
        clipfrac = masked_mean(((ratio - 1.0).abs() > cfg.clip_coef).float(), mb.mask)
    policy_loss, value_loss, loss = ppo_loss(ratio, mb.advantages, new_values, mb.values, mb.returns, entropy,
                                             mb.mask, cfg)
    return loss, policy_loss, value_loss, entropy, approx_kl, old_approx_kl, clipfrac


def ppo_update(agent: Agent, optimizer: torch.optim.Optimizer, rollout: Rollout, cfg: PPOConfig,
               generator: torch.Generator | None = None, grad_hook=None,
               guard: NonFiniteGuard | None = None, cuda_graph: bool = False) -> UpdateStats:
    """Several epochs of clipped PPO over minibatches of whole env columns.

    The core gets the rollout's recorded decisions only until the update's first optimizer step: until then the
    weights are the rollout's, and the record absorbs the rounding differences between acting and replay (the first
    minibatch's ratio is exactly 1); after it, the current weights' own scores decide every choice, so the ratio,
    clipping and KL describe the policy that acts next.
    `grad_hook()`, if given, runs after each backward pass and before clipping (data-parallel gradient averaging).
    A minibatch whose loss or (averaged) gradient norm is not finite takes no optimizer step and adds nothing to the
    stats; `guard` counts such skips (unlimited without one). With `cuda_graph` (CUDA, a core that declares
    `capturable_replay`), each minibatch's forward, loss and backward replay one captured graph (minibatch_graph.py).
    """
    guard = guard or NonFiniteGuard(max_in_row=2**62)
    skipped_before = guard.total
    advantages, returns = compute_gae(rollout, cfg.gamma, cfg.gae_lambda)
    valid = (~rollout.ignored).float()
    num_envs = rollout.rewards.shape[1]
    envs_per_batch = num_envs // cfg.num_minibatches
    sums = torch.zeros(6, device=rollout.rewards.device)
    first_kl = None
    num_batches = 0
    graphed = None
    steps_taken = 0

    for _epoch in range(cfg.update_epochs):
        order = torch.randperm(num_envs, generator=generator).to(rollout.rewards.device)
        for start in range(0, num_envs, envs_per_batch):
            mb = Minibatch.take(rollout, advantages, returns, valid, order[start:start + envs_per_batch],
                                with_decisions=steps_taken == 0)
            if cuda_graph and graphed is None:
                graphed = minibatch_graph(agent, mb, cfg, minibatch_loss)
                cuda_graph = graphed is not None
            if graphed is not None:  # forward, loss and backward in one replay; the gradients land in p.grad
                outputs = graphed(mb)
            else:
                outputs = minibatch_loss(agent, mb, cfg)
                optimizer.zero_grad(set_to_none=True)
                outputs[0].backward()
            loss, policy_loss, value_loss, entropy, approx_kl, old_approx_kl, clipfrac = outputs
            if first_kl is None:
                first_kl = approx_kl.clone()  # a graph's outputs are overwritten by its next replay
            # A non-finite loss on this rank poisons its gradients (loss * 0 is NaN exactly then; no host sync), so
            # after averaging every rank sees a non-finite norm and all skip the same step.
            grads = [p.grad for p in agent.parameters() if p.grad is not None]
            if grads:
                torch._foreach_add_(grads, loss.detach() * 0)
            if grad_hook is not None:
                grad_hook()
            grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
            if not guard.allow(bool(torch.isfinite(grad_norm))):
                if graphed is None:
                    optimizer.zero_grad(set_to_none=True)
                continue
            optimizer.step()
            steps_taken += 1

            sums += torch.stack([policy_loss.detach(), value_loss.detach(), entropy.detach(), approx_kl,
                                 old_approx_kl, clipfrac])
            num_batches += 1

    means = (sums / num_batches).tolist() if num_batches else [float("nan")] * 6
    return UpdateStats(*means, explained_variance=explained_variance(rollout.values, returns, valid),
                       first_approx_kl=float(first_kl), nonfinite_skips=guard.total - skipped_before)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var[returns - values] / Var[returns] over the valid entries (nan when the returns are constant)."""
    v, r = values[mask > 0], returns[mask > 0]
    var = r.var(unbiased=False)
    return float("nan") if var.item() == 0 else float(1 - (r - v).var(unbiased=False) / var)
