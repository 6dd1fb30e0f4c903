"""Observation encoders behind one contract, registered by name as cores are (docs/cores.md, "Encoders and heads"):

    encoder = factory(observation, **options)        # observation: an ObservationLayout
    encoder.output_size                              # int: the features fed to the core
    features = encoder(obs)                          # obs [N, *observation.shape] -> [N, output_size] float

`obs` is what the env adapter gives the agent: stacked uint8 frames [C, H, W], or one float32 vector holding every
leaf of a Dict/Tuple/... observation (`observation.leaves` says where each lies in it; an image leaf keeps its
[H, W, C] values there, in C order).

Built in: `nature_cnn` (Mnih et al. 2015, for frames), `mlp` (two tanh layers, for vectors), `grid` (small
convolutions for symbolic grids such as MiniGrid's 7x7x3 view, beside the vector leaves) and `popgym` (POPGym's
input map). `auto`, the default, picks one from the observation (`choose_encoder`). `register_encoder(name,
factory)` adds one; a name of the form `module:factory` (`--encoder my_pkg.encoders:make`) is imported and
registered under that full name on first use. An encoder that is not built in is checked against the contract each
time it is made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from brims_rl.config import ModelConfig, PerfConfig
from brims_rl.environments.spaces import Leaf, ObservationFlattener, path_text
from brims_rl.errors import UserError
from brims_rl.user_code import FactoryRegistry

EncoderFactory = Callable[..., nn.Module]  # factory(observation: ObservationLayout, **options) -> encoder
AUTO = "auto"
NATURE_MIN = 36  # the Nature CNN's three convolutions need frames of at least 36 x 36
GRID_MIN, GRID_MAX = 7, 32  # the grid encoder's convolutions need 7 x 7; above 32 it is no longer a small grid


@dataclass(frozen=True)
class ObservationLayout:
    """What an encoder is built for. `shape`: one observation as the agent receives it ([C, H, W] uint8 frames or
    a float32 vector [size]); `space`: the env's own observation space when the env adapter flattened it (a Dict,
    Tuple, Discrete, ...), else None; `leaves`: where each leaf of `space` lies in the vector (empty without one)."""

    shape: tuple[int, ...]
    space: gym.Space | None = None
    leaves: tuple[Leaf, ...] = ()

    @classmethod
    def of(cls, obs_shape: tuple[int, ...], env_space: gym.Space | None = None) -> "ObservationLayout":
        """The layout of observations of `obs_shape`, flattened from `env_space` when that is not a Box."""
        shape = tuple(int(n) for n in obs_shape)
        if env_space is None or isinstance(env_space, gym.spaces.Box):
            return cls(shape)
        flattener = ObservationFlattener(env_space)
        if shape != (flattener.size,):
            raise UserError(f"observations of shape {shape} do not fit the env's space {env_space} "
                            f"({flattener.size} values once flattened)")
        return cls(shape, flattener.kept_space, flattener.leaves)

    @property
    def image_leaves(self) -> tuple[Leaf, ...]:
        return tuple(leaf for leaf in self.leaves if leaf.image)

    @property
    def is_frames(self) -> bool:
        """A whole-observation image ([C, H, W], uint8 from the env adapter)."""
        return len(self.shape) == 3 and not self.leaves


def leaf_values(obs: Tensor, leaf: Leaf) -> Tensor:
    """A leaf's values out of a flat batch [N, size], in the leaf's own shape [N, *leaf.space.shape] for a Box
    (a one-hot or 0/1 vector [N, width] for the other leaves)."""
    values = obs[:, leaf.start:leaf.stop]
    if isinstance(leaf.space, gym.spaces.Box):
        return values.reshape(obs.shape[0], *leaf.space.shape)
    return values


def layer_init(layer: nn.Module, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Module:
    """CleanRL's initialisation: orthogonal weights of gain `std`, constant bias."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


# ---- the built-in encoders ---------------------------------------------------------------------------------------
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


def grid_convolutions(channels: int) -> nn.Sequential:
    """Small convolutions for a symbolic grid [C, H, W]: 2x2 convolutions of 16, 32 and 64 channels with a 2x2 max
    pool after the first (the sizes of MiniGrid's baseline models); [C, H, W] -> [64 ((H-1)//2 - 2) ((W-1)//2 - 2)]."""
    return nn.Sequential(
        nn.Conv2d(channels, 16, 2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 2), nn.ReLU(),
        nn.Conv2d(32, 64, 2), nn.ReLU(),
        nn.Flatten(),
    )


