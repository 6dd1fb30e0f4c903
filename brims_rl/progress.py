"""Live progress lines: rewritten in place on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from collections import deque


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class LiveLine:
    """Writes status lines to `stream` (stderr): in place twice a second on a terminal, else every `interval_s`."""

    def __init__(self, stream=None, interval_s: float = 10.0):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval_s = 0.5 if self.tty else interval_s
        self.last_print = time.monotonic()
        self.printed = False

    def due(self) -> bool:
        return time.monotonic() - self.last_print >= self.interval_s

    def write(self, line: str) -> None:
        self.last_print = time.monotonic()
        self.stream.write(("\r\033[K" + line) if self.tty else (line + "\n"))
        self.stream.flush()
        self.printed = True

    def close(self) -> None:
        if self.tty and self.printed:
            self.stream.write("\n")
            self.stream.flush()


class ProgressLine:
    """Training progress: step, steps/s, recent return and time left."""

    def __init__(self, total_steps: int, start_step: int = 0, stream=None, interval_s: float = 10.0):
        self.total, self.line = total_steps, LiveLine(stream, interval_s)
        self.start_time, self.start_step = time.monotonic(), start_step
        self.recent_returns: deque[float] = deque(maxlen=20)
        self.last_step = -1

    def add_returns(self, returns: list[float]) -> None:
        self.recent_returns.extend(returns)

    def steps_per_second(self, step: int) -> float:
        return (step - self.start_step) / max(time.monotonic() - self.start_time, 1e-9)

    def numbers(self, step: int) -> dict[str, float]:
        """What the line shows: step, total_steps, steps_per_s, return (mean of the recent returns, nan if none) and
        eta_s (nan before any progress)."""
        sps = self.steps_per_second(step)
        recent = list(self.recent_returns)
        return {"step": step, "total_steps": self.total, "steps_per_s": sps,
                "return": sum(recent) / len(recent) if recent else float("nan"),
                "eta_s": (self.total - step) / sps if sps > 0 else float("nan")}

    def update(self, step: int, force: bool = False) -> None:
        if step == self.last_step or not (force or self.line.due()):
            return
        self.last_step = step
        n = self.numbers(step)
        ret = f"{n['return']:.1f}" if self.recent_returns else "-"
        eta = format_duration(n["eta_s"]) if n["steps_per_s"] > 0 else "-"
        done = min(100.0, 100 * step / self.total)  # the last update may pass total_steps
        self.line.write(f"step {step:,}/{self.total:,} ({done:.0f}%) | {n['steps_per_s']:,.0f} "
                        f"steps/s | return {ret} | ETA {eta}")

    def close(self) -> None:
        self.line.close()
