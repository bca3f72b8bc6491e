"""The store as a whole: chunk store + catalog + hot-chunk reader, opened from a Config.

This is what the HTTP layer and the CLI hold; it knows nothing of HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cachesrv.catalog import Catalog
from cachesrv.config import Config
from cachesrv.ingest import IngestSession, IngestStats, Upload
from cachesrv.restore import ChunkReader
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
    catalog: Catalog
    reader: ChunkReader
    counters: Counters = field(default_factory=Counters)
    workers: WorkerPool | None = None  # set by the server; CLI tools ingest in-process

    @classmethod
    def open(cls, config: Config) -> Repository:
        config.data.mkdir(parents=True, exist_ok=True)
        store = LocalChunkStore(config.data)
        return cls(
            config, store, Catalog(config.data), ChunkReader(store, config.chunk_cache_bytes)
        )

    def ingest_session(self, tar_aware: bool = True) -> IngestSession:
        return IngestSession(
            self.store, self.config.chunking, self.config.compression_level, tar_aware=tar_aware
        )

    def start_workers(self) -> None:
        if self.config.ingest_workers > 0:
            cfg = self.config
            self.workers = WorkerPool(
                cfg.data, cfg.chunking, cfg.compression_level, cfg.ingest_workers
            )

    def upload(self) -> Upload | RemoteUpload:
        """An upload in an idle worker process, else in a thread of this process."""
        worker = self.workers.try_acquire() if self.workers else None
        if worker is not None:
            assert self.workers is not None
            return RemoteUpload(self.workers, worker)
        return Upload(self.ingest_session(), self.config.ingest_batch_bytes)

    def stats(self) -> dict[str, object]:
        totals = self.catalog.totals()
        chunks = self.store.stats()
        logical = totals["logical_bytes"]
        c = self.counters
        return {
            **totals,
            "stored_bytes": chunks.stored_bytes,
            "chunks": chunks.chunks,
            "chunk_raw_bytes": chunks.raw_bytes,
            "disk_bytes": chunks.disk_bytes,
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
                "chunk_cache_hits": self.reader.hits,
                "chunk_cache_misses": self.reader.misses,
            },
        }

    def close(self) -> None:
        if self.workers is not None:
            self.workers.close()
        self.store.close()
        self.catalog.close()
