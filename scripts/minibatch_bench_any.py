"""Forward + backward of POPGym's minibatch shape through the cores of whichever brims_rl is on PYTHONPATH.

    PYTHONPATH=OTHER_CHECKOUT python scripts/minibatch_bench_any.py ROUNDS PRESET ...

The harness of `brims-rl bench --minibatch 8,256` (brims_rl/bench_shape.py) in a form that runs against any commit,
including those from before that mode existed, so that a before/after table compares one harness: B=8 sequences of
T=256 steps, 128 inputs, an episode start with probability 1/52 per step and row, a plain torch.nn.LSTM(128, 128)
beside the agent presets' cores, timed round-robin, median CPU time per forward + backward (one torch thread). Prints
one JSON object: per core median_cpu_ms and first_s (the first call: compiling, for a compiled core).
"""

import json
import statistics
import sys
import time

import torch

from brims_rl.cores import make_core
from brims_rl.presets import load_preset

torch.set_num_threads(1)
B, T, D, START_EVERY = 8, 256, 128, 52.0
rounds = int(sys.argv[1])
generator = torch.Generator().manual_seed(0)
x = torch.randn(T, B, D, generator=generator).requires_grad_()
starts = torch.rand(T, B, generator=generator) < 1 / START_EVERY
plain = torch.nn.LSTM(D, 128)
cores = {"nn.LSTM": None}
for name in sys.argv[2:]:
    preset = load_preset("agent", name)["core"]
    cores[name] = make_core(preset["name"], D, **preset.get("options", {}))
weight = torch.randn(T, B, 512, generator=generator)
calls, first = {}, {}
for name, core in cores.items():
    state = () if core is None else tuple(torch.randn(s.shape, generator=generator) for s in core.initial_state(B))

    def run(core=core, state=state):
        y = plain(x)[0] if core is None else core(x, state, starts)[0]
        (y * weight[..., : y.shape[-1]]).sum().backward()

    start = time.perf_counter()
    run()
    first[name] = time.perf_counter() - start
    run()
    calls[name] = run
times = {name: [] for name in calls}
for _ in range(rounds):
    for name, call in calls.items():
        start = time.process_time()
        call()
        times[name].append(time.process_time() - start)
print(json.dumps({name: {"median_cpu_ms": statistics.median(t) * 1e3, "first_s": first[name]}
                  for name, t in times.items()}))
