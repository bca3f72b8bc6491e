"""Configuration, parsed once into a typed object.

Precedence for every setting: command-line flag > ``CACHESRV_*`` variable >
``UPLOADER_*`` variable (go-simple-uploader's names, kept as aliases so a
Deployment's env block moves over as-is) > default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cachesrv.chunking import ChunkParams

MiB = 1024 * 1024
DEFAULT_DATA = Path("./pub")  # go-simple-uploader's default directory


@dataclass(frozen=True)
class Config:
    host: str = "localhost"
    port: int = 8080
    data: Path | None = None  # --data as given; where files go is local_dir
    # s3://bucket/prefix: chunks, manifests and refs in one bucket that every replica
    # shares (endpoint, region, credentials from the AWS_* environment); --data then
    # holds only the hot cache, safe to lose. None: everything under --data.
    store: str | None = None
    store_timeout: float = 10.0  # seconds one request to the object store may take
    # (user, password) needed for every write when set; reads stay open.
    credentials: tuple[str, str] | None = None
    # Tokens file (cachesrv.http.auth): TOKEN SCOPE [PREFIX] a line, reloaded on change.
    tokens: Path | None = None
    # Reads (GET/HEAD of objects and keyed caches, /-/metrics, /-/) need credentials too.
    read_auth: bool = False
    # Limits (cachesrv.http.limits): body bytes of one upload, uploads at once, seconds
    # an upload may go without a body byte.
    max_upload_size: int | None = None
    max_concurrent_uploads: int | None = None
    body_timeout: float | None = 60.0
    max_headers: int = 100
    # Seconds a catalog write waits for another process's lock; then 503 + Retry-After.
    catalog_busy_timeout: float = 5.0
    grace_period: float = 30.0
    chunking: ChunkParams = field(default_factory=ChunkParams)
    # zstd level for chunks written on the request path.
    compression_level: int = 1
    # zstd level the background compresses new chunks at, stored raw by the upload
    # (the local store; 0: compress on the request path at compression_level).
    background_level: int = 3
    # zstd level of grouped frames: runs of new chunks compressed together where that
    # saves 2% of their raw bytes over compressing them apart (a tree of small files), by
    # the background, or by an upload that compresses as it goes (S3); 0: never.
    group_level: int = 9
    # Decoded, verified spans of recent objects kept on disk for restores (0: none).
    hot_cache_bytes: int = 2 * 1024 * MiB
    # Worker processes that run restores off the event loop's process (0: threads).
    restore_workers: int = 1
    # Body bytes handed to the ingest worker at once (bigger units of work per GIL release).
    ingest_batch_bytes: int = 1 * MiB
    # Worker processes that take uploads off the event loop's process (0: threads only).
    ingest_workers: int = 1
    # Seconds an ingest worker may run no upload before it exits (0: never).
    ingest_idle_exit: float = 10.0
    log_level: str = "info"
    log_format: str = "text"  # "json": every log line (the access log too) as a JSON object
    # seconds between two points of the status page's history (kept in the catalog)
    history_interval: float = 60.0
    # Lifecycle (cachesrv.lifecycle): evict least recently used names once the packs hold
    # more than max_size bytes; refuse uploads with 507 past hard_limit (default
    # max_size * 1.2; with neither set, only a really full disk refuses them).
    max_size: int | None = None
    hard_limit: int | None = None
    ttl: float | None = 7 * 86400.0  # seconds since last read or write; 0: forever
    gc_interval: float = 600.0  # seconds between background collections; 0: never
    gc_grace: float = 300.0  # seconds a deleted version stays readable for other processes
    # GC spares chunks an upload looked up this recently; an upload that runs longer
    # re-pins them, and fails (never publishes a broken object) if one was swept.
    upload_pin_ttl: float = 600.0

    @property
    def local_dir(self) -> Path | None:
        """Where this process keeps files: ``--data``; on the local store ``./pub`` when
        it is not given; on an object store none unless it is given (then only the hot
        cache and the refs last read: a replica needs no local state to serve)."""
        if self.data is not None:
            return self.data
        return None if self.store else DEFAULT_DATA

    @property
    def effective_hard_limit(self) -> int | None:
        if self.hard_limit is not None:
            return self.hard_limit or None
        return int(self.max_size * 1.2) if self.max_size else None


@dataclass(frozen=True)
class _Setting:
    name: str  # Config field and flag name (--data, --grace-period ...)
    env: tuple[str, ...]  # CACHESRV_* first, then legacy aliases
    parse: Callable[[str], Any]
    help: str


def _credentials(value: str) -> tuple[str, str] | None:
    if not value:
        return None
    user, _, password = value.partition(":")
    return (user, password)


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(value: str) -> int:
    """``10G``, ``512M``, ``1.5T``, ``4096`` (binary units; a trailing ``B``/``iB`` is fine)."""
    text = value.strip().lower().removesuffix("ib").removesuffix("b")
    unit = text[-1:] if text[-1:] in _SIZE_UNITS else ""
    number = float(text[: len(text) - len(unit)])
    if number < 0:
        raise ValueError(f"{value!r} is negative")
    return int(number * _SIZE_UNITS[unit])


def parse_duration(value: str) -> float:
    """``7d``, ``12h``, ``30m``, ``45s``, ``2w`` or plain seconds."""
    text = value.strip().lower()
    unit = text[-1:] if text[-1:] in _TIME_UNITS and not text[-1:].isdigit() else ""
    number = float(text[: len(text) - len(unit)])
    if number < 0:
        raise ValueError(f"{value!r} is negative")
    return number * _TIME_UNITS[unit]


def _log_format(value: str) -> str:
    text = value.strip().lower()
    if text not in ("text", "json"):
        raise ValueError(f"{value!r} is neither text nor json")
    return text


def _flag(value: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean (1/0, true/false)")


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"{value!r} is negative")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(f"{value!r} is not a positive integer")
    return number


def _store_url(value: str) -> str:
    from cachesrv.store.s3.client import StoreUrl

    return str(StoreUrl.parse(value))


SETTINGS: tuple[_Setting, ...] = (
    _Setting("host", ("CACHESRV_HOST", "UPLOADER_HOST"), str, "bind address"),
    _Setting("port", ("CACHESRV_PORT", "UPLOADER_PORT"), int, "port"),
    _Setting(
        "data",
        ("CACHESRV_DATA", "UPLOADER_DIRECTORY"),
        Path,
        f"store root directory (default {DEFAULT_DATA}); with --store, only the hot cache "
        "and the refs last read, safe to lose, and no local files at all when not given",
    ),
    _Setting(
        "store",
        ("CACHESRV_STORE",),
        _store_url,
        "s3://bucket/prefix: keep chunks, manifests, refs and keyed entries in an "
        "S3-compatible bucket shared by every replica (endpoint, region and credentials "
        "from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY; "
        "the store must honour If-None-Match/If-Match PUTs, checked at start); --data "
        "then holds only the hot cache, safe to lose",
    ),
    _Setting(
        "store_timeout",
        ("CACHESRV_STORE_TIMEOUT",),
        float,
        "seconds one request to the object store may take (retried with backoff; then "
        "writes answer 503 with Retry-After)",
    ),
    _Setting(
        "credentials",
        ("CACHESRV_UPLOAD_CREDENTIALS", "UPLOADER_UPLOAD_CREDENTIALS"),
        _credentials,
        "user:pass required (HTTP Basic) for every write",
    ),
    _Setting(
        "tokens",
        ("CACHESRV_TOKENS_FILE",),
        Path,
        "file of access tokens, one 'TOKEN SCOPE [PREFIX]' a line (scope read, write or "
        "admin); reloaded when it changes",
    ),
    _Setting(
        "read_auth",
        ("CACHESRV_READ_AUTH",),
        _flag,
        "reads need a token too (read scope); /-/healthz stays open (1/0)",
    ),
    _Setting(
        "max_upload_size",
        ("CACHESRV_MAX_UPLOAD_SIZE",),
        parse_size,
        "refuse an upload body larger than this with 413 (20G); 0: no limit",
    ),
    _Setting(
        "max_concurrent_uploads",
        ("CACHESRV_MAX_CONCURRENT_UPLOADS",),
        _count,
        "uploads in flight at once; past it 503 with Retry-After; 0: no limit",
    ),
    _Setting(
        "body_timeout",
        ("CACHESRV_BODY_TIMEOUT",),
        parse_duration,
        "abort an upload (408, nothing changes) that sends no body byte for this long; 0: never",
    ),
    _Setting(
        "max_headers",
        ("CACHESRV_MAX_HEADERS",),
        _positive_int,
        "refuse a request with more header lines than this (431)",
    ),
    _Setting(
        "grace_period",
        ("CACHESRV_GRACE_PERIOD",),
        float,
        "seconds in-flight requests may take to finish after SIGTERM",
    ),
    _Setting(
        "compression_level",
        ("CACHESRV_COMPRESSION_LEVEL",),
        int,
        "zstd level for new chunks compressed during their upload (with background "
        "compression off, or on --store s3://)",
    ),
    _Setting(
        "background_level",
        ("CACHESRV_BACKGROUND_LEVEL",),
        int,
        "zstd level for new chunks the local store keeps raw at upload and compresses in "
        "the background, while restores and uploads leave it time (3); 0: compress "
        "during the upload instead",
    ),
    _Setting(
        "group_level",
        ("CACHESRV_GROUP_LEVEL",),
        int,
        "zstd level for grouped frames: runs of new chunks (up to 4 MiB) are compressed "
        "together where that stores 2%% of their size less than apart, as a tree of small "
        "files does, by the background (local store) or by the upload where it compresses "
        "as it goes (S3 store) (9); 0: every chunk its own frame",
    ),
    _Setting(
        "hot_cache_bytes",
        ("CACHESRV_HOT_CACHE_BYTES",),
        parse_size,
        "disk for decoded copies of recent objects, so restores skip decoding (2G); 0: none",
    ),
    _Setting(
        "restore_workers",
        ("CACHESRV_RESTORE_WORKERS",),
        int,
        "worker processes for restores (0: in-process threads; with --store the default "
        "is 0: a worker holds its own chunk index and S3 client, which kept a replica "
        "above 150 MB with 16 restores)",
    ),
    _Setting(
        "ingest_workers",
        ("CACHESRV_INGEST_WORKERS",),
        int,
        "worker processes for uploads (0: in-process threads; with --store the default "
        "is 0: uploads wait on the object store's PUTs, and a worker process costs a "
        "replica ~35 MB)",
    ),
    _Setting(
        "ingest_idle_exit",
        ("CACHESRV_INGEST_IDLE_EXIT",),
        parse_duration,
        "an ingest worker that runs no upload for this long exits, and gives its ~26 MB "
        "to restores; the next upload starts one (10s); 0: never",
    ),
    _Setting("log_level", ("CACHESRV_LOG_LEVEL",), str, "debug, info, warning or error"),
    _Setting(
        "log_format",
        ("CACHESRV_LOG_FORMAT",),
        _log_format,
        "text or json: log lines (one access line per request) as text or JSON objects",
    ),
    _Setting(
        "history_interval",
        ("CACHESRV_HISTORY_INTERVAL",),
        parse_duration,
        "time between two points of the status page's charts (1m); every replica's "
        "points of the last 1440 intervals are kept in the catalog",
    ),
    _Setting(
        "max_size",
        ("CACHESRV_MAX_SIZE",),
        parse_size,
        "evict least recently used caches past this many bytes on disk (10G, 500M)",
    ),
    _Setting(
        "hard_limit",
        ("CACHESRV_HARD_LIMIT",),
        parse_size,
        "refuse uploads (507) past this many bytes on disk; default max-size x 1.2, 0: none",
    ),
    _Setting(
        "ttl",
        ("CACHESRV_TTL",),
        parse_duration,
        "delete caches not read nor written for this long (7d, 12h); 0: never",
    ),
    _Setting(
        "gc_interval",
        ("CACHESRV_GC_INTERVAL",),
        parse_duration,
        "time between background collections (10m); 0: no background GC",
    ),
    _Setting(
        "gc_grace",
        ("CACHESRV_GC_GRACE",),
        parse_duration,
        "a deleted or overwritten version's chunks are kept this long (5m)",
    ),
    _Setting(
        "upload_pin_ttl",
        ("CACHESRV_UPLOAD_PIN_TTL",),
        parse_duration,
        "GC spares chunks an in-flight upload looked up this recently (10m)",
    ),
)

# Settings that the offline tools (gc, stats) honour too.
LIFECYCLE_SETTINGS = ("max_size", "ttl", "gc_grace")

_CHUNK_SETTINGS = (
    ("chunk_min", "CACHESRV_CHUNK_MIN", "min_size"),
    ("chunk_avg", "CACHESRV_CHUNK_AVG", "avg_size"),
    ("chunk_max", "CACHESRV_CHUNK_MAX", "max_size"),
)


_DEFAULTS = Config()


def add_arguments(
    parser: argparse.ArgumentParser,
    server: bool,
    also: tuple[str, ...] = (),
    chunking: bool | None = None,
) -> None:
    """Add the flags of every setting a subcommand honours (all default to None: unset).

    The FastCDC size flags come with ``server`` unless ``chunking`` says otherwise."""
    for setting in SETTINGS:
        always = ("data", "store", "store_timeout", "log_level", "log_format")
        if not server and setting.name not in (*always, *also):
            continue
        flag = "--" + setting.name.replace("_", "-")
        envs = ", ".join(setting.env)
        default = getattr(_DEFAULTS, setting.name)
        shown = "" if default is None else f"; default {default}"
        # a boolean is a bare flag (--read-auth), or takes a value (--read-auth 0)
        bare = {"nargs": "?", "const": "1"} if setting.parse is _flag else {}
        parser.add_argument(
            flag,
            dest=setting.name,
            default=None,
            help=f"{setting.help} (env {envs}{shown})",
            **bare,  # type: ignore[arg-type]
        )
    if server if chunking is None else chunking:
        for name, env, attr in _CHUNK_SETTINGS:
            default = getattr(ChunkParams(), attr)
            parser.add_argument(
                "--" + name.replace("_", "-"),
                dest=name,
                default=None,
                type=_positive_int,
                help=f"FastCDC {attr} in bytes, default {default} (env {env})",
            )


def load(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Resolve every setting from flags, environment and defaults."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = getattr(args, setting.name, None) if args is not None else None
        if raw is None:
            raw = next((env[name] for name in setting.env if env.get(name)), None)
        if raw is None:
            continue
        try:
            values[setting.name] = setting.parse(raw) if isinstance(raw, str) else raw
        except ValueError as exc:
            raise SystemExit(f"cachesrv: bad value for {setting.name}: {exc}") from exc
    chunk = ChunkParams()._asdict()
    for name, env_name, attr in _CHUNK_SETTINGS:
        raw = getattr(args, name, None) if args is not None else None
        if raw is None and env.get(env_name):
            raw = _positive_int(env[env_name])
        if raw is not None:
            chunk[attr] = raw
    values["chunking"] = ChunkParams(**chunk)
    if values.get("store") and "ingest_workers" not in values:
        # measured (bench.run --store s3, one run): uploads to SeaweedFS cold 54 -> 50 MB/s,
        # warm 106 -> 90 MB/s without the worker; the replica's peak RSS 178 -> 145 MB
        values["ingest_workers"] = 0
    if values.get("store") and "restore_workers" not in values:
        # measured (bench.run --corpus go --store s3, one run each, same session): the
        # replica's peak RSS with 16 concurrent restores 171 -> 136 MB, uploads and GETs
        # 153 -> 111 MB; GET of v2 from the hot cache 1839 -> 1549 MB/s, from the bucket
        # bound by the object store either way (--compressed at 10 Gbit/s 0.19 -> 0.17)
        values["restore_workers"] = 0
    if values.get("ttl") == 0:
        values["ttl"] = None
    for name in ("max_size", "max_upload_size", "max_concurrent_uploads", "body_timeout"):
        if values.get(name) == 0:
            values[name] = None
    return Config(**values)
