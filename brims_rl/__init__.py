"""brims-rl: PPO on vectorized Atari and gymnasium envs with interchangeable recurrent cores (LSTM, GRU, RIMs, BRIMs).

The public API, `import brims_rl as br`:

    br.make_config(env="CueMemory-v0", *, core=None, agent=None, protocol=None, overrides=(), total_steps=None,
                   num_envs=None, seed=None, device=None) -> Config
    br.train(config=None, run_dir=None, *, resume=False, env=None, progress=False, callback=None) -> TrainResult
    br.load_policy(run_dir_or_checkpoint, device="cpu") -> Policy
    br.evaluate(run_or_policy, env=None, *, episodes=10, greedy=False, seed=None, num_envs=8, device="cpu",
                life_reset=True) -> EvalResult
    br.make_core(name, input_size, **options), br.register_core(name, factory, *, overwrite=False), br.core_names()
    br.check_core(core, input_size, *, batch_size=3, steps=5)  # raises br.CoreContractError
    br.register_encoder(name, factory, *, overwrite=False), br.encoder_names(), br.make_encoder(name, observation,
                   **options), br.ObservationLayout, br.leaf_values(obs, leaf)  # encoders (docs/cores.md)
    br.Config, br.UserError, br.__version__

Names are imported on first use, so `import brims_rl` stays light (the CLI and its subprocesses import what they use).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "make_config": "brims_rl.api", "train": "brims_rl.api", "TrainResult": "brims_rl.api",
    "evaluate": "brims_rl.api", "EvalResult": "brims_rl.evaluation.play",
    "load_policy": "brims_rl.policy", "Policy": "brims_rl.policy",
    "make_core": "brims_rl.cores", "register_core": "brims_rl.cores", "core_names": "brims_rl.cores",
    "check_core": "brims_rl.cores.contract", "CoreContractError": "brims_rl.cores.contract",
    "register_encoder": "brims_rl.encoders", "encoder_names": "brims_rl.encoders", "make_encoder": "brims_rl.encoders",
    "ObservationLayout": "brims_rl.encoders", "leaf_values": "brims_rl.encoders",
    "Config": "brims_rl.config", "UserError": "brims_rl.errors",
}
__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:
    from brims_rl.api import TrainResult, evaluate, make_config, train
    from brims_rl.config import Config
    from brims_rl.cores import core_names, make_core, register_core
    from brims_rl.cores.contract import CoreContractError, check_core
    from brims_rl.encoders import ObservationLayout, encoder_names, leaf_values, make_encoder, register_encoder
    from brims_rl.errors import UserError
    from brims_rl.evaluation.play import EvalResult
    from brims_rl.policy import Policy, load_policy


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'brims_rl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
