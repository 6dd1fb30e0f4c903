"""The checkpoint format, in one place: what a training checkpoint holds, how it is written (atomically, never with
NaN/inf), and how it is read back (without executing code from the file: weights_only) into a trainer, an agent for
evaluation, or a policy. Where checkpoints lie in a run folder is run_folder.py's.

A checkpoint is a dict: format, model (the Agent's state_dict), optimizer, config (Config.to_dict()), global_step,
updates, rng {torch, generator, cuda}, observation and actions: the spaces the agent acts in. observation is
{shape, dtype} of what the agent sees, plus "space", the env's own observation space as plain data
(environments/spaces.describe_space) where the env adapter flattened it; actions is {n} for Discrete,
{type: "MultiDiscrete", nvec, start} or {type: "Box", shape, dtype, low, high}. A checkpoint without observation
and actions (an older format) gets them from its weights and config where they tell them (stored_spaces).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from brims_rl.agent import Agent
from brims_rl.atomic import write_bytes_atomic
from brims_rl.config import Config
from brims_rl.cores import require_stored_core
from brims_rl.environments import resolve_env
from brims_rl.environments.spaces import describe_space, space_from_description
from brims_rl.errors import RunFailure, UserError
from brims_rl.run_folder import CHECKPOINTS, LATEST, RunFolder

FORMAT = "brims-rl-checkpoint/1"


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename over the target: never a half-written file.

    The folder must exist (a vanished run folder is an error, not silently re-created). On any failure (disk full,
    permission denied) the temp file is removed and the OSError, naming the file, propagates; the old file stays.
    """
    path = Path(path)
    bad = first_nonfinite(payload)
    if bad is not None:
        raise RunFailure(f"{bad} holds NaN or infinite values; {path} was not written (the file on disk, if any, "
                         "is the last good one)")
    buffer = io.BytesIO()  # serialise first: a failed write is then a plain OSError, not a serializer error
    torch.save({"format": FORMAT, **payload}, buffer)
    write_bytes_atomic(path, buffer.getbuffer())


def first_nonfinite(tree: Any, where: str = "checkpoint") -> str | None:
    """The name of the first floating-point tensor in a (nested) dict/list that holds NaN or inf, else None."""
    if isinstance(tree, torch.Tensor):
        return where if tree.is_floating_point() and not bool(torch.isfinite(tree).all()) else None
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    for key, value in items:
        found = first_nonfinite(value, f"{where}[{key!r}]" if where != "checkpoint" else str(key))
        if found is not None:
            return found
    return None


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a brims-rl checkpoint; a missing, corrupt or foreign file raises UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a readable brims-rl checkpoint (not a file torch.save wrote; checkpoints are "
                        f"the .pt files in a run folder's {CHECKPOINTS}/)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path} is not a readable brims-rl checkpoint (it holds objects other than tensors and "
                        "plain data; loading refuses them, so it never runs code from a file)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError):
        raise UserError(f"{path} is not a readable brims-rl checkpoint (truncated or corrupt file)") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a brims-rl checkpoint")
    return payload


def find_checkpoint(path: Path) -> Path:
    """The checkpoint a path means: a checkpoint file itself; the latest checkpoint of a run folder, of its
    checkpoints/ folder or of its config.json. UserError saying what the path holds when it holds none."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found")
    if path.is_file() and path.name == RunFolder(path.parent).config.name:
        return find_checkpoint(path.parent)  # a run's config.json: its run folder
    if path.is_file():
        return path
    if (path / LATEST).is_file():  # a checkpoints/ folder
        return path / LATEST
    run = RunFolder(path)
    if run.latest.is_file():
        return run.latest
    if run.holds_run():
        raise UserError(f"run folder {path} has no checkpoint yet ({run.latest} not found; the run stopped before "
                        "its first save)")
    if run.checkpoints.is_dir() or path.name == CHECKPOINTS:
        raise UserError(f"{path} has no checkpoint ({run.latest if run.checkpoints.is_dir() else path / LATEST} "
                        "not found)")
    raise UserError(f"{path} is not a brims-rl run folder (no {run.config.name}) and holds no checkpoint")


# ---- training state ----------------------------------------------------------------------------------------------
def training_payload(agent: Agent, optimizer: torch.optim.Optimizer, config: Config, global_step: int, updates: int,
                     kl_coef: float, generator: torch.Generator, observation_space: gym.spaces.Box,
                     action_space: gym.Space | int, env_observation_space: gym.Space | None = None) -> dict[str, Any]:
    """Everything a run needs to continue exactly (weights, Adam, counters, the KL penalty's adapted coefficient,
    RNG streams) and a policy to act.
    `observation_space`: what the agent sees; `env_observation_space`: the env's own space, when the env adapter
    flattens it (a Dict, Tuple, Discrete, ... observation); `action_space`: the env's (an int n: Discrete(n))."""
    rng = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"model": agent.state_dict(), "optimizer": optimizer.state_dict(), "config": config.to_dict(),
            "global_step": global_step, "updates": updates, "ppo": {"kl_coef": float(kl_coef)}, "rng": rng,
            "observation": observation_record(observation_space, env_observation_space),
            "actions": action_record(action_space)}


