"""A live progress line: step, steps/s, recent return and time left."""

from __future__ import annotations

import sys
import time
from collections import deque


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class ProgressLine:
    """Rewrites one terminal line in place; off a terminal, prints a plain line every `interval_s` seconds."""

    def __init__(self, total_steps: int, start_step: int = 0, stream=None, interval_s: float = 10.0):
        self.total, self.stream = total_steps, stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval_s = 0.5 if self.tty else interval_s
        self.start_time, self.start_step = time.monotonic(), start_step
        self.recent_returns: deque[float] = deque(maxlen=20)
        self.last_print, self.last_step = 0.0, -1

    def add_returns(self, returns: list[float]) -> None:
        self.recent_returns.extend(returns)

    def steps_per_second(self, step: int) -> float:
        return (step - self.start_step) / max(time.monotonic() - self.start_time, 1e-9)

    def update(self, step: int, force: bool = False) -> None:
        now = time.monotonic()
        if step == self.last_step or (not force and now - self.last_print < self.interval_s):
            return
        self.last_print, self.last_step = now, step
        sps = self.steps_per_second(step)
        ret = (f"{sum(self.recent_returns) / len(self.recent_returns):.1f}" if self.recent_returns else "-")
        eta = format_duration((self.total - step) / sps) if sps > 0 else "-"
        line = (f"step {step:,}/{self.total:,} ({100 * step / self.total:.0f}%) | {sps:,.0f} steps/s | "
                f"return {ret} | ETA {eta}")
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
