"""The suite's autouse fixture (conftest.py) puts back every process global a test may change."""

from __future__ import annotations

import random
import signal

import numpy as np
import torch
import torch._dynamo

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

    restore_process_globals(saved)
    assert (random.random(), np.random.rand(), torch.rand(1)) == before  # same generator states
    after = save_process_globals()
    for key in ("threads", "deterministic", "cudnn_tf32", "matmul_tf32", "dtype", "dynamo", "signals"):
        assert after[key] == saved[key], key
