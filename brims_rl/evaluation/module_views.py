"""Module views of RIMs and BRIMs cores: which modules wake up when, and how much a lower layer listens to the
higher one, for the first game `evaluate` plays (env 0's first game, the one `--video` records).

The numbers come from the core's optional module trace (`trace_modules()` / `module_trace()`, see ModularCore);
cores without it (LSTM, GRU, feed-forward) get no module views. Two views:

- `plot_modules` writes modules.png: per layer a module x time raster of the active modules and each module's
  activation rate; per lower layer with top-down input, its attention on the higher layer over time.
- `ModulePanel` draws the side panel of `evaluate --video`: per layer a row of squares, lit while a module is active.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from brims_rl.cores.features import traces_modules

# Okabe-Ito colours, one per layer (bottom layer first)
LAYER_COLORS = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (204, 121, 167), (240, 228, 66), (213, 94, 0)]


class FirstGameTrace:
    """Collects env 0's module trace step by step until its first game ends."""

    def __init__(self, core: Any) -> None:
        self.core = core
        core.trace_modules(True)
        self.module_counts: list[int] = list(core.module_counts)  # modules per layer, bottom first
        self.num_layers = len(self.module_counts)
        self.active: list[list[np.ndarray]] = [[] for _ in range(self.num_layers)]  # per layer: [n] bool per step
        self.to_higher: list[list[np.ndarray]] = [[] for _ in range(self.num_layers)]  # per layer: [n] per step
        self.done = False

    @classmethod
    def for_core(cls, core: Any) -> "FirstGameTrace | None":
        """A trace for a core that offers one (`trace_modules`, `module_trace` and `module_counts`: RIMs, BRIMs),
        else None."""
        return cls(core) if traces_modules(core) else None

    @property
    def steps(self) -> int:
        return len(self.active[0])

    def step(self, env0_game_over: bool) -> list[np.ndarray] | None:
        """Take the core's record of the steps since the last call; keep env 0's part while its first game lasts.

        Returns env 0's active modules of the latest step, one bool array per layer, or None once the game is over.
        """
        trace = self.core.module_trace()
        if self.done:
            return None
        latest = []
        for l, layer in enumerate(trace):
            active = layer["active"][:, 0].cpu().numpy()
            self.active[l].extend(active)
            if layer["to_higher"] is not None:
                self.to_higher[l].extend(layer["to_higher"][:, 0].float().cpu().numpy())
            latest.append(active[-1])
        self.done = env0_game_over
        return latest

    def close(self) -> None:
        self.core.trace_modules(False)

    def arrays(self) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        """Per layer: active [T, n] bool, and attention on the higher layer [T, n] (None without top-down input)."""
        active = [np.array(steps, dtype=bool) for steps in self.active]
        to_higher = [np.array(steps, dtype=np.float64) if steps else None for steps in self.to_higher]
        return active, to_higher


