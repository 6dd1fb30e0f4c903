"""Full-game episode statistics shared by every backend adapter."""

from __future__ import annotations

import numpy as np


class EpisodeTracker:
    """Sums unclipped rewards and counts agent steps per env until a full game ends.

    The per-step cost is two vectorised additions; Python only loops over the envs whose game ended this step.
    """

    def __init__(self, num_envs: int) -> None:
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.lengths = np.zeros(num_envs, dtype=np.int64)

    def reset(self) -> None:
        self.returns[:] = 0.0
        self.lengths[:] = 0

    def update(self, reward: np.ndarray, counted: np.ndarray, ended: np.ndarray) -> list[tuple[int, float, int]]:
        """Add this step's unclipped `reward` and one step where `counted`; report and restart the envs that `ended`.

        Returns (env index, full-game return, length in agent steps) per finished game.
        """
        self.returns += reward
        self.lengths += counted
        if not ended.any():
            return []
        done = np.flatnonzero(ended)
        finished = [(int(i), float(self.returns[i]), int(self.lengths[i])) for i in done]
        self.returns[done] = 0.0
        self.lengths[done] = 0
        return finished
