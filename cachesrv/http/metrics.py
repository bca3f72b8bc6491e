"""``GET /-/metrics``: the store's and the server's numbers in Prometheus text format.

Two kinds, both summed over every process of the server:
- the store's numbers, read at scrape time from the same numbers as ``/-/stats`` (a
  custom collector), so there is one source of truth. Work done in worker processes
  reaches them as those processes report it: an upload's chunk counts come back with
  its manifest, a restore job's numbers with its end;
- per-request instruments (requests by route template, upload and restore durations
  and sizes, keyed-restore matches, chunks new or deduplicated), updated once per
  request from its finished :class:`~cachesrv.http.accesslog.Exchange` in the server
  process, where every request is handled.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from cachesrv.http.accesslog import Exchange
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
    "hot_span_sendfiles": "Hot spans sent with sendfile(2), not copied by the server",
}


class _StoreCollector(Collector):
    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    def collect(self) -> Iterator[Metric]:
        repo = self.repo
        stats = repo.stats()
        for name, help_text in _GAUGES.items():
            yield GaugeMetricFamily(f"cachesrv_{name}", help_text, value=stats[name])  # type: ignore[arg-type]
        since_start = stats["since_start"]
        assert isinstance(since_start, dict)
        for name, help_text in _COUNTERS.items():
            yield CounterMetricFamily(f"cachesrv_{name}", help_text, value=since_start[name])
        yield CounterMetricFamily(
            "cachesrv_verification_failures",
            "Reads that met a chunk failing verification (in any process)",
            value=repo.counters.corrupt_chunks,
        )
        tally = repo.gc_tally
        yield CounterMetricFamily(
            "cachesrv_gc_runs", "Garbage collections completed", value=tally.runs
        )
        yield SummaryMetricFamily(
            "cachesrv_gc_duration_seconds",
            "Time garbage collections took",
            count_value=tally.runs,
            sum_value=tally.seconds,
        )
        yield CounterMetricFamily(
            "cachesrv_evicted_names",
            "Caches (objects and keyed entries) evicted past --max-size",
            value=tally.evicted_names,
        )
        yield CounterMetricFamily(
            "cachesrv_expired_names",
            "Caches deleted by the TTL",
            value=tally.expired_names,
        )
        restarts = CounterMetricFamily(
            "cachesrv_ingest_worker_restarts",
            "Ingest worker processes replaced (broken: died or broke protocol; "
            "recycled: grew past its memory budget)",
            labels=["reason"],
        )
        restarts.add_metric(["broken"], repo.ingest.restarted_broken)
        restarts.add_metric(["recycled"], repo.ingest.restarted_recycled)
        yield restarts
        yield CounterMetricFamily(
            "cachesrv_ingest_worker_idle_exits",
            "Ingest worker processes that exited after --ingest-idle-exit seconds without "
            "an upload (the next upload starts one)",
            value=repo.ingest.idle_exits,
        )


# Routes by their template, never the raw path: one series per route, whatever the names.
OWN_ROUTES = ("/-/stats", "/-/metrics", "/-/healthz")


def route_of(method: str, path: str) -> str:
    if path.startswith("/-/cache/"):
        return "/-/cache/{key}"
    if path in ("/-/", "/-"):
        return "/-/"
    if path in OWN_ROUTES:
        return path
    if path.startswith("/-/"):
        return "/-/{unknown}"
    if path == "/upload" and method in ("POST", "DELETE"):
        return "/upload"
    if path == "/delete" and method == "DELETE":
        return "/delete"
    return "/{path}"


_KNOWN_METHODS = {"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"}
_SECONDS = (0.005, 0.025, 0.1, 0.25, 1, 2.5, 10, 30, 60, 180, 600)
_BYTES = tuple(float(1 << n) for n in range(10, 36, 2))  # 1 KiB .. 32 GiB, x4


class Metrics:
    def __init__(self, repo: Repository) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StoreCollector(repo))
        r = self.registry
        self.requests = Counter(
            "cachesrv_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.upload_seconds = Histogram(
            "cachesrv_upload_duration_seconds",
            "Time from request to stored upload",
            ["route"],
            buckets=_SECONDS,
            registry=r,
        )
        self.upload_size = Histogram(
            "cachesrv_upload_size_bytes",
            "Bytes of each upload as stored (decoded)",
            ["route"],
            buckets=_BYTES,
            registry=r,
        )
        self.restore_seconds = Histogram(
            "cachesrv_restore_duration_seconds",
            "Time to serve a restore (a GET of an object or keyed entry)",
            ["route"],
            buckets=_SECONDS,
            registry=r,
        )
        self.restore_size = Histogram(
            "cachesrv_restore_size_bytes",
            "Body bytes sent per restore",
            ["route"],
            buckets=_BYTES,
            registry=r,
        )
        self.chunks = Counter(
            "cachesrv_upload_chunks",
            "Content chunks of uploads: new (stored) or deduplicated (already there)",
            ["result"],
            registry=r,
        )
        self.keyed_restores = Counter(
            "cachesrv_keyed_restores",
            "Keyed cache lookups by Cachesrv-Match (exact, partial) or miss",
            ["match"],
            registry=r,
        )
        for result in ("new", "deduplicated"):
            self.chunks.labels(result)
        for match in ("exact", "partial", "miss"):
            self.keyed_restores.labels(match)

    def observe(self, exchange: Exchange) -> None:
        """Count one finished request (an :class:`~cachesrv.http.accesslog.RequestObserver`
        sink)."""
        method = exchange.method if exchange.method in _KNOWN_METHODS else "other"
        route = route_of(exchange.method, exchange.path)
        self.requests.labels(route, method, str(exchange.status or 0)).inc()
        upload = exchange.upload
        if upload is not None:
            self.upload_seconds.labels(route).observe(exchange.seconds)
            self.upload_size.labels(route).observe(upload.logical_bytes)
            self.chunks.labels("new").inc(upload.new_chunks)
            self.chunks.labels("deduplicated").inc(upload.chunks - upload.new_chunks)
        if exchange.match is not None and method in ("GET", "HEAD"):
            self.keyed_restores.labels(exchange.match).inc()
        if is_restore(exchange):
            self.restore_seconds.labels(route).observe(exchange.seconds)
            self.restore_size.labels(route).observe(exchange.bytes_out)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def is_restore(exchange: Exchange) -> bool:
    """A GET that sent (some of) a stored object or keyed entry."""
    return (
        exchange.method == "GET"
        and exchange.status in (200, 206)
        and route_of(exchange.method, exchange.path) in ("/{path}", "/-/cache/{key}")
        and exchange.name is not None
    )
