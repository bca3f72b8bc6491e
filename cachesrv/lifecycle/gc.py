"""Mark and sweep, LRU eviction, and the per-object numbers they rest on.

One collection, in small increments (:meth:`Collector.steps` yields between them,
so the server runs each in a worker thread and lets requests through between):

1. expire names not read for ``ttl``; note manifests no name refers to (``doomed``);
2. mark: every manifest except those doomed for longer than ``grace``, plus those
   the server is streaming right now, into a temporary ``refs(manifest, chunk, live)``
   table of the collector's own index connection (memory stays flat whatever the store);
3. evict, if the packs hold more than ``max_size``: names least recently used first,
   each counted by the bytes only it holds, until the live data fits in
   ``LOW_WATER * max_size``; what they held is freed once their grace is over;
4. sweep: unmarked chunks, in batches, each batch one transaction that skips chunks
   an upload pinned after ``start - pin_ttl`` (see ``cachesrv.lifecycle``);
5. drop manifest rows doomed for longer than ``grace``; prune old pins;
6. packs: remove leftovers, compact packs whose live fraction is low.

Eviction frees what it claims: a name's *unique* bytes are those of chunks no other
live manifest references; names sharing one manifest free nothing until the last goes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, field

from cachesrv.catalog import Catalog
from cachesrv.manifest import Manifest
from cachesrv.store.local import RECORD_HEADER, LocalChunkStore

from . import packs

log = logging.getLogger("cachesrv.gc")

LOW_WATER = 0.9  # eviction brings live data down to this fraction of max_size
SWEEP_BATCH = 500
MARK_PAGE = 100  # manifests decoded per increment
PINNED_ROOT = b"\0" * 32  # refs.manifest for chunks of manifests being served


@dataclass
class Limits:
    max_size: int | None = None  # pack bytes on disk; None: unbounded
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
    pack_bytes: int = 0
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
    """One collection over a local store and its catalog. Not thread-safe: drive
    :meth:`steps` from one thread at a time (it may change threads between steps)."""

    def __init__(
        self,
        store: LocalChunkStore,
        catalog: Catalog,
        limits: Limits,
        serving: Callable[[], list[Manifest]] = list,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.limits = limits
        self.serving = serving
        self.report = GcReport()
        self._conn: sqlite3.Connection | None = None

    # -- the whole collection ----------------------------------------------------

    def run(self) -> GcReport:
        for _ in self.steps():
            pass
        return self.report

    def steps(self) -> Generator[None, None, None]:
        lock = _try_lock(self.store.root / "gc.lock")
        if lock is None:
            self.report.skipped = "another collection is running"
            return
        try:
            yield from self._collect()
        finally:
            os.close(lock)
            self._close()

    def _collect(self) -> Iterator[None]:
        report, limits = self.report, self.limits
        start = report.started = time.time()
        if limits.ttl is not None:
            report.expired_names = self.catalog.expire(start - limits.ttl)
        self.catalog.doom_unreferenced(start)
        yield
        yield from self._mark(start - limits.grace)
        if limits.max_size is not None:
            self._evict(limits.max_size)
            yield
        pin_ttl = self.store.current_pin_ttl()
        yield from self._sweep(start - pin_ttl)
        report.dropped_manifests = self.catalog.drop_doomed(start - limits.grace)
        with self.store.db.transaction() as conn:
            report.pruned_pins = conn.execute(
                "DELETE FROM pins WHERE time < ?", (start - pin_ttl,)
            ).rowcount
        self._close()
        yield
        yield from self._compact()
        report.seconds = round(time.time() - start, 3)

    # -- mark ------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self.store.db.path, timeout=60, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute("PRAGMA temp_store=FILE")
            self._conn = conn
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _mark(self, doomed_before: float) -> Iterator[None]:
        conn = self._connection()
        conn.execute("DROP TABLE IF EXISTS temp.refs")
        conn.execute("CREATE TEMP TABLE refs (manifest BLOB, chunk BLOB, live INTEGER)")
        after = b""
        while True:
            page = self.catalog.root_manifests(doomed_before, after, MARK_PAGE)
            if not page:
                break
            rows: list[tuple[bytes, bytes, int]] = []
            for manifest_id, body, live in page:
                ids = Manifest.decode(body).chunk_ids()
                rows.extend((manifest_id, chunk, live) for chunk in ids)
            conn.executemany("INSERT INTO refs VALUES (?, ?, ?)", rows)
            self.report.roots += len(page)
            after = page[-1][0]
            yield
        serving = {c for m in self.serving() for c in m.chunk_ids()}
        conn.executemany("INSERT INTO refs VALUES (?, ?, 0)", ((PINNED_ROOT, c) for c in serving))
        conn.execute("CREATE INDEX temp.refs_by_chunk ON refs (chunk)")
        conn.execute("CREATE INDEX temp.refs_by_manifest ON refs (manifest)")
        yield
        conn.execute("DROP TABLE IF EXISTS temp.counts")
        # live references per chunk; a chunk held only by doomed/served roots counts 0
        conn.execute(
            "CREATE TEMP TABLE counts AS SELECT chunk, sum(live) AS n FROM refs GROUP BY chunk"
        )
        conn.execute("CREATE UNIQUE INDEX temp.counts_by_chunk ON counts (chunk)")
        self.report.marked_chunks = conn.execute("SELECT count(*) FROM counts").fetchone()[0]
        yield

    # -- evict -----------------------------------------------------------------

    def usage_by_name(self) -> list[NameUsage]:
        """Each live name with the bytes only it holds and those it shares (after a mark)."""
        conn = self._connection()
        per_manifest = {
            manifest: (unique or 0, shared or 0)
            for manifest, unique, shared in conn.execute(
                "SELECT r.manifest, "
                "sum(CASE WHEN k.n = 1 THEN c.length + ? END), "
                "sum(CASE WHEN k.n > 1 THEN c.length + ? END) "
                "FROM refs r JOIN counts k ON k.chunk = r.chunk "
                "JOIN main.chunks c ON c.id = r.chunk WHERE r.live GROUP BY r.manifest",
                (RECORD_HEADER.size, RECORD_HEADER.size),
            )
        }
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
        conn = self._connection()
        live_bytes, pending = conn.execute(
            "SELECT coalesce(sum(c.length + ?), 0), "
            "coalesce(sum(CASE WHEN k.n = 0 THEN c.length + ? ELSE 0 END), 0) "
            "FROM main.chunks c LEFT JOIN counts k ON k.chunk = c.id",
            (RECORD_HEADER.size, RECORD_HEADER.size),
        ).fetchone()
        # chunks not marked at all, or held only by doomed roots, are going anyway
        unmarked = conn.execute(
            "SELECT coalesce(sum(c.length + ?), 0) FROM main.chunks c "
            "WHERE NOT EXISTS (SELECT 1 FROM counts k WHERE k.chunk = c.id)",
            (RECORD_HEADER.size,),
        ).fetchone()[0]
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
                for chunk, n, length in conn.execute(
                    "SELECT r.chunk, k.n, c.length + ? FROM refs r "
                    "JOIN counts k ON k.chunk = r.chunk JOIN main.chunks c ON c.id = r.chunk "
                    "WHERE r.manifest = ? AND r.live",
                    (RECORD_HEADER.size, manifest),
                ):
                    dropped[chunk] = dropped.get(chunk, 0) + 1
                    if n - dropped[chunk] == 0:
                        unique += length
            freed += unique
            plan.append(NameUsage(namespace, name, manifest, size, atime, unique, 0))
        return plan, freed, need

    def _evict(self, max_size: int) -> None:
        pack_bytes = self.store.db.conn.execute(
            "SELECT value FROM totals WHERE name = 'pack_bytes'"
        ).fetchone()[0]
        if pack_bytes <= max_size:
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
            "evicted %d names holding %d bytes of their own (needed %d; packs hold %d > %d)",
            removed,
            freed,
            need,
            pack_bytes,
            max_size,
        )

    # -- sweep -----------------------------------------------------------------

    def _sweep(self, pinned_after: float) -> Iterator[None]:
        conn = self._connection()
        conn.execute("DROP TABLE IF EXISTS temp.garbage")
        conn.execute(
            "CREATE TEMP TABLE garbage AS SELECT id FROM main.chunks c "
            "WHERE NOT EXISTS (SELECT 1 FROM counts k WHERE k.chunk = c.id)"
        )
        yield
        last = 0
        while True:
            batch = [
                row
                for row in conn.execute(
                    "SELECT rowid, id FROM garbage WHERE rowid > ? ORDER BY rowid LIMIT ?",
                    (last, SWEEP_BATCH),
                )
            ]
            if not batch:
                break
            last = batch[-1][0]
            ids = [chunk for _, chunk in batch]
            marks = ",".join("?" * len(ids))
            where = (
                f"id IN ({marks}) AND id NOT IN "
                f"(SELECT id FROM main.pins WHERE id IN ({marks}) AND time >= ?)"
            )
            args = (*ids, *ids, pinned_after)
            conn.execute("BEGIN IMMEDIATE")
            try:
                count, stored, raw = conn.execute(
                    "SELECT count(*), coalesce(sum(length), 0), coalesce(sum(raw_size), 0) "
                    f"FROM main.chunks WHERE {where}",
                    args,
                ).fetchone()
                conn.execute(f"DELETE FROM main.chunks WHERE {where}", args)
                packs._add_totals(conn, -count, -stored, -raw)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self.report.swept_chunks += count
            self.report.swept_bytes += stored
            self.report.kept_pinned += len(ids) - count
            yield

    # -- packs -----------------------------------------------------------------

    def _compact(self) -> Iterator[None]:
        report = self.report
        files, freed = packs.remove_leftovers(self.store)
        report.removed_files += files
        report.reclaimed_bytes += freed
        yield
        over = self.limits.max_size is not None and (
            packs.recount_pack_bytes(self.store) > self.limits.max_size
        )
        threshold = 0.95 if over else self.limits.compact_below
        candidates = [
            p
            for p in packs.usage(self.store)
            if not p.active
            and p.live_chunks
            and p.file_bytes
            and p.live_fraction < threshold
        ]
        candidates.sort(key=lambda p: p.file_bytes - p.live_bytes, reverse=True)
        for pack in candidates:
            for _ in packs.compact(self.store, pack):
                yield
            report.compacted_packs += 1
            report.reclaimed_bytes += pack.file_bytes - pack.live_bytes
        report.pack_bytes = packs.recount_pack_bytes(self.store)


def _try_lock(path: os.PathLike[str]) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
