"""A progress line on a terminal (stderr), and the summary line every run prints."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class Progress:
    """Counters a run updates from any thread; redrawn at most 10 times a second when
    ``stream`` is a terminal, never otherwise."""

    def __init__(self, verb: str, stream: TextIO | None = None) -> None:
        self.verb = verb
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self.done = 0  # bytes of the object processed
        self.total: int | None = None
        self.wire = 0  # bytes over the network (request or response bodies)
        self._lock = threading.Lock()
        self._drawn = 0.0

    def add(self, done: int = 0, wire: int = 0) -> None:
        with self._lock:
            self.done += done
            self.wire += wire
        if self.tty:
            now = time.monotonic()
            if now - self._drawn >= 0.1:
                self._drawn = now
                total = f"/{megabytes(self.total)}" if self.total else ""
                line = f"\r{self.verb}: {megabytes(self.done)}{total}, {megabytes(self.wire)} "
                self.stream.write(line + "over the network ")
                self.stream.flush()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def summary(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(f"{self.verb}: {text}, {self.seconds:.1f} s\n")
        self.stream.flush()
