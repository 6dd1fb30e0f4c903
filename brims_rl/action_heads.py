"""The action distributions the agent's policy head parameterises, one per supported action space (docs/spaces.md).

The actor (agent.py) is one linear layer of `head.num_outputs` outputs; a head turns those outputs into actions:

    Discrete(n)         CategoricalHead: n logits, torch's Categorical (the Atari path, unchanged).
    MultiDiscrete(nvec) FactoredCategoricalHead: sum(nvec) logits split into one independent categorical per
                        component (nvec flattened in C order); log-probs and entropies are summed over components.
    Box(shape)          GaussianHead: prod(shape) means and a state-independent learnable log-std (one per action
                        dimension, initialised at 0: CleanRL's continuous PPO); a diagonal Gaussian. The sampled,
                        unclipped action is what the rollout stores and PPO scores; only the env receives it clipped
                        to the space's bounds (`to_env`).

Every head has the same methods, used by the agent's policy step (`sample`, `greedy`: each component's most likely
value, or the mean; `sample(out, generator)` for repeatable sampling), PPO (`log_prob_entropy` of the stored
actions), the env (`to_env`: stored actions -> the env's form) and Policy.distribution (`distribution`: a
torch.distributions object over stored actions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from torch import Tensor
from torch.distributions import Categorical, Distribution, Independent, Normal

from brims_rl.environments.spaces import check_action_space

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def sample_actions(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Actions sampled from the policy head's logits [B, A], and their log-probabilities."""
    # No argument validation: it reads the logits back to the host (a GPU sync every step). Non-finite values are
    # caught where they enter (env data) and in the update (loss and gradient norm).
    dist = Categorical(logits=logits, validate_args=False)
    actions = dist.sample()
    return actions, dist.log_prob(actions)


def _multinomial(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """One draw per row of logits [..., k] from `generator` (evaluation's repeatable sampling)."""
    flat = torch.softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)
    return torch.multinomial(flat, 1, generator=generator).reshape(logits.shape[:-1])


