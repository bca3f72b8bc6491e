"""A progress bar on stderr for the long-running tools (analyze, import); silent when
stderr is not a terminal, so logs and CI output stay clean."""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 28
REDRAW = 0.2  # seconds between two redraws


class Progress:
    def __init__(
        self, total: int, label: str = "", stream: TextIO | None = None, enabled: bool | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total = max(total, 1)
        self.label = label
        self.done = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def advance(self, n: int, label: str | None = None) -> None:
        self.done += n
        if label is not None:
            self.label = label
        now = time.monotonic()
        if self.enabled and now - self._drawn >= REDRAW:
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        fraction = min(self.done / self.total, 1.0)
        filled = int(fraction * WIDTH)
        rate = self.done / max(now - self.started, 1e-6) / 1e6
        bar = "#" * filled + "-" * (WIDTH - filled)
        line = f"\r[{bar}] {fraction:6.1%} {self.done / 1e6:,.0f}/{self.total / 1e6:,.0f} MB"
        line += f" {rate:,.0f} MB/s {self.label[-40:]}"
        self.stream.write(line.ljust(110)[:110])
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