def plot_modules(active: list[np.ndarray], to_higher: list[np.ndarray | None], path: Path, title: str) -> None:
    """Write modules.png (see the module docstring); `active[l]` is [T, n] bool, `to_higher[l]` [T, n] or None."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    layers = len(active)
    lower = [l for l in range(layers) if to_higher[l] is not None]
    heights = [max(1.0, 0.22 * a.shape[1]) for a in reversed(active)] + [1.4] * len(lower)
    fig, axes = plt.subplots(len(heights), 2, figsize=(12, 1.0 + sum(heights)), squeeze=False,
                             gridspec_kw={"width_ratios": [5, 1], "height_ratios": heights})
    steps = active[0].shape[0]
    for row, l in enumerate(reversed(range(layers))):  # the top layer at the top, like the network
        grid = active[l].T
        color = np.array(LAYER_COLORS[l % len(LAYER_COLORS)]) / 255
        raster, rate = axes[row]
        raster.imshow(grid, aspect="auto", interpolation="nearest", origin="lower",
                      cmap=ListedColormap([(0.93, 0.93, 0.93), color]), vmin=0, vmax=1,
                      extent=(-0.5, steps - 0.5, -0.5, grid.shape[0] - 0.5))
        raster.set_ylabel(f"layer {l}\nmodule")
        raster.set_yticks(range(grid.shape[0]))
        where = "" if layers == 1 else " (top)" if l == layers - 1 else " (bottom)" if l == 0 else ""
        top_k = int(grid.sum(0).max()) if steps else 0
        raster.set_title(f"layer {l}{where}: active modules per step ({top_k} of {grid.shape[0]} at a time)",
                         fontsize="medium", loc="left")
        rates = grid.mean(1) if steps else np.zeros(grid.shape[0])
        rate.barh(range(grid.shape[0]), rates, color=color)
        rate.set_xlim(0, 1)
        rate.set_ylim(-0.5, grid.shape[0] - 0.5)
        rate.set_yticks(range(grid.shape[0]))
        rate.set_title("activation rate", fontsize="medium")
        for k, value in enumerate(rates):
            rate.text(min(value + 0.03, 0.75), k, f"{value:.0%}", va="center", fontsize="small")
    for row, l in enumerate(lower, start=layers):
        ax, note = axes[row]
        share = to_higher[l] * 100
        time = np.arange(share.shape[0])
        for k in range(share.shape[1]):
            ax.plot(time, share[:, k], color="0.75", linewidth=0.6)
        ax.plot(time, share.mean(1), color=np.array(LAYER_COLORS[l % len(LAYER_COLORS)]) / 255, linewidth=1.5,
                label="mean over modules")
        ax.set_xlim(-0.5, steps - 0.5)
        ax.set_ylabel("% attention")
        ax.set_title(f"layer {l}: attention given to layer {l + 1} (grey: each module)", fontsize="medium",
                     loc="left")
        ax.legend(loc="upper right", fontsize="small")
        note.axis("off")
        note.text(0, 0.5, f"mean {share.mean():.2f}%", va="center")
    for ax in axes[:, 0]:
        ax.set_xlim(-0.5, steps - 0.5)
    axes[-1, 0].set_xlabel("agent step of the game")
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


class ModulePanel:
    """The video's side panel: per layer (top layer at the top) a labelled row of squares, lit while active."""

    WIDTH = 160  # even, as the video encoder needs
    BACKGROUND = (24, 24, 24)
    INACTIVE = (70, 70, 70)

    def __init__(self, modules_per_layer: list[int]) -> None:
        self.modules = list(modules_per_layer)
        self._templates: dict[int, tuple[np.ndarray, list[list[tuple[int, int, int]]]]] = {}

    def _layout(self, height: int) -> tuple[np.ndarray, list[list[tuple[int, int, int]]]]:
        """The panel without lit squares, and each square's (top, left, size), for a frame of this height."""
        if height in self._templates:
            return self._templates[height]
        margin, gap, title, label = 8, 4, 22, 14
        size = 18
        while True:  # the largest squares (up to 18 px) that fit every layer's rows into the height
            cols = max(1, (self.WIDTH - 2 * margin + gap) // (size + gap))
            need = title + sum(label + math.ceil(n / cols) * (size + gap) + gap for n in self.modules)
            if need <= height or size <= 2:
                break
            size -= 1
        boxes: list[list[tuple[int, int, int]]] = [[] for _ in self.modules]
        texts = [(4, "active modules")]
        y = title
        for l in reversed(range(len(self.modules))):
            texts.append((y, f"layer {l}"))
            y += label
            for k in range(self.modules[l]):
                row, col = divmod(k, cols)
                boxes[l].append((y + row * (size + gap), margin + col * (size + gap), size))
            y += math.ceil(self.modules[l] / cols) * (size + gap) + gap
        template = _text_image(self.WIDTH, height, texts, self.BACKGROUND)
        for layer_boxes in boxes:
            for top, left, s in layer_boxes:
                template[top : top + s, left : left + s] = self.INACTIVE
        self._templates[height] = (template, boxes)
        return template, boxes

    def render(self, height: int, active: list[np.ndarray] | None) -> np.ndarray:
        """[height, WIDTH, 3] uint8: the squares of `active` modules lit (none when `active` is None)."""
        template, boxes = self._layout(height)
        frame = template.copy()
        if active is not None:
            for l, (mask, layer_boxes) in enumerate(zip(active, boxes)):
                color = LAYER_COLORS[l % len(LAYER_COLORS)]
                for on, (top, left, s) in zip(mask, layer_boxes):
                    if on:
                        frame[top : top + s, left : left + s] = color
        return frame


def _text_image(width: int, height: int, texts: list[tuple[int, str]], background: tuple[int, int, int]) -> np.ndarray:
    """A background image with white text lines at the given pixel rows (drawn once with matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / 100, height / 100), dpi=100, facecolor=np.array(background) / 255)
    canvas = FigureCanvasAgg(fig)
    for top, text in texts:
        fig.text(4 / width, 1 - (top + 1) / height, text, color="white", fontsize=7, va="top", ha="left")
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3]
    if image.shape[:2] != (height, width):  # rounding of the figure size: pad or crop to the exact size
        padded = np.empty((height, width, 3), dtype=np.uint8)
        padded[:] = background
        h, w = min(height, image.shape[0]), min(width, image.shape[1])
        padded[:h, :w] = image[:h, :w]
        image = padded
    return np.ascontiguousarray(image)
