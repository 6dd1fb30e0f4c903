"""The actor-critic: encoder -> recurrent core -> policy and value heads (Sample Factory's split).

PPO only sees `Agent.forward`; what happens inside the core is the core's business. The actor's outputs are read by
the agent's action head (action_heads.py: a categorical, factored categorical or diagonal Gaussian distribution).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from brims_rl.action_heads import ActionHead, make_action_head
from brims_rl.config import Config
from brims_rl.cores import make_core
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


def layer_init(layer: nn.Module, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Module:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class NatureCNN(nn.Module):
    """Mnih et al. (2015) encoder for [C, 84, 84] uint8 frames; scales to [0, 1] on the model's device."""

    def __init__(self, obs_shape: tuple[int, ...], output_size: int, bf16: bool = False):
        super().__init__()
        self.bf16 = bf16  # CUDA only: bf16 autocast for the convolutions and the dense layer
        channels = obs_shape[0]
        self.convs = nn.Sequential(
            layer_init(nn.Conv2d(channels, 32, 8, stride=4)), nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)), nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, *obs_shape)).shape[1]
        self.fc = nn.Sequential(layer_init(nn.Linear(flat, output_size)), nn.ReLU())
        self.output_size = output_size
        # channels-last convolutions: ~1.8x faster forward+backward on CPU (oneDNN), and the layout cuDNN prefers
        self.convs.to(memory_format=torch.channels_last)

    def forward(self, obs: Tensor) -> Tensor:
        x = (obs.float() / 255.0).contiguous(memory_format=torch.channels_last)
        if self.bf16 and x.is_cuda:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.fc(self.convs(x)).float()
        return self.fc(self.convs(x))


class MLPEncoder(nn.Module):
    """Two tanh layers for flat vector observations."""

    def __init__(self, obs_shape: tuple[int, ...], hidden: int, output_size: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            layer_init(nn.Linear(int(np.prod(obs_shape)), hidden)), nn.Tanh(),
            layer_init(nn.Linear(hidden, output_size)), nn.Tanh(),
        )
        self.output_size = output_size

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs.float())


def make_encoder(obs_shape: tuple[int, ...], config: Config) -> nn.Module:
    if len(obs_shape) == 3:
        return NatureCNN(obs_shape, config.model.encoder_size, bf16=config.perf.cnn_bf16)
    if len(obs_shape) == 1:
        return MLPEncoder(obs_shape, config.model.mlp_hidden, config.model.encoder_size)
    raise UserError(f"observations of shape {obs_shape} are not supported (images [C,H,W] or flat vectors)")


class Agent(nn.Module):
    """`action_space`: the env's action space (Discrete, MultiDiscrete or Box), or an int n for Discrete(n)."""

    def __init__(self, obs_shape: tuple[int, ...], action_space: gym.Space | int, config: Config):
        super().__init__()
        self.obs_shape = tuple(obs_shape)
        self.encoder = make_encoder(self.obs_shape, config)
        try:
            self.core = make_core(config.core.name, self.encoder.output_size, **config.core.options)
        except ValueError as exc:
            raise UserError(f"bad options for core {config.core.name!r}: {exc}") from None
        head = make_action_head(action_space)
        self.actor = layer_init(nn.Linear(self.core.output_size, head.num_outputs), std=0.01)
        self.critic = layer_init(nn.Linear(self.core.output_size, 1), std=1.0)
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
        """Discrete choices the core makes per step and records while acting (0: none; see cores/__init__.py)."""
        return getattr(self.core, "decision_size", 0)

    def last_decisions(self) -> Tensor:
        """The core's decisions [T, B, decision_size] bool from the latest acting call."""
        return self.core.last_decisions

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
