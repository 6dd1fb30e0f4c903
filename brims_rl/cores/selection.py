"""Top-k module selection (RIMs' active set), shared by the step-by-step and the sequence paths."""

from __future__ import annotations

import torch
from torch import Tensor


def select_top_k(null_attention: Tensor, top_k: int, preferred: Tensor | None = None,
                 tolerance: float = 0.0) -> Tensor:
    """The active mask [n, B] bool: the `top_k` modules with the least null attention [n, B] (ties: lower index).

    `preferred` [n, B] bool marks the modules selected when this step was first computed (the rollout). A preferred
    module's score counts as `tolerance` lower, so wherever the replay's scores differ from the rollout's by less than
    tolerance / 2 (rounding in other kernels, batch shapes or fused graphs) the replay selects exactly what the rollout
    did, and wherever a score differs by more than the tolerance the module's own score decides. The record is only
    meaningful with the weights that made it: PPO passes it until the update's first optimizer step, never after.

    A module's rank is the number of modules that come before it: a smaller score, or an equal score and a lower
    index. The `top_k` lowest ranks are active; that is a stable sort's first `top_k`, computed with comparisons
    (no sort kernel: it fuses into the step's kernels and runs on any device). NaN scores count as +inf, so exactly
    `top_k` modules are active whatever the scores.
    """
    score = null_attention if preferred is None else null_attention - tolerance * preferred
    score = torch.nan_to_num(score, nan=float("inf"))
    n = score.shape[0]
    mine, other = score.unsqueeze(1), score.unsqueeze(0)  # [n, 1, B] and [1, n, B]: module i against module j
    index = torch.arange(n, device=score.device)
    lower_index = (index.view(1, n) < index.view(n, 1)).unsqueeze(-1)  # [i, j, 1]: j comes before i on a tie
    before = (other < mine) | ((other == mine) & lower_index)
    return before.sum(1) < top_k
