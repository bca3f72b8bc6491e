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
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

B = TypeVar("B")  # what a pinned body yields


class ManifestPins:
    """Manifests that responses of this process are serving, by id (thread-safe).

    A response pins only the id: nothing is decoded on the request path. GC reads a
    pinned manifest's chunk ids when it first marks it, and keeps them for as long as
    it is held, so a manifest row dropped after its grace still protects its chunks.
    """

    def __init__(self) -> None:
        self._held: Counter[bytes] = Counter()
        self._decoded: dict[bytes, set[bytes]] = {}  # their chunk ids, once GC asked
        self._lock = threading.Lock()

    async def hold(self, manifest_id: bytes, body: AsyncIterator[B]) -> AsyncIterator[B]:
        """``body``, with the manifest pinned until it is exhausted or closed."""
        with self._lock:
            self._held[manifest_id] += 1
        try:
            async for data in body:
                yield data
                del data  # not held while the next piece is read (a hot span is a MiB)
        finally:
            with self._lock:
                self._held[manifest_id] -= 1
                if not self._held[manifest_id]:
                    del self._held[manifest_id]
                    self._decoded.pop(manifest_id, None)

    def held(self) -> set[bytes]:
        """The ids being served now (what a replica announces to the others)."""
        with self._lock:
            return set(self._held)

    def chunk_sets(self, load: Callable[[bytes], set[bytes]]) -> list[set[bytes]]:
        """The chunk ids of every pinned manifest, read with ``load`` the first time."""
        with self._lock:
            wanted = [i for i in self._held if i not in self._decoded]
        loaded = {}
        for manifest_id in wanted:
            try:
                loaded[manifest_id] = load(manifest_id)
            except KeyError:
                pass  # gone before its first mark: its response fails, never misreads
        with self._lock:
            for manifest_id, ids in loaded.items():
                if manifest_id in self._held:
                    self._decoded[manifest_id] = ids
            return list(self._decoded.values())