class ActionHead(nn.Module):
    """What every head provides (see the module docstring)."""

    space: gym.Space
    num_outputs: int  # the actor's width
    action_shape: tuple[int, ...]  # one env's action as the rollout stores it
    action_dtype: torch.dtype

    def sample(self, out: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(actions [..., *action_shape], log-probs [...]) for actor outputs [..., num_outputs]."""
        raise NotImplementedError

    def log_prob_entropy(self, out: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Log-probabilities of stored `actions` and the distribution's entropy, both [...]."""
        raise NotImplementedError

    def greedy(self, out: Tensor) -> Tensor:
        raise NotImplementedError

    def distribution(self, out: Tensor) -> Distribution:
        """The action distribution of actor outputs [..., num_outputs], over actions as the rollout stores them."""
        raise NotImplementedError

    @property
    def num_params(self) -> int:
        """Width of `params`: what defines the distribution of one step."""
        return self.num_outputs

    def params(self, out: Tensor) -> Tensor:
        """Everything that defines the distribution of actor outputs [..., num_outputs], as the rollout keeps it
        for the KL penalty ([..., num_params]: the outputs themselves, where nothing else enters)."""
        return out

    def kl(self, old: Tensor, out: Tensor) -> Tensor:
        """KL(old || new) [...] of the distribution `params` gave as `old` and that of actor outputs `out`."""
        raise NotImplementedError

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        """A batch of stored actions [N, *action_shape] in the form the env takes."""
        return actions


def categorical_kl(old_logits: Tensor, new_logits: Tensor) -> Tensor:
    """KL(old || new) of categoricals over the last dimension: sum p_old (log p_old - log p_new)."""
    old_log = torch.log_softmax(old_logits, -1)
    return (old_log.exp() * (old_log - torch.log_softmax(new_logits, -1))).sum(-1)


class CategoricalHead(ActionHead):
    def __init__(self, space: gym.spaces.Discrete) -> None:
        super().__init__()
        self.space, self.num_outputs = space, int(space.n)
        self.action_shape, self.action_dtype = (), torch.long

    def sample(self, out: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        if generator is None:
            return sample_actions(out)
        actions = _multinomial(out, generator)
        return actions, torch.log_softmax(out, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)

    def log_prob_entropy(self, out: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        dist = Categorical(logits=out, validate_args=False)  # validating would read the logits back to the host
        return dist.log_prob(actions), dist.entropy()

    def greedy(self, out: Tensor) -> Tensor:
        return out.argmax(-1)

    def distribution(self, out: Tensor) -> Distribution:
        return Categorical(logits=out)

    def kl(self, old: Tensor, out: Tensor) -> Tensor:
        return categorical_kl(old, out)


class FactoredCategoricalHead(ActionHead):
    def __init__(self, space: gym.spaces.MultiDiscrete) -> None:
        super().__init__()
        self.space = space
        self.sizes = [int(k) for k in np.asarray(space.nvec).reshape(-1)]
        self.num_outputs = sum(self.sizes)
        self.action_shape, self.action_dtype = (len(self.sizes),), torch.long
        start = np.broadcast_to(np.asarray(space.start, dtype=np.int64), space.nvec.shape)
        self._start = start.reshape(-1) if start.any() else None

    def _dists(self, chunks: Sequence[Tensor]) -> list[Categorical]:
        return [Categorical(logits=chunk, validate_args=False) for chunk in chunks]

    @staticmethod
    def _log_prob(dists: list[Categorical], actions: Tensor) -> Tensor:
        return sum(d.log_prob(actions[..., i]) for i, d in enumerate(dists))

    def sample(self, out: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        chunks = out.split(self.sizes, dim=-1)
        dists = self._dists(chunks)
        draws = [d.sample() if generator is None else _multinomial(c, generator) for c, d in zip(chunks, dists)]
        actions = torch.stack(draws, dim=-1)
        return actions, self._log_prob(dists, actions)

    def log_prob_entropy(self, out: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        dists = self._dists(out.split(self.sizes, dim=-1))
        return self._log_prob(dists, actions), sum(d.entropy() for d in dists)

    def greedy(self, out: Tensor) -> Tensor:
        return torch.stack([chunk.argmax(-1) for chunk in out.split(self.sizes, dim=-1)], dim=-1)

    def distribution(self, out: Tensor) -> Distribution:
        return FactoredCategorical(self._dists(out.split(self.sizes, dim=-1)))

    def kl(self, old: Tensor, out: Tensor) -> Tensor:
        return sum(categorical_kl(a, b) for a, b in zip(old.split(self.sizes, -1), out.split(self.sizes, -1)))

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        if self._start is not None:
            actions = actions + self._start
        return actions.reshape(len(actions), *self.space.nvec.shape).astype(self.space.dtype, copy=False)


class GaussianHead(ActionHead):
    def __init__(self, space: gym.spaces.Box) -> None:
        super().__init__()
        self.space = space
        self.num_outputs = int(np.prod(space.shape))
        self.action_shape, self.action_dtype = (self.num_outputs,), torch.float32
        self.log_std = nn.Parameter(torch.zeros(self.num_outputs))  # state-independent, std 1 at the start
        self._low = np.asarray(space.low, dtype=space.dtype).reshape(-1)
        self._high = np.asarray(space.high, dtype=space.dtype).reshape(-1)

    def _log_std(self, mean: Tensor) -> Tensor:
        return self.log_std.to(mean.device, mean.dtype)  # a no-op unless evaluation moved the outputs to the CPU

    def _log_prob(self, mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z * z - log_std - LOG_SQRT_2PI).sum(-1)

    def sample(self, out: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        log_std = self._log_std(out)
        noise = torch.randn_like(out) if generator is None else \
            torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device)
        actions = out + torch.exp(log_std) * noise
        return actions, self._log_prob(out, log_std, actions)

    def log_prob_entropy(self, out: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        log_std = self._log_std(out)
        entropy = (log_std + 0.5 + LOG_SQRT_2PI).sum().expand(out.shape[:-1])
        return self._log_prob(out, log_std, actions), entropy

    def greedy(self, out: Tensor) -> Tensor:
        return out

    def distribution(self, out: Tensor) -> Distribution:
        return Independent(Normal(out, torch.exp(self._log_std(out)).expand_as(out)), 1)

    @property
    def num_params(self) -> int:
        return 2 * self.num_outputs

    def params(self, out: Tensor) -> Tensor:
        """The means and the log-std in force (a parameter of the head, which the update changes)."""
        return torch.cat([out, self._log_std(out).expand_as(out)], -1)

    def kl(self, old: Tensor, out: Tensor) -> Tensor:
        old_mean, old_log_std = old.split(self.num_outputs, -1)
        log_std = self._log_std(out)
        ratio = torch.exp(2 * (old_log_std - log_std))  # old variance / new variance
        return (0.5 * (ratio + (out - old_mean).square() * torch.exp(-2 * log_std) - 1) + log_std
                - old_log_std).sum(-1)

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        clipped = np.clip(actions, self._low, self._high).astype(self.space.dtype, copy=False)
        return clipped.reshape(len(actions), *self.space.shape)


class FactoredCategorical(Distribution):
    """Independent categoricals, one per MultiDiscrete component: actions [..., components], log-probs and entropies
    summed over the components."""

    arg_constraints: dict = {}

    def __init__(self, components: list[Categorical]) -> None:
        self.components = components
        batch_shape = components[0].batch_shape
        super().__init__(batch_shape, torch.Size([len(components)]), validate_args=False)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return torch.stack([d.sample(sample_shape) for d in self.components], dim=-1)

    def log_prob(self, value: Tensor) -> Tensor:
        return sum(d.log_prob(value[..., i]) for i, d in enumerate(self.components))

    def entropy(self) -> Tensor:
        return sum(d.entropy() for d in self.components)

    @property
    def mode(self) -> Tensor:
        return torch.stack([d.probs.argmax(-1) for d in self.components], dim=-1)


def make_action_head(space: gym.Space | int) -> ActionHead:
    """The head for an action space (an int n means Discrete(n)); UserError for an unsupported space."""
    if not isinstance(space, gym.Space):
        space = gym.spaces.Discrete(int(space))
    check_action_space(space, "env")
    if isinstance(space, gym.spaces.Discrete):
        return CategoricalHead(space)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return FactoredCategoricalHead(space)
    return GaussianHead(space)
