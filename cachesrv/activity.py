"""What the server did lately: the last uploads and restores, for the status page.

Bounded rings in the server's process (every request is handled there, whichever
process did the work); a restart starts them empty.
"""

from __future__ import annotations

import threading
from collections import deque

KEEP = 25


class Activity:
    def __init__(self, keep: int = KEEP) -> None:
        self._uploads: deque[dict[str, object]] = deque(maxlen=keep)
        self._restores: deque[dict[str, object]] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def add_upload(self, record: dict[str, object]) -> None:
        with self._lock:
            self._uploads.append(record)

    def add_restore(self, record: dict[str, object]) -> None:
        with self._lock:
            self._restores.append(record)

    def uploads(self) -> list[dict[str, object]]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._uploads))

    def restores(self) -> list[dict[str, object]]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._restores))