def observation_record(observation_space: gym.spaces.Box, env_observation_space: gym.Space | None) -> dict[str, Any]:
    record: dict[str, Any] = {"shape": [int(n) for n in observation_space.shape],
                              "dtype": np.dtype(observation_space.dtype).name}
    if env_observation_space is not None and not isinstance(env_observation_space, gym.spaces.Box):
        record["space"] = describe_space(env_observation_space)
    return record


def action_record(action_space: gym.Space | int) -> dict[str, Any]:
    """{n} for Discrete (the format older checkpoints have), else the space's description with its type."""
    if not isinstance(action_space, gym.Space):
        return {"n": int(action_space)}
    if isinstance(action_space, gym.spaces.Discrete):
        return {"n": int(action_space.n)}
    return describe_space(action_space)


def restore_training(state: dict[str, Any], agent: Agent, optimizer: torch.optim.Optimizer,
                     generator: torch.Generator, device: torch.device, rng: bool = True) -> None:
    """Load a training payload into a freshly built agent and optimizer; `rng`: also the RNG streams (rank 0 only:
    other ranks keep their own streams, seed + rank)."""
    if not isinstance(state.get("model"), dict) or not isinstance(state.get("optimizer"), dict):
        raise UserError("the checkpoint holds no model or optimizer state to continue from")
    load_weights(agent, state["model"], "the checkpoint does not fit this run's model")
    try:
        for group in state["optimizer"]["param_groups"]:  # a run may resume on another kind of device
            group["fused"] = device.type == "cuda"
        optimizer.load_state_dict(state["optimizer"])
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise UserError(f"the checkpoint's optimizer state does not fit this run's model ({_one_line(exc)})") \
            from None
    streams = state.get("rng", {}) if rng else {}
    if "torch" in streams:
        torch.set_rng_state(streams["torch"])
    if "generator" in streams:
        generator.set_state(streams["generator"])
    if "cuda" in streams and torch.cuda.is_available():  # the saving machine may have had more GPUs
        for index, cuda_state in enumerate(streams["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def weights_mismatch(expected: dict[str, Any], weights: dict[str, Any], limit: int = 6) -> str | None:
    """One line naming the keys `weights` misses, the keys it has in excess and the tensors whose shapes differ from
    `expected` (a model's state_dict), or None when they fit."""

    def names(keys: list[str]) -> str:
        shown = ", ".join(keys[:limit])
        return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")

    def shape(value: Any) -> str:
        return f"[{', '.join(map(str, value.shape))}]" if hasattr(value, "shape") else type(value).__name__

    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    reshaped = [f"{k} {shape(weights[k])} in the checkpoint, {shape(expected[k])} in the model" for k in expected
                if k in weights and getattr(weights[k], "shape", None) != getattr(expected[k], "shape", None)]
    parts = []
    if missing:
        parts.append(f"missing {names(missing)}")
    if unexpected:
        parts.append(f"unexpected {names(unexpected)}")
    if reshaped:
        parts.append(f"different shapes: {names(reshaped)}")
    return "; ".join(parts) or None


def load_weights(agent: Agent, weights: dict[str, Any], what: str) -> None:
    """Load a state_dict into the agent; UserError "`what`: <the mismatch in one line>" when it does not fit."""
    mismatch = weights_mismatch(agent.state_dict(), weights)
    if mismatch is not None:
        raise UserError(f"{what}: {mismatch}")
    try:
        agent.load_state_dict(weights)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise UserError(f"{what}: {_one_line(exc)}") from None


# ---- reading for evaluation and policies -------------------------------------------------------------------------
def load_checkpoint(path: Path) -> tuple[Path, dict[str, Any], Config]:
    """The checkpoint file a path means (see find_checkpoint), its payload, and the config stored inside it; the
    config's core must be loadable in this process."""
    file = find_checkpoint(Path(path))
    payload = load(file, map_location="cpu")
    for key in ("model", "config"):
        if not isinstance(payload.get(key), dict):
            raise UserError(f"{file} is not a complete brims-rl checkpoint (no {key!r})")
    config = Config.from_dict(payload["config"], stored=True)
    require_stored_core(config.core.name, str(file))
    return file, payload, config


def build_agent(payload: dict[str, Any], config: Config, obs_shape: tuple[int, ...], action_space: gym.Space | int,
                device: torch.device | str) -> Agent:
    """The checkpoint's agent for these observation and action spaces (an int n: Discrete(n)), in eval mode on
    `device`; the env's own observation space, where the checkpoint stored one, tells the encoder its leaves."""
    agent = Agent(tuple(obs_shape), action_space, config, stored_env_observation_space(payload))
    load_weights(agent, payload["model"], "the checkpoint's weights do not fit the model its config describes")
    return agent.to(device).eval()


def stored_env_observation_space(payload: dict[str, Any]) -> gym.Space | None:
    """The env's own observation space the checkpoint stored (where the env adapter flattened it), else None."""
    stored = payload.get("observation")
    if not isinstance(stored, dict) or not isinstance(stored.get("space"), dict):
        return None
    try:
        return space_from_description(stored["space"])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise UserError(f"the checkpoint's observation space is unreadable ({exc})") from None


def stored_spaces(payload: dict[str, Any], config: Config) -> tuple[gym.spaces.Box, gym.Space, gym.Space | None] | None:
    """The observation and action spaces the checkpoint's agent acts in, and the env's own observation space where
    the env adapter flattened it (else None): as stored, or for a checkpoint that stores none, derived from its
    weights (actor rows, encoder input) and config (Atari image size). None where that cannot tell them (an image
    env other than Atari: its image size is the env's)."""
    model = payload["model"]
    try:
        stored = payload.get("observation")
        env_space = None
        if isinstance(stored, dict):
            shape, dtype = tuple(int(n) for n in stored["shape"]), np.dtype(stored["dtype"])
            if isinstance(stored.get("space"), dict):
                env_space = space_from_description(stored["space"])
        else:
            derived = _derived_observation(model, config)
            if derived is None:
                return None
            shape, dtype = derived
        actions = payload.get("actions")
        if isinstance(actions, dict) and "type" in actions:
            action_space = space_from_description(actions)
        else:
            n = int(actions["n"]) if isinstance(actions, dict) else int(model["actor.weight"].shape[0])
            action_space = gym.spaces.Discrete(n)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise UserError(f"the checkpoint does not say which spaces its agent acts in ({exc})") from None
    if dtype == np.uint8:
        observation = gym.spaces.Box(0, 255, shape=shape, dtype=np.uint8)
    else:
        observation = gym.spaces.Box(-np.inf, np.inf, shape=shape, dtype=dtype)
    return observation, action_space, env_space


def _derived_observation(model: dict[str, Any], config: Config) -> tuple[tuple[int, ...], np.dtype] | None:
    if "encoder.net.1.weight" in model:  # MLP encoder: flat float32 vectors of its input width
        return (int(model["encoder.net.1.weight"].shape[1]),), np.dtype(np.float32)
    channels = int(model["encoder.convs.0.weight"].shape[1])  # Nature CNN: stacked uint8 frames
    if resolve_env(config.env.id).is_atari:
        return (channels, config.env.image_size, config.env.image_size), np.dtype(np.uint8)
    return None
