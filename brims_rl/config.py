"""Run configuration as plain dataclasses, stored as config.json beside every run's checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brims_rl.atomic import write_text_atomic
from brims_rl.errors import UserError


BACKENDS = ("envpool", "ale")  # the Atari backends (environments/atari.py)


@dataclass
class EnvConfig:
    """Which environment and the observation protocol (defaults: the paper's and CleanRL's Atari protocol)."""

    id: str = "MsPacman"
    backend: str = "envpool"  # envpool | ale (gymnasium ids always use gymnasium's vector env)
    num_envs: int = 8
    frame_skip: int = 4
    noop_max: int = 30
    frame_stack: int = 4
    image_size: int = 84
    grayscale: bool = True
    sticky_actions: float = 0.0  # 0.25 = Machado et al. (2018)
    full_action_space: bool = False  # True: all 18 Atari actions (Machado et al. 2018), else the game's minimal set
    fire_reset: bool = True
    episodic_life: bool = True  # training only; evaluation always plays full games
    reward_clip: bool = True  # training only
    max_episode_steps: int = 27000  # agent steps (= 108k frames at frame skip 4)
    threads: int = 0  # envpool / ale worker threads; 0 = automatic
    kwargs: dict[str, Any] = field(default_factory=dict)  # gymnasium ids: keyword arguments of gym.make
    # POPGym ids only: wrap each env in popgym's Antialias(PreviousAction(env)), as POPGym's baselines do (the
    # previous action and an is-first flag join the observation)
    previous_action: bool = False


@dataclass
class CoreConfig:
    name: str = "lstm"
    options: dict[str, Any] = field(default_factory=dict)


HEADS = ("linear", "popgym", "tanh")


@dataclass
class ModelConfig:
    """Encoder and heads around the core (docs/cores.md, "Encoders and heads")."""

    encoder_size: int = 512  # Nature CNN / MLP / popgym encoder feature size fed to the core
    mlp_hidden: int = 64  # hidden width of the MLP encoder for vector observations
    # auto: the Nature CNN for frames, the grid encoder for small grids (MiniGrid), the MLP for vectors; or a
    # built-in name (nature_cnn, grid, mlp, popgym), a registered one, or module:factory
    encoder: str = "auto"
    encoder_options: dict[str, Any] = field(default_factory=dict)  # keyword options of the encoder's factory
    # linear: one linear layer each (CleanRL's); popgym: POPGym's two hidden LeakyReLU layers each; tanh: one hidden
    # tanh layer each (rl-starter-files' MiniGrid model)
    heads: str = "linear"
    head_hidden: int = 128  # width of the popgym and tanh heads' hidden layers


@dataclass
class PPOConfig:
    num_steps: int = 128
    num_minibatches: int = 4
    update_epochs: int = 4
    learning_rate: float = 2.5e-4
    anneal_lr: bool = True
    adam_eps: float = 1e-5
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.1
    clip_vloss: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    norm_adv: bool = True
    max_nonfinite_skips: int = 10  # stop after this many optimizer steps in a row skipped for a NaN/inf loss or grad
    # Adaptive KL penalty (RLlib's PPO): the loss adds kl_coef * KL(rollout policy || current policy); after each
    # update the coefficient is multiplied by 1.5 if the update's mean KL exceeded 2 * kl_target and by 0.5 if it was
    # below kl_target / 2. 0 turns the penalty off (CleanRL's PPO, every protocol but popgym).
    kl_coef: float = 0.0
    kl_target: float = 0.01


@dataclass
class PerfConfig:
    """Speed options that change no maths on CPU; on CUDA each was measured before being made a default (README)."""

    pinned_memory: bool = True  # CUDA: host->device copies through pinned buffers, with no extra sync per step
    cnn_bf16: bool = False  # CUDA: run the Nature CNN under bf16 autocast (its output is cast back to float32)
    # CUDA: replay the rollout's policy step as one captured graph (brims_rl/policy_graph.py, any core whose
    # diagnostics are capturable); measured +12% steps/s for lstm at 64 envs on an H200 (docs/results.md).
    cuda_graph: bool = True
    # CUDA, RIMs/BRIMs: each PPO minibatch's forward, loss and backward as one captured graph (minibatch_graph.py),
    # against the per-step launch cost of the 128-step replay; off until a GPU measurement shows it faster.
    cuda_graph_update: bool = False
    tf32: bool = False  # CUDA: allow TF32 matmuls/convolutions (faster, but results then vary with batch shape)


# Core options whose default changed after runs were stored with it left out: such a run was trained with the value
# given here, which loading a stored config (config.json, a checkpoint) fills in, so old runs rebuild as trained. New
# runs record today's value (configure.record_changed_defaults).
STORED_DEFAULTS: dict[str, dict[str, Any]] = {"brims": {"top_down_slots": "modules"}}


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    core: CoreConfig = field(default_factory=CoreConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    agent: str = "lstm"  # the preset this config started from
    protocol: str = "default"  # the published protocol this config started from (envs/protocols/NAME.toml)
    protocol_settings: dict[str, Any] = field(default_factory=dict)  # that protocol's file, in full
    total_steps: int = 10_000_000
    seed: int = 1
    device: str = "auto"
    checkpoint_every: int = 1_000_000  # env steps between kept periodic checkpoints
    latest_every_s: float = 60.0  # seconds between rewrites of checkpoints/latest.pt (0 = after every update)
    torch_deterministic: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], stored: bool = False) -> "Config":
        """The config of `data`; stored=True: `data` is a stored run's, whose missing options mean what they meant
        when it was trained (STORED_DEFAULTS)."""
        config = _build(cls, data, "config")
        if stored:
            for key, value in STORED_DEFAULTS.get(config.core.name, {}).items():
                config.core.options.setdefault(key, value)
        return config

    def save(self, path: Path) -> None:
        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Config":
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise UserError(f"{path} not found") from None
        except (OSError, ValueError) as exc:
            raise UserError(f"{path} is not a readable config.json ({exc})") from None
        if not isinstance(data, dict):
            raise UserError(f"{path} is not a brims-rl config")
        return cls.from_dict(data, stored=True)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build a (nested) dataclass from a dict, rejecting unknown keys and wrongly typed values."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise UserError(f"unknown setting {where}.{key}")
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise UserError(f"{where}.{key} must be a table of settings")
            kwargs[key] = _build(type(default), value, f"{where}.{key}")
        else:
            kwargs[key] = _coerce(value, default, f"{where}.{key}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, name: str) -> Any:
    """Check a value against the type of its default (ints are accepted where floats are expected)."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        if _non_finite(value):
            raise UserError(f"{name} must be a finite number, got {value}")
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, dict):
        if isinstance(value, dict):
            return dict(value)
    else:
        return value
    raise UserError(f"{name} must be of type {type(default).__name__}, got {value!r}")


