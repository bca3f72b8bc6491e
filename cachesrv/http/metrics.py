"""``GET /-/metrics``: the store's numbers in Prometheus text format.

Read at scrape time from the same numbers as ``/-/stats`` (a custom collector),
so there is one source of truth and nothing to keep in sync on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cachesrv.repository import Repository

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_GAUGES = {
    "objects": "Objects stored under legacy paths",
    "cache_entries": "Keyed cache entries",
    "logical_bytes": "Bytes of everything stored, as clients see it",
    "stored_bytes": "Compressed bytes of the unique chunks",
    "chunks": "Unique chunks",
    "chunk_raw_bytes": "Uncompressed bytes of the unique chunks",
    "hot_bytes": "Bytes of the hot cache (decoded copies of recent objects) on disk",
    "disk_bytes": "Bytes on disk: pack files and the hot cache",
}
_COUNTERS = {
    "uploads": "Uploads completed",
    "upload_bytes": "Bytes uploaded",
    "upload_new_bytes": "Uploaded bytes that were not stored yet",
    "upload_stored_bytes": "Compressed bytes written for new chunks",
    "downloads": "Downloads started",
    "not_found": "Reads of names that do not exist",
    "corrupt_chunks": "Chunks that failed verification when read",
    "hot_span_hits": "Restored MiB spans served from the hot cache",
    "hot_span_misses": "Restored MiB spans decoded from the chunk store",
}


class _StoreCollector(Collector):
    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    def collect(self) -> Iterator[Metric]:
        stats = self.repo.stats()
        for name, help_text in _GAUGES.items():
            yield GaugeMetricFamily(f"cachesrv_{name}", help_text, value=stats[name])  # type: ignore[arg-type]
        since_start = stats["since_start"]
        assert isinstance(since_start, dict)
        for name, help_text in _COUNTERS.items():
            yield CounterMetricFamily(f"cachesrv_{name}", help_text, value=since_start[name])


class Metrics:
    def __init__(self, repo: Repository) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StoreCollector(repo))

    def render(self) -> bytes:
        return generate_latest(self.registry)
