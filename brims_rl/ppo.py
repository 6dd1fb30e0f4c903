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
    nonfinite_skips: int = 0  # optimizer steps not taken in this update (learner.Learner: non-finite loss or norm)
    kl: float = 0.0  # mean KL(rollout policy || current policy) over the minibatches (with the KL penalty on)
    kl_coef: float = 0.0  # the KL penalty's coefficient for the next update (adapted after this one)


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
    policy_params: Tensor | None  # the rollout's action distributions, for the KL penalty (None without it)
    kl_coef: Tensor | None  # [] the KL penalty's coefficient, a tensor so that a captured graph reads it anew

    @classmethod
    def take(cls, rollout: Rollout, advantages: Tensor, returns: Tensor, valid: Tensor, cols: Tensor,
             with_decisions: bool = True, kl_coef: Tensor | None = None) -> "Minibatch":
        """The columns `cols`; with_decisions=False leaves out the rollout's recorded decisions; `kl_coef`: the KL
        penalty's coefficient (None: no penalty)."""
        decisions = rollout.decisions[:, cols] if with_decisions and rollout.decisions is not None else None
        params = rollout.policy_params[:, cols] if kl_coef is not None else None
        return cls(obs=rollout.obs[:, cols], state=tuple(s[cols] for s in rollout.initial_state),
                   starts=rollout.starts[:, cols], decisions=decisions,
                   actions=rollout.actions[:, cols], logprobs=rollout.logprobs[:, cols], values=rollout.values[:, cols],
                   advantages=advantages[:, cols], returns=returns[:, cols], mask=valid[:, cols],
                   policy_params=params, kl_coef=kl_coef)


def minibatch_loss(agent: Agent, mb: Minibatch, cfg: PPOConfig) -> tuple[Tensor, ...]:
    """Replay the minibatch's columns through the agent: (loss, policy loss, value loss, entropy, approx_kl,
    old_approx_kl, clipfrac, kl). With the KL penalty the loss adds kl_coef * kl, kl = the mean exact KL from the
    rollout's action distributions to the current ones (0 without it). No host synchronisation, so it can run
    inside a captured CUDA graph."""
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
    kl = torch.zeros((), device=loss.device)
    if mb.policy_params is not None:
        kl = masked_mean(agent.action_head.kl(mb.policy_params, logits), mb.mask)
        loss = loss + mb.kl_coef * kl
    return loss, policy_loss, value_loss, entropy, approx_kl, old_approx_kl, clipfrac, kl.detach()


class PPOUpdate:
    """PPO's update of one rollout, CleanRL's loop read top to bottom: GAE, then for each epoch a shuffle of the env
    columns into minibatches, and for each minibatch a replay of its columns, the loss, the backward pass, gradient
    clipping and an optimizer step.

    The core gets the rollout's recorded decisions only until the update's first optimizer step: until then the
    weights are the rollout's, and the record absorbs the rounding differences between acting and replay (the first
    minibatch's ratio is exactly 1); after it, the current weights' own scores decide every choice, so the ratio,
    clipping and KL describe the policy that acts next.

    `gradients` (zero, replay, loss, backward) and `step` (clip, optimizer step) are the two seams where a training
    run's wrappers act (learner.Learner: a captured CUDA graph, multi-GPU gradient averaging, the non-finite guard);
    here they are plain.
    """

    def __init__(self, agent: Agent, optimizer: torch.optim.Optimizer, cfg: PPOConfig) -> None:
        self.agent, self.optimizer, self.cfg = agent, optimizer, cfg
        self.kl_coef = cfg.kl_coef  # the KL penalty's coefficient, adapted after every update (adapt_kl_coef)

    def update(self, rollout: Rollout, generator: torch.Generator | None = None) -> UpdateStats:
        cfg = self.cfg
        advantages, returns = compute_gae(rollout, cfg.gamma, cfg.gae_lambda)
        valid = (~rollout.ignored).float()
        num_envs = rollout.rewards.shape[1]
        envs_per_batch = num_envs // cfg.num_minibatches
        device = rollout.rewards.device
        sums = torch.zeros(7, device=device)
        kl_coef = torch.tensor(self.kl_coef, device=device) if cfg.kl_coef > 0 else None  # the KL penalty, if on
        first_kl = None
        batches = steps_taken = skipped = 0

        for _epoch in range(cfg.update_epochs):
            order = torch.randperm(num_envs, generator=generator).to(device)
            for start in range(0, num_envs, envs_per_batch):
                mb = Minibatch.take(rollout, advantages, returns, valid, order[start:start + envs_per_batch],
                                    with_decisions=steps_taken == 0, kl_coef=kl_coef)
                loss, policy_loss, value_loss, entropy, approx_kl, old_approx_kl, clipfrac, kl = self.gradients(mb)
                if first_kl is None:
                    first_kl = approx_kl.clone()  # (a captured graph overwrites its outputs at its next replay)
                if not self.step(loss):
                    skipped += 1
                    continue
                steps_taken += 1
                sums += torch.stack([policy_loss.detach(), value_loss.detach(), entropy.detach(), approx_kl,
                                     old_approx_kl, clipfrac, kl])
                batches += 1

        *means, mean_kl = (sums / batches).tolist() if batches else [float("nan")] * 7
        if kl_coef is not None and batches:
            self.kl_coef = adapt_kl_coef(self.kl_coef, mean_kl, cfg.kl_target)
        return UpdateStats(*means, explained_variance=explained_variance(rollout.values, returns, valid),
                           first_approx_kl=float(first_kl), nonfinite_skips=skipped, kl=mean_kl, kl_coef=self.kl_coef)

    def gradients(self, mb: Minibatch) -> tuple[Tensor, ...]:
        """Zero the gradients, replay the minibatch, backward its loss; minibatch_loss's outputs."""
        self.optimizer.zero_grad(set_to_none=True)
        outputs = minibatch_loss(self.agent, mb, self.cfg)
        outputs[0].backward()
        return outputs

    def step(self, loss: Tensor) -> bool:
        """Clip the gradient norm and take the optimizer step; whether the step was taken."""
        nn.utils.clip_grad_norm_(self.agent.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        return True


def adapt_kl_coef(coef: float, kl: float, target: float) -> float:
    """RLlib PPO's rule for the KL penalty's coefficient after an update whose mean KL was `kl`: x1.5 above twice
    the target, x0.5 below half of it, else unchanged."""
    if kl > 2.0 * target:
        return coef * 1.5
    if kl < 0.5 * target:
        return coef * 0.5
    return coef


def ppo_update(agent: Agent, optimizer: torch.optim.Optimizer, rollout: Rollout, cfg: PPOConfig,
               generator: torch.Generator | None = None) -> UpdateStats:
    """Several epochs of clipped PPO over minibatches of whole env columns (PPOUpdate, plain)."""
    return PPOUpdate(agent, optimizer, cfg).update(rollout, generator)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var[returns - values] / Var[returns] over the valid entries (nan when the returns are constant)."""
    v, r = values[mask > 0], returns[mask > 0]
    var = r.var(unbiased=False)
    return float("nan") if var.item() == 0 else float(1 - (r - v).var(unbiased=False) / var)
