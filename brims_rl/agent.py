"""The actor-critic: encoder (encoders.py) -> recurrent core -> policy and value heads (Sample Factory's split).

PPO only sees `Agent.forward`; what happens inside the core is the core's business. The actor's outputs are read by
the agent's action head (action_heads.py: a categorical, factored categorical or diagonal Gaussian distribution).
"""

from __future__ import annotations

from typing import NamedTuple

import gymnasium as gym
import torch
import torch.nn as nn
from torch import Tensor

from brims_rl.action_heads import ActionHead, make_action_head
from brims_rl.config import Config, ModelConfig
from brims_rl.cores import features, make_core
from brims_rl.encoders import ObservationLayout, build_encoder, layer_init
from brims_rl.errors import UserError

State = tuple[Tensor, ...]
ACT_MODES = ("sample", "greedy", "none")


class Acted(NamedTuple):
    """One policy step for a batch of B observations (Agent.act)."""

    action: Tensor | None  # [B, *action_shape] as the rollout stores it (None with mode "none")
    logprob: Tensor | None  # [B] log-probability of a sampled action (None unless sampled)
    value: Tensor  # [B] the critic's value of the observation
    state: State  # the core's state after the observation
    decisions: Tensor | None  # [B, decision_size] bool: the core's choices (None for a core that makes none)
    outputs: Tensor  # [B, num_outputs] the actor's outputs, which the action head reads (logits or means)


def make_head(model: ModelConfig, in_size: int, out_size: int, std: float) -> nn.Module:
    """One of the actor/critic heads on the core output.

    - "linear": one linear layer, orthogonal weights of gain `std` (0.01 actor, 1 critic) and zero bias (CleanRL's).
    - "popgym": POPGym's baseline heads, 2 x (Linear(head_hidden) + LeakyReLU) then a linear output layer, hidden
      weights orthogonal (gain 1), output weights normal with std 0.01, biases at torch's default initialisation
      (popgym/baselines/ray_models/base_model.py with ppo.py's settings).
    - "tanh": Linear(head_hidden) + Tanh then a linear output layer, every weight row drawn normal and scaled to
      norm 1, zero biases (rl-starter-files' MiniGrid ACModel and its init_params)."""
    if model.heads == "linear":
        return layer_init(nn.Linear(in_size, out_size), std=std)
    hidden = model.head_hidden
    if model.heads == "tanh":
        head = nn.Sequential(nn.Linear(in_size, hidden), nn.Tanh(), nn.Linear(hidden, out_size))
        for layer in (head[0], head[2]):
            nn.init.normal_(layer.weight)
            with torch.no_grad():
                layer.weight.div_(layer.weight.norm(dim=1, keepdim=True))
            nn.init.zeros_(layer.bias)
        return head
    head = nn.Sequential(nn.Linear(in_size, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden), nn.LeakyReLU(),
                         nn.Linear(hidden, out_size))
    nn.init.orthogonal_(head[0].weight)
    nn.init.orthogonal_(head[2].weight)
    nn.init.normal_(head[4].weight, std=0.01)
    return head


class Agent(nn.Module):
    """`action_space`: the env's action space (Discrete, MultiDiscrete or Box), or an int n for Discrete(n).
    `env_observation_space`: the env's own observation space when the env adapter flattened it (a Dict, Tuple, ...),
    so that the encoder knows where each leaf lies in the vector (encoders.ObservationLayout)."""

    def __init__(self, obs_shape: tuple[int, ...], action_space: gym.Space | int, config: Config,
                 env_observation_space: gym.Space | None = None):
        super().__init__()
        self.obs_shape = tuple(obs_shape)
        self.encoder = build_encoder(ObservationLayout.of(self.obs_shape, env_observation_space), config.model,
                                     config.perf)
        try:
            self.core = make_core(config.core.name, self.encoder.output_size, **config.core.options)
        except ValueError as exc:
            raise UserError(f"bad options for core {config.core.name!r}: {exc}") from None
        head = make_action_head(action_space)
        self.actor = make_head(config.model, self.core.output_size, head.num_outputs, std=0.01)
        self.critic = make_head(config.model, self.core.output_size, 1, std=1.0)
        # after the critic: a head's parameters (the Gaussian's log-std) come last, so a Discrete agent's parameter
        # order (and its optimizer state in old checkpoints) is unchanged
        self.action_head: ActionHead = head

    @property
    def action_space(self) -> gym.Space:
        return self.action_head.space

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        return self.core.initial_state(batch_size, device)

    @property
    def decision_size(self) -> int:
        """Discrete choices the core makes per step and records while acting (0: none; cores/features.py)."""
        return features.decision_size(self.core)

    def last_decisions(self) -> Tensor | None:
        """The core's decisions [T, B, decision_size] bool from the latest acting call."""
        return features.last_decisions(self.core)

    def act(self, obs: Tensor, state: State, first: Tensor, mode: str = "sample",
            generator: torch.Generator | None = None) -> Acted:
        """The policy step, the one every actor uses (rollout collector, captured policy step, Policy, evaluation):
        encoder -> core -> heads on one observation per env (obs [B, *obs_shape]; first [B] bool: obs is the first
        observation of an episode, the core resets before it), then the action. `mode` "sample" draws it from the
        action head's distribution (from `generator` on the generator's device, else torch's global generator),
        "greedy" takes each component's most likely value (the mean of a Gaussian), "none" takes no action."""
        outputs, value, state = self(obs.unsqueeze(0), state, first.unsqueeze(0))
        outputs, value = outputs[0], value[0]
        decisions = self.last_decisions()[0] if self.decision_size else None
        action = logprob = None
        if mode == "sample":
            if generator is not None and generator.device != outputs.device:
                action, logprob = self.action_head.sample(outputs.float().to(generator.device), generator)
            else:
                action, logprob = self.action_head.sample(outputs, generator)
        elif mode == "greedy":
            action = self.action_head.greedy(outputs)
        elif mode != "none":
            raise ValueError(f"mode must be one of {ACT_MODES}, got {mode!r}")
        return Acted(action, logprob, value, state, decisions, outputs)

    def forward(self, obs: Tensor, state: State, episode_starts: Tensor,
                decisions: Tensor | None = None) -> tuple[Tensor, Tensor, State]:
        """obs [T, B, *obs_shape], episode_starts [T, B] -> actor outputs [T, B, A] (logits, or the Gaussian's means:
        `action_head` reads them), values [T, B], new state.
        decisions: what the core recorded while acting on this sequence, for a replay (only if decision_size > 0)."""
        T, B = obs.shape[:2]
        features = self.encoder(obs.reshape(T * B, *self.obs_shape)).reshape(T, B, -1)
        if decisions is None:
            hidden, state = self.core(features, state, episode_starts)
        else:
            hidden, state = self.core(features, state, episode_starts, decisions=decisions)
        return self.actor(hidden), self.critic(hidden).squeeze(-1), state


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