def _non_finite(value: Any) -> bool:
    """Whether `value` is a number or numeric text (nan, inf, Infinity) that is not finite."""
    try:
        return not isinstance(value, bool) and not math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def parse_value(text: str) -> Any:
    """A --set value: JSON (numbers, true/false, lists, quoted strings), else the plain string."""
    lowered = text.strip()
    if lowered in ("True", "False"):
        return lowered == "True"
    try:
        return json.loads(lowered)
    except ValueError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides (e.g. ppo.learning_rate=1e-4, core.options.top_k=3,
    env.kwargs.delay=12) to a config dict; `core.options`, `env.kwargs` and `model.encoder_options` take new keys."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        *parents, leaf = key.strip().split(".")
        node = data
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                raise UserError(f"unknown setting {key!r}")
            node = child
        if leaf not in node and not (parents and parents[-1] in ("options", "kwargs", "encoder_options")):
            raise UserError(f"unknown setting {key!r}")
        node[leaf] = parse_value(raw)
    return data


def validate(config: Config) -> None:
    """Reject numbers that cannot work, with one clear line."""
    positive = {
        "total_steps": config.total_steps, "env.num_envs": config.env.num_envs,
        "ppo.num_steps": config.ppo.num_steps, "ppo.num_minibatches": config.ppo.num_minibatches,
        "ppo.update_epochs": config.ppo.update_epochs, "ppo.learning_rate": config.ppo.learning_rate,
        "ppo.clip_coef": config.ppo.clip_coef, "ppo.adam_eps": config.ppo.adam_eps,
        "ppo.max_grad_norm": config.ppo.max_grad_norm, "ppo.kl_target": config.ppo.kl_target,
        "ppo.max_nonfinite_skips": config.ppo.max_nonfinite_skips, "env.frame_skip": config.env.frame_skip,
        "env.frame_stack": config.env.frame_stack, "env.image_size": config.env.image_size,
        "env.max_episode_steps": config.env.max_episode_steps, "model.encoder_size": config.model.encoder_size,
        "model.mlp_hidden": config.model.mlp_hidden, "model.head_hidden": config.model.head_hidden,
        "checkpoint_every": config.checkpoint_every,
    }
    for name, value in positive.items():
        if not value > 0:
            raise UserError(f"{name} must be positive, got {value}")
    non_negative = {"seed": config.seed, "env.noop_max": config.env.noop_max, "env.threads": config.env.threads,
                    "ppo.ent_coef": config.ppo.ent_coef, "ppo.vf_coef": config.ppo.vf_coef,
                    "ppo.kl_coef": config.ppo.kl_coef,
                    "latest_every_s": config.latest_every_s}
    for name, value in non_negative.items():
        if value < 0:
            raise UserError(f"{name} must not be negative, got {value}")
    for name, value in {"ppo.gamma": config.ppo.gamma, "ppo.gae_lambda": config.ppo.gae_lambda,
                        "env.sticky_actions": config.env.sticky_actions}.items():
        if not 0 <= value <= 1:
            raise UserError(f"{name} must be in [0, 1], got {value}")
    if not 0 <= config.seed < 2**30:  # env seeds are 32-bit
        raise UserError(f"seed must be in [0, {2**30}), got {config.seed}")
    if config.env.num_envs % config.ppo.num_minibatches:
        raise UserError(f"num_envs ({config.env.num_envs}) must be divisible by ppo.num_minibatches "
                        f"({config.ppo.num_minibatches}): minibatches are whole env columns")
    if config.model.heads not in HEADS:
        raise UserError(f"unknown heads {config.model.heads!r}; choose one of: {', '.join(HEADS)}")
    if not isinstance(config.model.encoder, str) or not config.model.encoder.strip():
        raise UserError("model.encoder must be a non-empty name")
    if config.env.backend not in BACKENDS:
        raise UserError(f"unknown env backend {config.env.backend!r}; choose one of: {', '.join(BACKENDS)}")
    if config.env.image_size < 8:  # the Nature CNN's first convolution is 8 x 8
        raise UserError(f"env.image_size must be at least 8, got {config.env.image_size}")
