"""Where the store lives: ``--data`` (a local directory: packs + SQLite, the default) or
``--store s3://bucket/prefix`` (one bucket shared by every replica). The server, the
tools and the worker processes all open their chunk store and catalog here, so none of
them branches on which one is in use."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cachesrv.catalog import CatalogBackend, SqliteCatalog
from cachesrv.store import ChunkStore


def open_chunk_store(
    data: Path | None,
    store: str | None,
    store_timeout: float,
    hard_limit: int | None = None,
    pin_ttl: float = 600.0,
    group_level: int = 0,
) -> ChunkStore:
    """``group_level``: what the object store's compaction groups live members of a
    partly dead group at (the local store makes them pending for the background)."""
    if store is None:
        from cachesrv.store.local import LocalChunkStore

        if data is None:
            raise ValueError("the local store needs a directory")
        return LocalChunkStore(data, hard_limit=hard_limit, pin_ttl=pin_ttl)
    from cachesrv.store.s3 import S3ChunkStore, open_object_store

    objects = open_object_store(store, store_timeout).child("chunks/")
    return S3ChunkStore(objects, hard_limit=hard_limit, pin_ttl=pin_ttl, group_level=group_level)


def open_catalog(
    data: Path | None,
    store: str | None,
    store_timeout: float,
    busy_timeout: float = 60.0,
    held: Callable[[bytes, int], bool] | None = None,
) -> CatalogBackend:
    """``held``: whether the hot cache holds every byte of an object (digest, size); with
    an object store, names whose bytes it holds stay readable while the bucket is down
    (:mod:`cachesrv.catalog.s3`), remembered under ``data`` (none without it)."""
    if store is None:
        if data is None:
            raise ValueError("the local catalog needs a directory")
        return SqliteCatalog(data, busy_timeout=busy_timeout)
    from cachesrv.catalog.remembered import RememberedRefs
    from cachesrv.catalog.s3 import S3Catalog
    from cachesrv.store.s3 import open_object_store

    objects = open_object_store(store, store_timeout).child("catalog/")
    remembered = None if data is None else RememberedRefs(data)
    return S3Catalog(objects, remembered=remembered, held=held)


def check_store(store: str | None, store_timeout: float) -> None:
    """At start-up: an object store must answer and honour conditional writes
    (:class:`~cachesrv.store.s3.ConditionalWritesUnsupported` says why not)."""
    if store is None:
        return
    import botocore.exceptions

    from cachesrv.store.s3 import ConditionalWritesUnsupported, open_object_store

    try:
        open_object_store(store, store_timeout).check_conditional_writes()
    except ConditionalWritesUnsupported as exc:
        raise SystemExit(f"cachesrv: refusing to start: {exc}") from exc
    except (OSError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise SystemExit(f"cachesrv: refusing to start: cannot use {store}: {exc}") from exc


def store_args(store: str | None, store_timeout: float) -> tuple[str, ...]:
    """The flags that bring a worker process to the same store."""
    return () if store is None else ("--store", store, "--store-timeout", repr(store_timeout))
