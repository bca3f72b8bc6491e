"""The store as a whole: chunk store + catalog + hot cache + restores, opened from a Config.

This is what the HTTP layer and the CLI hold; it knows nothing of HTTP.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

from cachesrv.activity import Activity
from cachesrv.backends import check_store, open_catalog, open_chunk_store, store_args
from cachesrv.catalog import CatalogBackend
from cachesrv.config import Config
from cachesrv.ingest import IngestSession, IngestStats
from cachesrv.ingest.session import may_defer
from cachesrv.ingest.upload import ThreadUpload, Upload
from cachesrv.ingest.workers import IngestPool, WorkerSettings
from cachesrv.lifecycle import ManifestPins
from cachesrv.lifecycle.access import AccessLog
from cachesrv.lifecycle.gc import Collector, GcReport, Limits, NameUsage
from cachesrv.manifest import PieceStream
from cachesrv.restore.hot import HotCache
from cachesrv.restore.job import Source
from cachesrv.restore.workers import RestorePool
from cachesrv.store import ChunkStore

ANNOUNCE_FOR = 120.0  # seconds another replica's GC trusts an announcement of downloads


@dataclass
class Counters:
    """Totals since the process started (a restart resets them)."""

    uploads: int = 0
    upload_bytes: int = 0
    upload_new_bytes: int = 0
    upload_stored_bytes: int = 0
    downloads: int = 0
    not_found: int = 0
    corrupt_chunks: int = 0

    def add_upload(self, stats: IngestStats) -> None:
        self.uploads += 1
        self.upload_bytes += stats.logical_bytes
        self.upload_new_bytes += stats.new_bytes
        self.upload_stored_bytes += stats.stored_bytes


@dataclass
class GcTally:
    """Collections run by this process since it started."""

    runs: int = 0
    seconds: float = 0.0
    expired_names: int = 0
    evicted_names: int = 0
    last_eviction: GcReport | None = None  # the last collection that evicted anything

    def add(self, report: GcReport) -> None:
        self.runs += 1
        self.seconds += report.seconds
        self.expired_names += report.expired_names
        self.evicted_names += report.evicted_names
        if report.evicted_names:
            self.last_eviction = report


@dataclass(frozen=True)
class UsageSnapshot:
    """Each name's unique and shared bytes at the last collection's mark."""

    marked_at: float
    names: dict[tuple[str, str], NameUsage]


@dataclass
class Repository:
    config: Config
    store: ChunkStore
    catalog: CatalogBackend
    hot: HotCache | None
    restores: RestorePool
    ingest: IngestPool  # idle workers only while its run() is (the server's); else threads
    counters: Counters = field(default_factory=Counters)
    access: AccessLog = field(default_factory=AccessLog)  # read times, flushed in batches
    pins: ManifestPins = field(default_factory=ManifestPins)  # manifests being served
    last_gc: GcReport | None = None
    gc_tally: GcTally = field(default_factory=GcTally)
    usage: UsageSnapshot | None = None
    activity: Activity = field(default_factory=Activity)  # recent uploads and restores
    started: float = field(default_factory=time.time)
    uploads_active: int = 0  # uploads in progress in this process (cachesrv.service)
    # this process's name among the replicas, and what it last announced it is serving
    replica: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    _announced: tuple[set[bytes], float] | None = None

    @classmethod
    def open(cls, config: Config) -> Repository:
        local = config.local_dir
        if local is not None:
            local.mkdir(parents=True, exist_ok=True)
        check_store(config.store, config.store_timeout)
        # settings reach the store once, here (and the worker processes, at their start)
        store = open_chunk_store(
            local,
            config.store,
            config.store_timeout,
            hard_limit=config.effective_hard_limit,
            pin_ttl=config.upload_pin_ttl,
            group_level=config.group_level,
        )
        hot_bytes = config.hot_cache_bytes if local is not None else 0
        hot = HotCache(local, hot_bytes) if local is not None and hot_bytes else None
        catalog = open_catalog(
            local,
            config.store,
            config.store_timeout,
            config.catalog_busy_timeout,
            held=None if hot is None else hot.holds,
        )
        restores = RestorePool(
            local,
            hot_bytes,
            config.restore_workers,
            Source(store, catalog, hot),
            config.log_level,
            store_args(config.store, config.store_timeout),
        )
        ingest = IngestPool(
            WorkerSettings(
                local,
                config.chunking,
                config.compression_level,
                defer=config.background_level > 0,
                hard_limit=config.effective_hard_limit,
                pin_ttl=config.upload_pin_ttl,
                store=config.store,
                store_timeout=config.store_timeout,
                group_level=config.group_level,
            ),
            config.ingest_workers,
            idle_exit=config.ingest_idle_exit,
        )
        return cls(config, store, catalog, hot, restores, ingest)

    def ingest_session(self, tar_aware: bool = True) -> IngestSession:
        return IngestSession(
            self.store.writer(),
            self.config.chunking,
            self.config.compression_level,
            tar_aware=tar_aware,
            defer=may_defer(self.store, self.config.background_level > 0),
            group_level=self.config.group_level,
        )

    @property
    def busy(self) -> bool:
        """Whether restores or uploads are running here (background work then yields)."""
        return self.restores.active > 0 or self.uploads_active > 0

    def upload(self) -> Upload:
        """An upload in a worker process with room for it, else in a thread of this process."""
        remote = self.ingest.upload()
        if remote is not None:
            return remote
        return ThreadUpload(self.ingest_session(), self.config.ingest_batch_bytes)

    # -- lifecycle -----------------------------------------------------------------

    def limits(self) -> Limits:
        cfg = self.config
        return Limits(max_size=cfg.max_size, ttl=cfg.ttl, grace=cfg.gc_grace)

    def collector(self) -> Collector:
        return Collector(self.store, self.catalog, self.limits(), self._serving)

    def _serving(self) -> list[set[bytes]]:
        """Chunk ids of the manifests downloads are reading: this process's, and those
        other replicas announce (a manifest already dropped is no one's any more:
        skipped)."""
        own = self.pins.chunk_sets(self.chunk_ids)
        others = []
        for manifest_id in self.catalog.announced(time.time()) - self.pins.held():
            try:
                others.append(self.chunk_ids(manifest_id))
            except KeyError:
                continue
        return own + others

    def chunk_ids(self, manifest_id: bytes) -> set[bytes]:
        """The chunk ids a stored manifest references, read as a stream and checked
        against its id (KeyError if it is gone)."""
        body = self.catalog.manifest_body(manifest_id)
        if body is None:
            raise KeyError(manifest_id)
        return PieceStream.stored(manifest_id, body).chunk_ids()

    def announce_serving(self) -> None:
        """Tell the other replicas which manifests this one's downloads are reading
        (again before the last word expires; at once when the set changes)."""
        held = self.pins.held()
        now = time.time()
        last = self._announced
        if last is not None and last[0] == held and now < last[1] - ANNOUNCE_FOR * 2 / 3:
            return
        if last is None and not held:
            return
        self.catalog.announce(self.replica, held, now + ANNOUNCE_FOR)
        self._announced = (held, now + ANNOUNCE_FOR) if held else None

    def record_gc(self, report: GcReport, usage: list[NameUsage] | None) -> None:
        """A collection finished (the server's lifecycle task)."""
        self.last_gc = report
        self.gc_tally.add(report)
        if usage is not None:
            self.usage = UsageSnapshot(report.started, {(u.namespace, u.name): u for u in usage})

    def hot_bytes(self) -> int:
        return self.hot.hot_bytes() if self.hot is not None else 0

    def admits(self, length: int | None) -> bool:
        """Whether an upload of ``length`` body bytes (None: unknown) may start. The hot
        cache counts against the hard limit, and gives its room up first."""
        need = length or 0
        limit = self.config.effective_hard_limit
        if self.hot is not None and limit and not self.store.admits(need + self.hot_bytes()):
            self.hot.trim(max(limit - self.store.usage_bytes() - need, 0))
        return self.store.admits(need + self.hot_bytes())

    def lifecycle_stats(
        self, objects: bool = False, quarantined: int | None = None
    ) -> dict[str, object]:
        cfg = self.config
        last_eviction = self.gc_tally.last_eviction
        if quarantined is None:
            quarantined = self.store.stats().quarantined
        result: dict[str, object] = {
            "max_size": cfg.max_size,
            "hard_limit": cfg.effective_hard_limit,
            "ttl": cfg.ttl,
            "gc_grace": cfg.gc_grace,
            "pack_bytes": self.store.usage_bytes(),
            "quarantined_chunks": quarantined,
            "last_gc": self.last_gc.as_dict() if self.last_gc else None,
            "gc_runs": self.gc_tally.runs,
            "gc_seconds": round(self.gc_tally.seconds, 3),
            "expired_names": self.gc_tally.expired_names,
            "evicted_names": self.gc_tally.evicted_names,
            "last_eviction": last_eviction.as_dict() if last_eviction else None,
        }
        if objects:
            result.update(self._usage_by_name())
        return result

    def _usage_by_name(self) -> dict[str, object]:
        collector = self.collector()
        try:
            for _ in collector.mark(time.time() - self.config.gc_grace):
                pass
            usage = collector.usage_by_name()
            plan: list[dict[str, object]] = []
            if self.config.max_size:
                names, _, _ = collector.plan_eviction(self.config.max_size)
                plan = [u.as_dict() for u in names]
        finally:
            collector.close()
        return {
            "objects": [u.as_dict() for u in usage],
            # what eviction would remove now if the packs were over max_size (LRU first)
            "next_eviction": plan,
        }

    def stats(self, objects: bool = False) -> dict[str, object]:
        totals = self.catalog.totals()
        chunks = self.store.stats()
        logical = totals["logical_bytes"]
        c = self.counters
        hot_bytes = self.hot_bytes()
        restored = self.restores.stats
        hits = self.access.hits.total()
        return {
            **totals,
            "stored_bytes": chunks.stored_bytes,
            "chunks": chunks.chunks,
            "chunk_raw_bytes": chunks.raw_bytes,
            "hot_bytes": hot_bytes,
            # work the server still does in the background (compressing new chunks,
            # decoding new versions into the hot cache); benchmarks wait for 0
            "background_pending_bytes": self.restores.warm_pending_bytes + chunks.pending_bytes,
            "compression_pending_bytes": chunks.pending_bytes,
            "disk_bytes": chunks.disk_bytes + hot_bytes,
            # logical bytes per unique raw byte (what dedup saves) and raw per stored (zstd)
            "dedup_ratio": round(logical / chunks.raw_bytes, 3) if chunks.raw_bytes else None,
            "compression_ratio": (
                round(chunks.raw_bytes / chunks.stored_bytes, 3) if chunks.stored_bytes else None
            ),
            "since_start": {
                "uploads": c.uploads,
                "upload_bytes": c.upload_bytes,
                "upload_new_bytes": c.upload_new_bytes,
                "upload_stored_bytes": c.upload_stored_bytes,
                "upload_dedup_fraction": (
                    round(1 - c.upload_new_bytes / c.upload_bytes, 4) if c.upload_bytes else None
                ),
                "started": round(self.started, 3),
                "uptime_seconds": round(time.time() - self.started, 1),
                "downloads": c.downloads,
                "hits": hits,  # reads (GET, HEAD) that found a name
                "not_found": c.not_found,
                "hit_rate": round(hits / (hits + c.not_found), 4) if hits + c.not_found else None,
                "corrupt_chunks": c.corrupt_chunks,
                "hot_span_hits": restored.hot_hits,
                "hot_span_misses": restored.hot_misses,
                "hot_span_sendfiles": restored.hot_sendfiles,
            },
            "lifecycle": self.lifecycle_stats(objects, chunks.quarantined),
        }

    def close(self) -> None:
        self.store.close()
        self.catalog.close()
        if self.hot is not None:
            self.hot.close()
