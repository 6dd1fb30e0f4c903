"""What RIMs/BRIMs modules did while acting: diagnostics for TensorBoard and the per-step trace for module views.

Both read what the acting step already returns (the active masks and the input attention), after the step, so they
change nothing about the step. Diagnostics are device buffers that acting adds into in place: in-place adds into
buffers allocated before a CUDA graph is captured keep counting at every replay of the graph, so a captured policy
step gathers them too.
"""

from __future__ import annotations

import torch
from torch import Tensor


class ModuleActivity:
    """Statistics and an optional trace of one modular core's acting steps.

    `module_counts`: modules per layer, bottom first; `heads`: input-attention heads per layer; `has_higher[l]`:
    layer l reads the layer above (top-down). Statistics buffer, float64 [1 + decisions + layers]: samples, each
    module's active count (layer by layer), each layer's summed attention on the layer above.
    """

    def __init__(self, module_counts: list[int], heads: list[int], has_higher: list[bool]):
        self.module_counts, self.heads, self.has_higher = module_counts, heads, has_higher
        self.decision_size = sum(module_counts)
        self._stats: Tensor | None = None
        self._trace: list[list[tuple[Tensor, Tensor | None]]] | None = None

    def _buffer(self, device: torch.device) -> Tensor:
        if self._stats is None or self._stats.device != device:
            self._stats = torch.zeros(1 + self.decision_size + len(self.module_counts), dtype=torch.float64,
                                      device=device)
        return self._stats

    def record_step(self, actives: list[Tensor], probs: list[Tensor]) -> Tensor:
        """Add one acting step (per layer: active [n, B] bool, input attention [n, B, heads, 1 + slots], slot 0 the
        null slot) to the statistics and the trace; return its decisions [B, decision_size]."""
        stats = self._buffer(actives[0].device)
        for l, (active, prob) in enumerate(zip(actives, probs)):
            to_higher = None
            if self.has_higher[l]:
                lower_slots = 1 + (1 if l == 0 else self.module_counts[l - 1])  # null + lower sources
                to_higher = prob[..., lower_slots:].sum(-1)  # [n, B, heads]: each module's share on layer l+1
                stats[1 + self.decision_size + l].add_(to_higher.sum())
            if self._trace is not None:
                self._trace[l].append((active.T, None if to_higher is None else to_higher.mean(-1).T))
        decisions = torch.cat(actives).T
        stats[0].add_(decisions.shape[0])
        stats[1: 1 + self.decision_size].add_(decisions.sum(0))
        return decisions

    def diagnostics(self) -> dict[str, float]:
        """Per-module active fractions and, with top-down, the lower layers' attention share on the higher layer,
        since the last call (which clears them)."""
        result: dict[str, float] = {}
        if self._stats is None:
            return result
        count, *rest = self._stats.tolist()
        if count:
            active, to_higher = rest[: self.decision_size], rest[self.decision_size:]
            start = 0
            for l, n in enumerate(self.module_counts):
                for k in range(n):
                    result[f"layer{l}/module{k}_active"] = active[start + k] / count
                start += n
                if self.has_higher[l]:
                    result[f"layer{l}/attention_to_higher"] = to_higher[l] / (count * self.heads[l] * n)
        self._stats.zero_()
        return result

    def trace_modules(self, enabled: bool = True) -> None:
        """Start (or stop) recording, at every acting step, which modules of every layer are active and how much
        attention each module gives the higher layer; `module_trace()` returns the record."""
        self._trace = [[] for _ in self.module_counts] if enabled else None

    def module_trace(self) -> list[dict[str, Tensor | None]]:
        """Per layer, bottom first, the steps recorded since tracing started or since the last call (which clears
        them): "active" bool [T, B, num_modules] and "to_higher" float [T, B, num_modules] (the module's input
        attention on the higher layer's slots, averaged over heads; None for a layer without top-down input)."""
        if self._trace is None:
            raise RuntimeError("module tracing is off; call trace_modules() first")
        result = []
        for steps in self._trace:
            active = torch.stack([a for a, _ in steps]) if steps else torch.zeros(0, 0, 0, dtype=torch.bool)
            has_higher = bool(steps) and steps[0][1] is not None
            result.append({"active": active, "to_higher": torch.stack([h for _, h in steps]) if has_higher else None})
        self._trace = [[] for _ in self.module_counts]
        return result
