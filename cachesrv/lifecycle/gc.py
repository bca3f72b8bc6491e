"""Mark and sweep, LRU eviction, and the per-object numbers they rest on.

One collection, in small increments (:meth:`Collector.steps` yields between them,
so the server runs each in a worker thread and lets requests through between):

1. expire names not read for ``ttl``; note manifests no name refers to (``doomed``);
2. mark: every manifest except those doomed for longer than ``grace``, plus those
   the server is streaming right now, into the chunk store's mark session
   (:class:`cachesrv.store.MarkSession`: the local store keeps it in temporary SQLite
   tables beside its index, so memory stays flat whatever the store);
3. evict, if the packs hold more than ``max_size``: names least recently used first,
   each counted by the bytes only it holds, until the live data fits in
   ``LOW_WATER * max_size``; what they held is freed once their grace is over;
4. sweep: unmarked chunks, in batches, each batch one atomic step that skips chunks
   an upload's pin still protects at ``start`` (see ``cachesrv.lifecycle``);
5. drop manifests doomed for longer than ``grace``; prune pins expired before ``start``;
6. the store's maintenance (local: remove leftovers, compact packs whose live fraction
   is low).

Only one collection runs at a time over a store (the store's ``"gc"`` lease), whatever
process it runs in.

Eviction frees what it claims: a name's *unique* bytes are those of chunks no other
live manifest references; names sharing one manifest free nothing until the last goes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, field

from cachesrv.catalog import CatalogBackend
from cachesrv.manifest import Manifest
from cachesrv.store import ChunkStore, MarkSession

log = logging.getLogger("cachesrv.gc")

LOW_WATER = 0.9  # eviction brings live data down to this fraction of max_size
SWEEP_BATCH = 500
MARK_PAGE = 100  # manifests decoded per increment
SERVING_ROOT = b"\0" * 32  # the root that holds the chunks of manifests being served


@dataclass
class Limits:
    max_size: int | None = None  # the store's usage bytes (local: packs); None: unbounded
    ttl: float | None = 7 * 86400.0  # seconds since last access; None: forever
    grace: float = 300.0  # seconds an unreferenced manifest stays a root
    compact_below: float = 0.5  # compact a pack whose live fraction is under this


@dataclass
class GcReport:
    started: float = 0.0
    seconds: float = 0.0
    expired_names: int = 0
    evicted_names: int = 0
    evicted_claimed_bytes: int = 0  # unique bytes of the evicted names, freed after grace
    roots: int = 0
    marked_chunks: int = 0
    swept_chunks: int = 0
    swept_bytes: int = 0
    kept_pinned: int = 0
    dropped_manifests: int = 0
    pruned_pins: int = 0
    removed_files: int = 0
    compacted_packs: int = 0
    reclaimed_bytes: int = 0
    pack_bytes: int = 0  # the store's usage bytes after the collection
    skipped: str | None = None  # why nothing was done (another collection holds the lock)
    evicted: list[dict[str, object]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class NameUsage:
    namespace: str  # "object" or "entry"
    name: str
    manifest: bytes
    size: int  # logical bytes
    atime: float
    unique_bytes: int  # stored bytes only this name holds (freed if it goes)
    shared_bytes: int  # stored bytes it shares with other live names

    def as_dict(self) -> dict[str, object]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "size": self.size,
            "last_access": self.atime,
            "unique_bytes": self.unique_bytes,
            "shared_bytes": self.shared_bytes,
        }


class Collector:
    """One collection over a chunk store and its catalog. Not thread-safe: drive
    :meth:`steps` from one thread at a time (it may change threads between steps)."""

    def __init__(
        self,
        store: ChunkStore,
        catalog: CatalogBackend,
        limits: Limits,
        serving: Callable[[], list[set[bytes]]] = list,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.limits = limits
        self.serving = serving
        self.report = GcReport()
        self._marks: MarkSession | None = None
        # each live name's unique and shared bytes, from this collection's mark (after
        # eviction): the status page shows them until the next collection
        self.usage: list[NameUsage] | None = None

    # -- the whole collection ----------------------------------------------------

    def run(self) -> GcReport:
        for _ in self.steps():
            pass
        return self.report

    def steps(self) -> Generator[None, None, None]:
        lease = self.store.lease("gc")
        if lease is None:
            self.report.skipped = "another collection is running"
            return
        try:
            yield from self._collect()
        finally:
            lease.release()
            self.close()

    def _collect(self) -> Iterator[None]:
        report, limits = self.report, self.limits
        start = report.started = time.time()
        if limits.ttl is not None:
            report.expired_names = self.catalog.expire(start - limits.ttl)
        self.catalog.doom_unreferenced(start)
        yield
        yield from self.mark(start - limits.grace)
        if limits.max_size is not None:
            self._evict(limits.max_size)
            yield
        self.usage = self.usage_by_name()
        yield
        yield from self._sweep(start)
        report.dropped_manifests = self.catalog.drop_doomed(start - limits.grace)
        report.pruned_pins = self.store.prune_pins(start)
        self.close()
        yield
        done = yield from self.store.maintenance(limits.max_size, limits.compact_below)
        report.removed_files += done.removed_files
        report.reclaimed_bytes += done.reclaimed_bytes
        report.compacted_packs += done.compacted
        report.pack_bytes = done.usage_bytes
        report.seconds = round(time.time() - start, 3)

    def close(self) -> None:
        """Drop the mark (after :meth:`mark` was driven outside :meth:`steps`)."""
        if self._marks is not None:
            self._marks.close()
            self._marks = None

    # -- mark ------------------------------------------------------------------

    def mark(self, doomed_before: float) -> Iterator[None]:
        """Mark from every root; afterwards :meth:`usage_by_name` and
        :meth:`plan_eviction` can be asked, until :meth:`close`."""
        self.close()
        marks = self._marks = self.store.mark()
        after = b""
        while True:
            page = self.catalog.root_manifests(doomed_before, after, MARK_PAGE)
            if not page:
                break
            for manifest_id, body, live in page:
                marks.add(manifest_id, Manifest.chunk_ids_of(body), bool(live))
            self.report.roots += len(page)
            after = page[-1][0]
            yield
        serving = set().union(*self.serving())
        marks.add(SERVING_ROOT, serving, False)
        yield
        self.report.marked_chunks = marks.seal()
        yield

    def _marked(self) -> MarkSession:
        if self._marks is None:
            raise RuntimeError("mark() first")
        return self._marks

    # -- evict -----------------------------------------------------------------

    def usage_by_name(self) -> list[NameUsage]:
        """Each live name with the bytes only it holds and those it shares (after a mark)."""
        per_manifest = self._marked().usage_by_manifest()
        names = self.catalog.names_by_access()
        holders: dict[bytes, int] = {}
        for _, _, manifest, _, _ in names:
            holders[manifest] = holders.get(manifest, 0) + 1
        result = []
        for namespace, name, manifest, size, atime in names:
            unique, shared = per_manifest.get(manifest, (0, 0))
            if holders[manifest] > 1:  # another name holds the same version: nothing is its own
                unique, shared = 0, unique + shared
            result.append(NameUsage(namespace, name, manifest, size, atime, unique, shared))
        return result

    def plan_eviction(self, max_size: int) -> tuple[list[NameUsage], int, int]:
        """Names to evict, LRU first, until live data fits LOW_WATER * max_size:
        (names, bytes they free, bytes that had to be freed)."""
        marks = self._marked()
        # chunks not marked at all, or held only by doomed roots, are going anyway
        live_bytes, pending, unmarked = marks.footprint()
        need = live_bytes - pending - unmarked - int(LOW_WATER * max_size)
        if need <= 0:
            return [], 0, 0
        names = self.catalog.names_by_access()
        holders: dict[bytes, int] = {}
        for _, _, manifest, _, _ in names:
            holders[manifest] = holders.get(manifest, 0) + 1
        dropped: dict[bytes, int] = {}  # chunk -> live references removed by the plan
        plan, freed = [], 0
        for namespace, name, manifest, size, atime in names:
            if freed >= need:
                break
            holders[manifest] -= 1
            unique = 0
            if holders[manifest] == 0:
                for chunk, n, length in marks.held_by(manifest):
                    dropped[chunk] = dropped.get(chunk, 0) + 1
                    if n - dropped[chunk] == 0:
                        unique += length
            freed += unique
            plan.append(NameUsage(namespace, name, manifest, size, atime, unique, 0))
        return plan, freed, need

    def _evict(self, max_size: int) -> None:
        usage = self.store.usage_bytes()
        if usage <= max_size:
            return
        plan, freed, need = self.plan_eviction(max_size)
        if not plan:
            return
        removed = self.catalog.remove_if_unchanged(
            [(u.namespace, u.name, u.manifest, u.atime) for u in plan]
        )
        self.report.evicted_names = removed
        self.report.evicted_claimed_bytes = freed
        self.report.evicted = [u.as_dict() for u in plan[:100]]
        # their manifests stop being roots after the grace: doom them from now
        self.catalog.doom_unreferenced(time.time())
        log.info(
            "evicted %d names holding %d bytes of their own (needed %d; store holds %d > %d)",
            removed,
            freed,
            need,
            usage,
            max_size,
        )

    # -- sweep -----------------------------------------------------------------

    def _sweep(self, pinned_at: float) -> Iterator[None]:
        for ids in self._marked().garbage(SWEEP_BATCH):
            count, stored = self.store.delete_unpinned(ids, pinned_at)
            self.report.swept_chunks += count
            self.report.swept_bytes += stored
            self.report.kept_pinned += len(ids) - count
            yield
