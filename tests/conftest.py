"""Every test leaves the process as it found it: the global state that training or a test may change is saved
before each test and restored after it (random generators, torch's thread count, determinism and TF32 flags,
default dtype, dynamo's configuration, SIGINT/SIGTERM handlers, the warnings brims-rl has printed once, the cores
and encoders registered by name), so the suite passes in any order."""

from __future__ import annotations

import random
import signal
from typing import Any

import numpy as np
import pytest
import torch
import torch._dynamo

from brims_rl import cores, encoders, errors

REGISTRIES = (cores._registry, encoders._registry)  # the factories `register_core`/`register_encoder` add to

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def save_process_globals() -> dict[str, Any]:
    return {
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "dtype": torch.get_default_dtype(),
        "dynamo": torch._dynamo.config.get_config_copy(),
        "signals": {s: signal.getsignal(s) for s in SIGNALS},
        "warned": set(errors._warned),
        "registered": [dict(registry.factories) for registry in REGISTRIES],
    }


def restore_process_globals(saved: dict[str, Any]) -> None:
    random.setstate(saved["python_rng"])
    np.random.set_state(saved["numpy_rng"])
    torch.set_rng_state(saved["torch_rng"])
    if saved["cuda_rng"] is not None:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    if torch.get_num_threads() != saved["threads"]:
        torch.set_num_threads(saved["threads"])
    torch.use_deterministic_algorithms(saved["deterministic"], warn_only=saved["deterministic_warn_only"])
    torch.backends.cudnn.deterministic = saved["cudnn_deterministic"]
    torch.backends.cudnn.allow_tf32 = saved["cudnn_tf32"]
    torch.backends.cuda.matmul.allow_tf32 = saved["matmul_tf32"]
    torch.set_default_dtype(saved["dtype"])
    current = torch._dynamo.config.get_config_copy()
    for key, value in saved["dynamo"].items():  # only what changed (setting a deprecated key warns)
        if current.get(key) != value:
            setattr(torch._dynamo.config, key, value)
    errors._warned.clear()
    errors._warned.update(saved["warned"])
    for registry, factories in zip(REGISTRIES, saved["registered"]):
        registry.factories.clear()
        registry.factories.update(factories)
    for s, handler in saved["signals"].items():
        if handler is not None:  # None: set outside Python, cannot be restored from here (and was not changed)
            signal.signal(s, handler)


@pytest.fixture(autouse=True)
def _leave_process_globals_as_found():
    saved = save_process_globals()
    yield
    restore_process_globals(saved)


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is faster and immune to a busy machine's thread contention (the autouse fixture
    above restores the count)."""
    torch.set_num_threads(1)
    yield