def grid_features(height: int, width: int) -> int:
    return 64 * ((height - 1) // 2 - 2) * ((width - 1) // 2 - 2)


def fits_grid(height: int, width: int) -> bool:
    return GRID_MIN <= height <= GRID_MAX and GRID_MIN <= width <= GRID_MAX


class GridEncoder(nn.Module):
    """Symbolic grids (MiniGrid's [7, 7, 3] view of object, colour and state indices) through `grid_convolutions`,
    their features concatenated with the observation's vector leaves (MiniGrid's direction, one-hot) as they are.

    The grid's values go in unscaled, as MiniGrid's baselines feed them. Takes image leaves [H, W, C] of a
    flattened observation, or a whole-observation image [C, H, W] (uint8, as the env adapter gives it), with
    7 <= H, W <= 32. output_size = 64 ((H-1)//2 - 2) ((W-1)//2 - 2) per grid + the vector leaves' width."""

    def __init__(self, observation: ObservationLayout):
        super().__init__()
        self.frames = observation.is_frames
        if self.frames:
            channels, height, width = observation.shape
            self._check(observation.shape, (height, width), "the whole observation")
            self.grids: list[tuple[int, int, tuple[int, ...]]] = []
            self.convs = nn.ModuleList([grid_convolutions(channels)])
            self.output_size = grid_features(height, width)
            self.vector_slices: list[tuple[int, int]] = []
            return
        images = observation.image_leaves
        if not images:
            raise UserError("the grid encoder needs an image in the observation (an [H, W, C] Box leaf of a Dict or "
                            "Tuple); this one has none")
        for leaf in images:
            self._check(leaf.space.shape, leaf.space.shape[:2], f"at {path_text(leaf.path)}")
        self.grids = [(leaf.start, leaf.stop, tuple(leaf.space.shape)) for leaf in images]
        self.convs = nn.ModuleList([grid_convolutions(shape[2]) for _, _, shape in self.grids])
        self.vector_slices = _runs([(leaf.start, leaf.stop) for leaf in observation.leaves if not leaf.image])
        self.output_size = sum(grid_features(*shape[:2]) for _, _, shape in self.grids) \
            + sum(stop - start for start, stop in self.vector_slices)

    @staticmethod
    def _check(shape: tuple[int, ...], height_width: tuple[int, ...], where: str) -> None:
        if len(shape) != 3 or not fits_grid(*height_width):
            raise no_encoder_takes(shape, where)

    def forward(self, obs: Tensor) -> Tensor:
        if self.frames:
            return self.convs[0](obs.float())
        n = obs.shape[0]
        parts = [conv(obs[:, start:stop].reshape(n, *shape).permute(0, 3, 1, 2))
                 for conv, (start, stop, shape) in zip(self.convs, self.grids)]
        parts += [obs[:, start:stop] for start, stop in self.vector_slices]
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def _runs(slices: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent [start, stop) slices merged."""
    merged: list[tuple[int, int]] = []
    for start, stop in slices:
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return merged


class POPGymEncoder(nn.Module):
    """POPGym's input map (popgym/baselines/ray_models/base_model.py with ppo.py's settings): Linear(obs, size) and a
    LayerNorm without learned scale or shift, then Linear(size, size) and a LeakyReLU. Weights orthogonal (gain 1),
    biases left at torch's default initialisation, as POPGym's `weight_init` does."""

    def __init__(self, obs_shape: tuple[int, ...], size: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(int(np.prod(obs_shape)), size), nn.LayerNorm(size, elementwise_affine=False),
            nn.Linear(size, size), nn.LeakyReLU(),
        )
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                nn.init.orthogonal_(layer.weight)
        self.output_size = size

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs.float())


def no_encoder_takes(shape: tuple[int, ...], where: str) -> UserError:
    return UserError(f"no built-in encoder takes the image of shape {tuple(shape)} {where}: the grid encoder takes "
                     f"grids of {GRID_MIN} to {GRID_MAX} cells a side, the Nature CNN whole-observation frames of at "
                     f"least {NATURE_MIN} x {NATURE_MIN}; bring your own with --encoder module:factory "
                     "(docs/cores.md)")


def _nature_cnn(observation: ObservationLayout, output_size: int = 512, bf16: bool = False) -> nn.Module:
    if not observation.is_frames:
        raise UserError(f"the nature_cnn encoder takes whole-observation frames [C, H, W], not observations of shape "
                        f"{observation.shape}")
    if min(observation.shape[1:]) < NATURE_MIN:
        raise no_encoder_takes(observation.shape, "(the whole observation)")
    return NatureCNN(observation.shape, output_size, bf16=bf16)


def _mlp(observation: ObservationLayout, hidden: int = 64, output_size: int = 512) -> nn.Module:
    if len(observation.shape) != 1:
        raise UserError(f"the mlp encoder takes flat vectors, not observations of shape {observation.shape}")
    return MLPEncoder(observation.shape, hidden, output_size)


def _grid(observation: ObservationLayout) -> nn.Module:
    return GridEncoder(observation)


def _popgym(observation: ObservationLayout, size: int = 128) -> nn.Module:
    if len(observation.shape) != 1:
        raise UserError(f"the popgym encoder takes flat vectors, not observations of shape {observation.shape}")
    return POPGymEncoder(observation.shape, size)


_BUILT_IN: dict[str, EncoderFactory] = {"nature_cnn": _nature_cnn, "mlp": _mlp, "grid": _grid, "popgym": _popgym}
_registry = FactoryRegistry("encoder", _BUILT_IN, "factory(observation, **options) -> nn.Module", reserved=(AUTO,))


def built_in_options(name: str, model: ModelConfig, perf: PerfConfig) -> dict[str, Any]:
    """The options a built-in encoder gets from the config's model settings (model.encoder_options add to them)."""
    return {"nature_cnn": {"output_size": model.encoder_size, "bf16": perf.cnn_bf16},
            "mlp": {"hidden": model.mlp_hidden, "output_size": model.encoder_size},
            "grid": {},
            "popgym": {"size": model.encoder_size}}.get(name, {})


def choose_encoder(observation: ObservationLayout) -> str:
    """`auto`: frames of at least 36 x 36 -> nature_cnn, smaller frames or image leaves -> grid, vectors -> mlp."""
    if observation.is_frames:
        return "nature_cnn" if min(observation.shape[1:]) >= NATURE_MIN else "grid"
    if observation.image_leaves:
        return "grid"
    if len(observation.shape) == 1:
        return "mlp"
    raise UserError(f"observations of shape {observation.shape} are not supported (images [C,H,W] or flat vectors)")


# ---- the registry ------------------------------------------------------------------------------------------------
def encoder_names() -> list[str]:
    """`auto`, the built-in encoders, then those registered since, in order."""
    return _registry.names()


def is_built_in(name: str) -> bool:
    return _registry.is_built_in(name)


def register_encoder(name: str, factory: EncoderFactory, *, overwrite: bool = False) -> None:
    """Make `factory(observation: ObservationLayout, **options) -> nn.Module` available as encoder `name`
    (config model.encoder, --encoder). A name already registered raises ValueError unless `overwrite`."""
    _registry.register(name, factory, overwrite=overwrite)


def require_encoder(name: str) -> None:
    """Raise UserError for a name that is not an encoder, suggesting close ones; a `module:factory` name is
    imported and registered under that full name."""
    _registry.require(name, " (or module:factory for your own)")


def make_encoder(name: str, observation: ObservationLayout, **options: Any) -> nn.Module:
    """Build encoder `name` (`auto`: choose_encoder) for `observation`; unknown names and bad options raise
    UserError. An encoder that is not built in must keep the contract (check_encoder)."""
    require_encoder(name)
    if name == AUTO:
        name = choose_encoder(observation)
    factory = _registry.factories[name]
    built_in = is_built_in(name)
    _registry.check_options(name, options)
    try:
        encoder = factory(observation, **options)
    except UserError:
        raise
    except TypeError as exc:
        if not built_in:
            raise UserError(f"encoder {name!r} failed to build: TypeError: {exc}") from None
        raise UserError(f"bad options for encoder {name!r}: {exc}") from None
    except Exception as exc:
        if built_in:
            raise
        raise UserError(f"encoder {name!r} failed to build: {type(exc).__name__}: {exc}") from None
    if not built_in:
        check_encoder(encoder, observation, name)
    return encoder


def check_encoder(encoder: Any, observation: ObservationLayout, name: str) -> None:
    """UserError unless `encoder` is an nn.Module with an int `output_size` that maps a batch of two observations
    (zeros) to float features [2, output_size]."""
    if not isinstance(encoder, nn.Module):
        raise UserError(f"encoder {name!r}: the factory must return a torch.nn.Module, got {type(encoder).__name__}")
    size = getattr(encoder, "output_size", None)
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise UserError(f"encoder {name!r} breaks the encoder contract (output_size must be a positive int, got "
                        f"{size!r})")
    dtype = torch.uint8 if observation.is_frames else torch.float32
    try:
        with torch.no_grad():
            features = encoder(torch.zeros((2, *observation.shape), dtype=dtype))
    except Exception as exc:
        raise UserError(f"encoder {name!r} failed on a batch of observations of shape {observation.shape}: "
                        f"{type(exc).__name__}: {exc}") from None
    if not isinstance(features, Tensor) or tuple(features.shape) != (2, size) or not features.is_floating_point():
        got = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise UserError(f"encoder {name!r} breaks the encoder contract (a batch [2, *{observation.shape}] must give "
                        f"float features [2, {size}], got {got})")


def build_encoder(observation: ObservationLayout, model: ModelConfig, perf: PerfConfig) -> nn.Module:
    """The encoder a config names (model.encoder) for `observation`: a built-in one gets its sizes from the model
    settings (built_in_options), every one gets model.encoder_options."""
    name = model.encoder
    require_encoder(name)
    resolved = choose_encoder(observation) if name == AUTO else name
    options = {**(built_in_options(resolved, model, perf) if is_built_in(resolved) else {}), **model.encoder_options}
    return make_encoder(resolved, observation, **options)


__all__ = ["EncoderFactory", "GridEncoder", "MLPEncoder", "NatureCNN", "ObservationLayout", "POPGymEncoder",
           "build_encoder", "check_encoder", "choose_encoder", "encoder_names", "layer_init", "leaf_values",
           "make_encoder", "register_encoder", "require_encoder"]
