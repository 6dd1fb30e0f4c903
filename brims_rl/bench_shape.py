"""`brims-rl bench --minibatch B,T`: forward and backward of one PPO minibatch through each core, in one process.

The cores read the same sequence x [T, B, input size] with episode starts at random (each step of each row starts an
episode with probability 1 / `start_every`), from a random state, and backpropagate a fixed random weighting of their
outputs. They are timed round-robin (one call each per round, so that drift in the machine's speed hits all alike),
against a plain `torch.nn.LSTM(input size, 128)` over the same sequence without resets, and the median is reported
with its ratio to the `lstm` core and to that plain LSTM. Beside each time ratio stands the ratio of matrix-product
FLOPs per sample-step (forward), so a core's cost can be told from its arithmetic.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from brims_rl.agent import count_parameters
from brims_rl.config import Config
from brims_rl.cores import make_core
from brims_rl.cores.compile import fallbacks
from brims_rl.errors import UserError

PLAIN_LSTM = "nn.LSTM"


@dataclass
class ShapeResult:
    core: str
    parameters: int
    first_call_s: float  # the first forward + backward: compiling, for a compiled core
    median_ms: float  # wall clock
    median_cpu_ms: float  # CPU time of the process (all its threads): on a shared machine, what the call itself cost
    flops_per_sample_step: float  # matrix products of one forward step, per batch row

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_minibatch(text: str) -> tuple[int, int]:
    """"B,T" (sequences, steps) -> (B, T); one clear line for anything else."""
    try:
        batch, steps = (int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"--minibatch takes B,T (sequences, steps), e.g. 8,256; got {text!r}") from None
    if batch <= 0 or steps <= 0:
        raise UserError(f"--minibatch needs positive B and T, got {text!r}")
    return batch, steps


def episode_starts(steps: int, batch: int, start_every: float, generator: torch.Generator) -> torch.Tensor:
    """[T, B] bool: each step of each row starts an episode with probability 1 / start_every."""
    return torch.rand(steps, batch, generator=generator) < 1.0 / start_every


def rnn_flops(rnn: nn.RNNBase) -> float:
    """Forward matrix-product FLOPs per sample-step of a torch RNN: 2 x gates x hidden x (input + hidden) per layer
    (its fused kernels are invisible to torch's FLOP counter)."""
    gates = {"LSTM": 4, "GRU": 3}.get(rnn.mode, 1)
    widths = [rnn.input_size] + [rnn.hidden_size] * (rnn.num_layers - 1)
    return float(sum(2 * gates * rnn.hidden_size * (w + rnn.hidden_size) for w in widths))


def matmul_flops(core: nn.Module, input_size: int) -> float:
    """Forward matrix-product FLOPs per sample-step of a core: counted on a short no-grad call, or for a core on a
    torch RNN (`core.rnn`) by its formula."""
    if isinstance(getattr(core, "rnn", None), nn.RNNBase):
        return rnn_flops(core.rnn)
    steps, batch = 4, 2
    x = torch.zeros(steps, batch, input_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        core(x, core.initial_state(batch), torch.zeros(steps, batch, dtype=torch.bool))
    return counter.get_total_flops() / (steps * batch)


def _call(core: nn.Module | None, plain: nn.LSTM, x: torch.Tensor, state: tuple, starts: torch.Tensor,
          weight: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        if core is None:
            y, _ = plain(x)
        else:
            y, _ = core(x, state, starts)
        (y * weight[..., : y.shape[-1]]).sum().backward()
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
    return run


def measure_shape(configs: dict[str, Config], batch: int, steps: int, input_size: int, start_every: float,
                  rounds: int, device: torch.device, seed: int = 0) -> dict[str, Any]:
    """Time forward + backward of each config's core (and of a plain nn.LSTM) at this minibatch shape."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, input_size, generator=generator).to(device).requires_grad_()
    starts = episode_starts(steps, batch, start_every, generator).to(device)
    plain = nn.LSTM(input_size, 128).to(device)
    cores: dict[str, nn.Module | None] = {PLAIN_LSTM: None}
    for name, config in configs.items():
        try:
            cores[name] = make_core(config.core.name, input_size, **config.core.options).to(device)
        except ValueError as exc:
            raise UserError(f"bad options for core {config.core.name!r}: {exc}") from None
    width = max([128] + [c.output_size for c in cores.values() if c is not None])
    weight = torch.randn(steps, batch, width, generator=generator).to(device)
    calls, first = {}, {}
    for name, core in cores.items():
        state = () if core is None else tuple(torch.randn(s.shape, generator=generator).to(device)
                                               for s in core.initial_state(batch))
        calls[name] = _call(core, plain, x, state, starts, weight)
        start = time.perf_counter()
        calls[name]()
        first[name] = time.perf_counter() - start
        calls[name]()  # a second warm-up: the backward of a compiled call may compile on its second call too
    times: dict[str, list[float]] = {name: [] for name in cores}
    cpu_times: dict[str, list[float]] = {name: [] for name in cores}
    for _ in range(rounds):
        for name, call in calls.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            call()
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - start_cpu)
    results = {}
    for name, core in cores.items():
        if core is None:
            flops = rnn_flops(plain)
        else:  # counted eagerly: torch's FLOP counter runs no compiled code
            options = configs[name].core.options
            eager = make_core(configs[name].core.name, input_size, **{**options, "compile": False}) \
                if "compile" in options else core
            flops = matmul_flops(eager, input_size)
        results[name] = ShapeResult(core=name, parameters=count_parameters(plain if core is None else core),
                                    first_call_s=first[name], median_ms=statistics.median(times[name]) * 1e3,
                                    median_cpu_ms=statistics.median(cpu_times[name]) * 1e3,
                                    flops_per_sample_step=flops).as_dict()
    return {"batch": batch, "steps": steps, "input_size": input_size, "start_every": start_every,
            "starts": int(starts.sum()), "rounds": rounds, "cores": results, "compile_fallbacks": fallbacks()}


def print_shape_table(report: dict[str, Any], header: str) -> None:
    """One row per core. On the CPU the times are CPU time of the process (with one torch thread, the call's own
    cost even on a busy machine); on a GPU wall clock."""
    rows = report["cores"]
    key = "median_cpu_ms" if report.get("device", "cpu") == "cpu" else "median_ms"
    base_core = rows.get("lstm")
    plain = rows[PLAIN_LSTM]
    clock = "CPU time" if key == "median_cpu_ms" else "wall clock"
    print(f"{header} | minibatch B={report['batch']} x T={report['steps']}, input {report['input_size']}, an episode "
          f"start every ~{report['start_every']:g} steps per row ({report['starts']} starts) | forward + backward, "
          f"median {clock} of {report['rounds']}")
    width = max(10, *(len(name) + 2 for name in rows))
    print(f"{'core':<{width}}{'params':>11}{'first call':>12}{'ms':>9}{'us/sample-step':>16}{'x lstm':>8}"
          f"{'x nn.LSTM':>11}{'MFLOP/step':>12}{'FLOP x lstm':>13}")
    for name, r in rows.items():
        per_sample = r[key] * 1e3 / (report["batch"] * report["steps"])
        vs_lstm = f"{r[key] / base_core[key]:.2f}" if base_core else "-"
        flop_vs_lstm = f"{r['flops_per_sample_step'] / base_core['flops_per_sample_step']:.2f}" if base_core else "-"
        print(f"{name:<{width}}{r['parameters']:>11,}{r['first_call_s']:>11.1f}s{r[key]:>9.1f}"
              f"{per_sample:>16.1f}{vs_lstm:>8}{r[key] / plain[key]:>11.2f}"
              f"{r['flops_per_sample_step'] / 1e6:>12.3f}{flop_vs_lstm:>13}")
    for line in report["compile_fallbacks"]:
        print(f"compile fallback: {line}")
