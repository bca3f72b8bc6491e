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


@dataclass(frozen=True)
class Config:
    host: str = "localhost"
    port: int = 8080
    data: Path = Path("./pub")
    # (user, password) needed for every write when set; reads stay open.
    credentials: tuple[str, str] | None = None
    grace_period: float = 30.0
    chunking: ChunkParams = field(default_factory=ChunkParams)
    # zstd level for chunks written on the request path.
    compression_level: int = 3
    # Verified, decompressed chunks kept in memory for restores.
    chunk_cache_bytes: int = 32 * MiB
    # Body bytes handed to the ingest worker at once (bigger units of work per GIL release).
    ingest_batch_bytes: int = 1 * MiB
    # Worker processes that take uploads off the event loop's process (0: threads only).
    ingest_workers: int = 2
    log_level: str = "info"


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


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(f"{value!r} is not a positive integer")
    return number


SETTINGS: tuple[_Setting, ...] = (
    _Setting("host", ("CACHESRV_HOST", "UPLOADER_HOST"), str, "bind address"),
    _Setting("port", ("CACHESRV_PORT", "UPLOADER_PORT"), int, "port"),
    _Setting("data", ("CACHESRV_DATA", "UPLOADER_DIRECTORY"), Path, "store root directory"),
    _Setting(
        "credentials",
        ("CACHESRV_UPLOAD_CREDENTIALS", "UPLOADER_UPLOAD_CREDENTIALS"),
        _credentials,
        "user:pass required (HTTP Basic) for every write",
    ),
    _Setting(
        "grace_period",
        ("CACHESRV_GRACE_PERIOD",),
        float,
        "seconds in-flight requests may take to finish after SIGTERM",
    ),
    _Setting(
        "compression_level", ("CACHESRV_COMPRESSION_LEVEL",), int, "zstd level for new chunks"
    ),
    _Setting(
        "chunk_cache_bytes",
        ("CACHESRV_CHUNK_CACHE_BYTES",),
        int,
        "bytes of verified chunks kept in memory for restores",
    ),
    _Setting(
        "ingest_workers",
        ("CACHESRV_INGEST_WORKERS",),
        int,
        "worker processes for uploads (0: in-process threads)",
    ),
    _Setting("log_level", ("CACHESRV_LOG_LEVEL",), str, "debug, info, warning or error"),
)

_CHUNK_SETTINGS = (
    ("chunk_min", "CACHESRV_CHUNK_MIN", "min_size"),
    ("chunk_avg", "CACHESRV_CHUNK_AVG", "avg_size"),
    ("chunk_max", "CACHESRV_CHUNK_MAX", "max_size"),
)


def add_arguments(parser: argparse.ArgumentParser, server: bool) -> None:
    """Add the flags of every setting a subcommand honours (all default to None: unset)."""
    for setting in SETTINGS:
        if not server and setting.name not in ("data", "log_level"):
            continue
        flag = "--" + setting.name.replace("_", "-")
        envs = ", ".join(setting.env)
        parser.add_argument(
            flag, dest=setting.name, default=None, help=f"{setting.help} (env {envs})"
        )
    if server:
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
    return Config(**values)
