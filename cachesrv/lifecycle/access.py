"""Read times, kept cheap: a GET records into a dict; a flush writes them all at once.

A SQLite write per GET would put an fsync on the read path; instead the server's
lifecycle task flushes every few seconds (and at shutdown). A crash loses at most
that much of access history, which only makes eviction slightly less exact.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from cachesrv.catalog import CatalogBackend


class AccessLog:
    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        # reads per (namespace, name) since the process started (the status page's hits)
        self.hits: Counter[tuple[str, str]] = Counter()

    def touch(self, namespace: str, name: str) -> None:
        """``namespace`` is ``"object"`` (a path) or ``"entry"`` (a cache key)."""
        now = time.time()
        with self._lock:
            self._seen[(namespace, name)] = now
            self.hits[(namespace, name)] += 1

    def flush(self, catalog: CatalogBackend) -> int:
        with self._lock:
            seen, self._seen = self._seen, {}
        if seen:
            try:
                catalog.touch(seen)
            except BaseException:
                with self._lock:  # keep them for the next flush
                    for key, when in seen.items():
                        self._seen[key] = max(when, self._seen.get(key, 0.0))
                raise
        return len(seen)
