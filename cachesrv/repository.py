"""The store as a whole: chunk store + catalog + hot cache + restores, opened from a Config.

This is what the HTTP layer and the CLI hold; it knows nothing of HTTP.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cachesrv.catalog import Catalog, CatalogBackend
from cachesrv.config import Config
from cachesrv.ingest import IngestSession, IngestStats, Upload
from cachesrv.lifecycle import ManifestPins
from cachesrv.lifecycle.access import AccessLog
from cachesrv.lifecycle.gc import Collector, GcReport, Limits
from cachesrv.restore.hot import HotCache
from cachesrv.restore.job import Source
from cachesrv.restore.workers import RestorePool
from cachesrv.store import ChunkStore
from cachesrv.store.local import LocalChunkStore
from cachesrv.workers import RemoteUpload, WorkerPool


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
class Repository:
    config: Config
    store: ChunkStore
    catalog: CatalogBackend
    hot: HotCache | None
    restores: RestorePool
    counters: Counters = field(default_factory=Counters)
    workers: WorkerPool | None = None  # set by the server; CLI tools ingest in-process
    access: AccessLog = field(default_factory=AccessLog)  # read times, flushed in batches
    pins: ManifestPins = field(default_factory=ManifestPins)  # manifests being served
    last_gc: GcReport | None = None

    @classmethod
    def open(cls, config: Config) -> Repository:
        config.data.mkdir(parents=True, exist_ok=True)
        # settings reach the store once, here (and the worker processes, at their start)
        store = LocalChunkStore(
            config.data, hard_limit=config.effective_hard_limit, pin_ttl=config.upload_pin_ttl
        )
        catalog = Catalog(config.data, busy_timeout=config.catalog_busy_timeout)
        hot = HotCache(config.data, config.hot_cache_bytes) if config.hot_cache_bytes else None
        restores = RestorePool(
            config.data,
            config.hot_cache_bytes,
            config.restore_workers,
            Source(store, catalog, hot),
            config.log_level,
        )
        return cls(config, store, catalog, hot, restores)

    def ingest_session(self, tar_aware: bool = True) -> IngestSession:
        return IngestSession(
            self.store.writer(),
            self.config.chunking,
            self.config.compression_level,
            tar_aware=tar_aware,
            hot=self.hot,
        )

    def start_workers(self) -> None:
        if self.config.ingest_workers > 0:
            cfg = self.config
            self.workers = WorkerPool(
                cfg.data,
                cfg.chunking,
                cfg.compression_level,
                cfg.hot_cache_bytes,
                cfg.ingest_workers,
                hard_limit=cfg.effective_hard_limit,
                pin_ttl=cfg.upload_pin_ttl,
            )

    def upload(self) -> Upload | RemoteUpload:
        """An upload in an idle worker process, else in a thread of this process."""
        worker = self.workers.try_acquire() if self.workers else None
        if worker is not None:
            assert self.workers is not None
            return RemoteUpload(self.workers, worker)
        return Upload(self.ingest_session(), self.config.ingest_batch_bytes)

    # -- lifecycle -----------------------------------------------------------------

    def limits(self) -> Limits:
        cfg = self.config
        return Limits(max_size=cfg.max_size, ttl=cfg.ttl, grace=cfg.gc_grace)

    def collector(self) -> Collector:
        return Collector(self.store, self.catalog, self.limits(), self.pins.manifests)

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
        return {
            **totals,
            "stored_bytes": chunks.stored_bytes,
            "chunks": chunks.chunks,
            "chunk_raw_bytes": chunks.raw_bytes,
            "hot_bytes": hot_bytes,
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
                "downloads": c.downloads,
                "not_found": c.not_found,
                "corrupt_chunks": c.corrupt_chunks,
                "hot_span_hits": restored.hot_hits,
                "hot_span_misses": restored.hot_misses,
            },
            "lifecycle": self.lifecycle_stats(objects, chunks.quarantined),
        }

    def close(self) -> None:
        if self.workers is not None:
            self.workers.close()
        self.store.close()
        self.catalog.close()
        if self.hot is not None:
            self.hot.close()
