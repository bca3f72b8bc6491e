"""Chunk-level endpoints for ``cachesrv push`` / ``cachesrv pull`` (:mod:`cachesrv.client`).

    GET  /-/chunks/settings                         how to chunk (JSON)
    POST /-/chunks/missing?path=P|key=K             id list in, the ids not stored out
    POST /-/chunks/upload?path=P|key=K              chunk batch in, each checked, stored
    PUT  /-/manifest?path=P|key=K[&replace&max-age] publish a manifest (as an upload)
    GET  /-/manifest?path=P|key=K[&restore-keys=]   the stored manifest of a name
    POST /-/chunks/fetch?path=P|key=K&manifest=ID   id list in, chunk batch out

Bodies are :mod:`cachesrv.wire` id lists and chunk batches, and manifests as
:meth:`cachesrv.manifest.Manifest.encode` makes them. Every request names the object
or cache key it works for, so tokens limited to a prefix apply as to uploads and
reads; a chunk is fetched only through a name the client may read whose current
manifest references it.
"""

from __future__ import annotations

import math
import time
from typing import Any
from urllib.parse import quote

from cachesrv import wire
from cachesrv.catalog import Ref
from cachesrv.http import accesslog
from cachesrv.http.auth import Scope
from cachesrv.http.errors import HttpError
from cachesrv.http.request import Request
from cachesrv.http.responses import header as _h
from cachesrv.http.responses import send_json, send_simple
from cachesrv.http.routes.caches import save_options
from cachesrv.ingest.session import INLINE_LIMIT
from cachesrv.names import clean_key, clean_path
from cachesrv.pushed import MAX_MANIFEST_BYTES
from cachesrv.service import CacheService
from cachesrv.store import ChunkError

PREFIXES = ("/-/chunks/", "/-/manifest")
FETCH = "/-/chunks/fetch"
OCTETS = "application/octet-stream"


def _target(request: Request) -> tuple[str, str]:
    """("path" | "key", cleaned name) from the query."""
    path, key = request.arg("path"), request.arg("key")
    if (path is None) == (key is None):
        raise HttpError(400, "name the object: exactly one of ?path= or ?key=")
    if path is not None:
        return "path", clean_path(path)
    assert key is not None
    return "key", clean_key(key)


async def _find(service: CacheService, kind: str, name: str) -> Ref | None:
    if kind == "path":
        return await service.find_object(name)
    return await service.find_entry(name, [], exact=True)


async def chunk_endpoint(service: CacheService, request: Request, send: Any) -> None:
    method, path = request.method, request.path
    if path == "/-/chunks/settings" and method == "GET":
        request.require(Scope.READ)
        await send_json(send, 200, _settings(service))
    elif path == "/-/chunks/missing" and method == "POST":
        _, name = _target(request)
        request.require(Scope.WRITE, name)
        ids = wire.decode_ids(await request.small_body(wire.MAX_IDS * wire.ID_SIZE))
        missing = await service.missing_chunks(ids)
        body = wire.encode_ids(i for i in dict.fromkeys(ids) if i in missing)
        await send_simple(send, 200, body, OCTETS)
    elif path == "/-/chunks/upload" and method == "POST":
        _, name = _target(request)
        request.require(Scope.WRITE, name)
        limit = wire.MAX_BATCH_BYTES + wire.MAX_IDS * wire.RECORD.size
        # no chunk is larger than the chunker's max: a bigger claim is refused undecoded
        reader = wire.BatchReader(max_raw=service.repo.config.chunking.max_size)
        records = list(reader.feed(await request.small_body(limit)))
        reader.finish()
        new, raw = await service.store_chunks(records)
        await send_json(send, 200, {"received": len(records), "stored": new, "raw_bytes": raw})
    elif path == FETCH and method == "POST":
        await _fetch(service, request, send)
    elif path == "/-/manifest" and method == "PUT":
        await _publish(service, request, send)
    elif path == "/-/manifest" and method in ("GET", "HEAD"):
        await _manifest(service, request, send)
    else:
        raise HttpError(405 if path in (FETCH, "/-/manifest") else 404, "Not Found")


