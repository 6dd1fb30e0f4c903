"""The suite's autouse fixture (conftest.py) puts back every process global a test may change."""

from __future__ import annotations

import random
import signal

import numpy as np
import torch
import torch._dynamo

import brims_rl as br
from conftest import restore_process_globals, save_process_globals


def test_saved_globals_are_restored_after_a_test_changed_them_all():
    saved = save_process_globals()
    before = (random.random(), np.random.rand(), torch.rand(1))
    restore_process_globals(saved)

    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    torch.set_num_threads(max(1, torch.get_num_threads() % 2 + 1))
    torch.use_deterministic_algorithms(not saved["deterministic"])
    torch.backends.cudnn.allow_tf32 = not saved["cudnn_tf32"]
    torch.backends.cuda.matmul.allow_tf32 = not saved["matmul_tf32"]
    torch.set_default_dtype(torch.float64)
    torch._dynamo.config.recompile_limit = saved["dynamo"]["recompile_limit"] + 5
    signal.signal(signal.SIGTERM, lambda *a: None)
    br.register_core("lstm", br.make_core, overwrite=True)  # a built-in name replaced, and a new name
    br.register_core("globals-test", br.make_core)
    br.register_encoder("globals-test", br.make_encoder)

    restore_process_globals(saved)
    assert (random.random(), np.random.rand(), torch.rand(1)) == before  # same generator states
    after = save_process_globals()
    for key in ("threads", "deterministic", "cudnn_tf32", "matmul_tf32", "dtype", "dynamo", "signals"):
        assert after[key] == saved[key], key
    assert "globals-test" not in br.core_names() and "globals-test" not in br.encoder_names()
    assert after["registered"] == saved["registered"]  # the built-in lstm factory is back


IMPORT_EVERYTHING = """
import importlib, json, pkgutil
import torch, torch._dynamo, torch.optim.optimizer as optim_module

def torch_state():
    return {
        "optimizer_hooks": [len(optim_module._global_optimizer_pre_hooks), len(optim_module._global_optimizer_post_hooks)],
        "module_hooks": [len(torch.nn.modules.module._global_forward_hooks),
                         len(torch.nn.modules.module._global_backward_hooks)],
        "dynamo": {k: repr(v) for k, v in torch._dynamo.config.get_config_copy().items()},
        "inductor": {k: repr(v) for k, v in __import__("torch._inductor.config").
                     _inductor.config.get_config_copy().items()},
        "threads": torch.get_num_threads(), "dtype": str(torch.get_default_dtype()),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }

before = torch_state()
import brims_rl
for info in pkgutil.walk_packages(brims_rl.__path__, "brims_rl."):
    importlib.import_module(info.name)
after = torch_state()
print(json.dumps([k for k in before if before[k] != after[k]]))
"""


def test_importing_every_brims_rl_module_changes_nothing_in_torch():
    """No process-wide side effect at import: no optimizer or module hooks, no dynamo or inductor setting, threads,
    dtype or determinism (the acting path needs no cache kept fresh by a global hook)."""
    import json
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
