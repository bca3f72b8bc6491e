"""Keeping a store healthy for years: expiry, eviction, garbage collection, fsck.

Knows the catalog and the chunk store through their interfaces
(:class:`cachesrv.catalog.CatalogBackend`, :class:`cachesrv.store.ChunkStore`), never a
backend's internals, never HTTP.

- :mod:`.access`: read times, batched in memory and flushed in one transaction.
- :mod:`.gc`: mark (from every manifest still a root) and sweep (unpinned, unmarked
  chunks), LRU eviction down to a size, the per-object numbers behind it.
- :mod:`.fsck`: verify every chunk and every reference; quarantine what is broken.
- :mod:`.service`: the server's background task that runs the above on a schedule.

Why GC never breaks an upload or a download (DESIGN.md, Consistency rules):

- an upload's writer pins every chunk id it looks up (atomically with the lookup;
  each pin carries its expiry, ``pin_ttl`` after it was written) and re-checks them
  all after its commit; a sweep deletes only chunks no pin protects at GC start, in
  atomic batches, so either the pin is seen or the upload sees the chunk gone and
  stores it again (or, past pin_ttl, fails instead of publishing);
- a manifest no name refers to stays a GC root for ``grace`` seconds after GC first
  sees it so (``doomed`` in the catalog): a download that looked its name up before
  the delete has that long, in any process; downloads in the server's own process are
  pinned in memory (:class:`ManifestPins`) and protected however long they take.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import AsyncIterator

from cachesrv.manifest import Manifest


class ManifestPins:
    """Manifests that responses of this process are serving (thread-safe)."""

    def __init__(self) -> None:
        self._held: Counter[int] = Counter()
        self._manifests: dict[int, Manifest] = {}
        self._lock = threading.Lock()

    async def hold(
        self, manifest: Manifest, body: AsyncIterator[bytes | bytearray]
    ) -> AsyncIterator[bytes | bytearray]:
        """``body``, with ``manifest`` pinned until it is exhausted or closed."""
        key = id(manifest)
        with self._lock:
            self._held[key] += 1
            self._manifests[key] = manifest
        try:
            async for data in body:
                yield data
        finally:
            with self._lock:
                self._held[key] -= 1
                if not self._held[key]:
                    del self._held[key]
                    del self._manifests[key]

    def manifests(self) -> list[Manifest]:
        with self._lock:
            return list(self._manifests.values())