def _settings(service: CacheService) -> dict[str, object]:
    config = service.repo.config
    params = config.chunking
    return {
        "chunk_min": params.min_size,
        "chunk_avg": params.avg_size,
        "chunk_max": params.max_size,
        "tar_aware": True,
        "inline_limit": INLINE_LIMIT,
        "compression_level": config.compression_level,
        "max_ids": wire.MAX_IDS,
        "max_batch_bytes": wire.MAX_BATCH_BYTES,
        "max_manifest_bytes": MAX_MANIFEST_BYTES,
    }


async def _publish(service: CacheService, request: Request, send: Any) -> None:
    kind, name = _target(request)
    request.require(Scope.WRITE, name)
    replace, max_age = save_options(request)
    if kind == "key":
        await service.check_entry_kept(name, replace, max_age)
    blob = await request.small_body(MAX_MANIFEST_BYTES)
    stored = await service.seal_pushed(blob)
    etag = f'"{stored.etag}"'
    if kind == "key":
        await service.publish_entry(name, stored, replace, max_age)
        await send_json(send, 201, {"key": name, "size": stored.size, "etag": etag})
    else:
        await service.publish([(name, stored)])
        await send_json(send, 201, {"path": name, "size": stored.size, "etag": etag})


async def _manifest(service: CacheService, request: Request, send: Any) -> None:
    kind, name = _target(request)
    restore_keys = [
        k.strip()
        for value in request.args("restore-keys")
        for k in value.replace("\n", ",").split(",")
        if k.strip()
    ]
    if kind == "path" and restore_keys:
        raise HttpError(400, "restore-keys go with ?key=, not ?path=")
    request.require(Scope.READ, name, *restore_keys)
    if kind == "path":
        ref = await service.find_object(name)
    else:
        ref = await service.find_entry(name, restore_keys, exact=request.arg("exact") == "true")
    if ref is None:
        service.count_miss()
        accesslog.note_match("miss")
        raise HttpError(404, f"nothing matches {name!r}", [_h("Cachesrv-Match", "miss")])
    match = "exact" if ref.name == name else "partial"
    accesslog.note_match(match, ref.name)
    body = await service.manifest_body(ref)
    headers = [
        _h("Cachesrv-Manifest", ref.manifest_id.hex()),
        _h("Cachesrv-Key", quote(ref.name, safe="/:@,+=")),
        _h("Cachesrv-Match", match),
        _h("Cachesrv-Age", max(0, math.floor(time.time() - ref.mtime))),
        _h("ETag", f'"{ref.etag}"'),
    ]
    await send_simple(send, 200, body, OCTETS, headers, head=request.method == "HEAD")


async def _fetch(service: CacheService, request: Request, send: Any) -> None:
    kind, name = _target(request)
    request.require(Scope.READ, name)
    try:
        manifest_id = bytes.fromhex(request.arg("manifest") or "")
    except ValueError as exc:
        raise HttpError(400, "?manifest= is a manifest id in hex") from exc
    ids = wire.decode_ids(await request.small_body(wire.MAX_IDS * wire.ID_SIZE))
    ref = await _find(service, kind, name)
    if ref is None:
        raise HttpError(404, f"nothing named {name!r}")
    if ref.manifest_id != manifest_id:
        raise HttpError(409, f"{name!r} has a newer version: fetch its manifest again")
    known = await service.chunk_set(manifest_id)
    if not known.issuperset(ids):
        raise HttpError(403, f"Forbidden: chunks asked for are not in {name!r}")
    body = service.read_chunks(manifest_id, ids)
    # The first batch is read before the status line: a damaged chunk is a clean 500.
    try:
        first = await anext(body, b"")
    except ChunkError as exc:
        await body.aclose()  # type: ignore[attr-defined]
        raise HttpError(500, f"stored object {name!r} is damaged: {exc}") from exc
    await send(
        {"type": "http.response.start", "status": 200, "headers": [_h("Content-Type", OCTETS)]}
    )
    try:
        await send({"type": "http.response.body", "body": first, "more_body": True})
        async for data in body:
            await send({"type": "http.response.body", "body": data, "more_body": True})
    finally:
        await body.aclose()  # type: ignore[attr-defined]
    await send({"type": "http.response.body", "body": b""})
