"""A stored object as an HTTP response: validators, conditionals, Range, zstd, streaming.

The body comes from the restore pool (:mod:`cachesrv.restore`), pinned by the service
for the whole response; the restore job runs ahead of the client by its socket's
buffer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from cachesrv.catalog import Ref
from cachesrv.http import accesslog, conditional, zerocopy
from cachesrv.http.errors import HttpError
from cachesrv.http.request import Request
from cachesrv.http.responses import Headers, send_simple
from cachesrv.http.responses import header as _h
from cachesrv.restore.hot import FilePart
from cachesrv.restore.job import Job
from cachesrv.service import CacheService
from cachesrv.store import ChunkError


async def not_found(service: CacheService, request: Request, send: Any, message: str) -> None:
    """404: a JSON message for GET, an empty body for HEAD (as the old server did)."""
    service.count_miss()
    if request.method != "HEAD":
        raise HttpError(404, message)
    await send_simple(send, 404, b"", "application/json", head=True)


async def send_object(
    service: CacheService,
    request: Request,
    send: Any,
    ref: Ref,
    content_type: str,
    extra: Headers,
) -> None:
    """A stored object with honest HTTP: validators, conditionals, Range, zstd."""
    headers = request.headers
    head = request.method == "HEAD"
    size = ref.size
    # a ref remembered while the object store is down has only decoded bytes at hand
    zstd = conditional.accepts_zstd(headers) and "range" not in headers and not ref.remembered
    etag = f'"{ref.etag}.zst"' if zstd else f'"{ref.etag}"'
    common = [
        _h("Last-Modified", conditional.http_date(ref.mtime)),
        _h("ETag", etag),
        _h("Accept-Ranges", "bytes"),
        _h("Vary", "Accept-Encoding"),
        *extra,
    ]
    accesslog.note_name(ref.name)
    status = conditional.precondition(headers, etag, ref.mtime)
    if status is not None:
        await send({"type": "http.response.start", "status": status, "headers": common})
        await send({"type": "http.response.body", "body": b""})
        return
    try:
        span = conditional.byte_range(headers, size, etag, ref.mtime)
    except conditional.Unsatisfiable:
        await send_simple(
            send,
            416,
            b"",
            content_type,
            [*common, _h("Content-Range", f"bytes */{size}")],
            head,
        )
        return
    common.append(_h("Content-Type", content_type))
    if zstd:
        status = 200
        common.append(_h("Content-Encoding", "zstd"))
        job = Job(ref.manifest_id, ref.digest, size, zstd=True)
    else:
        start, end = span or (0, size)
        status = 206 if span else 200
        if span:
            common.append(_h("Content-Range", f"bytes {start}-{end - 1}/{size}"))
        common.append(_h("Content-Length", end - start))
        zero_copy = zerocopy.EXTENSION in request.scope.get("extensions", {})
        job = Job(ref.manifest_id, ref.digest, size, start, end, zero_copy=zero_copy)
    if head:
        await send({"type": "http.response.start", "status": status, "headers": common})
        await send({"type": "http.response.body", "body": b""})
        return
    body = service.open_body(job)
    await _stream(service, send, status, common, body, ref)


async def _stream(
    service: CacheService,
    send: Any,
    status: int,
    headers: Headers,
    body: AsyncIterator[bytes | bytearray | memoryview | FilePart],
    ref: Ref,
) -> None:
    # The restore job runs ahead of the client by its socket's buffer (cachesrv.restore).
    async with aclosing(body):  # type: ignore[type-var]
        # The first piece comes before the status line: a broken object is a clean 500.
        try:
            first = await anext(body, b"")
        except ChunkError as exc:
            service.count_corrupt(ref, exc)
            raise HttpError(500, f"stored object {ref.name!r} is damaged: {exc}") from exc
        await send({"type": "http.response.start", "status": status, "headers": headers})
        try:
            await send(_body_message(first))
            async for data in body:
                await send(_body_message(data))
                del data  # sent: not held while the next piece is read
        except ChunkError as exc:
            # Headers are gone: abort the connection so the client sees a failed transfer.
            service.count_corrupt(ref, exc)
            raise
    await send({"type": "http.response.body", "body": b""})


def _body_message(data: bytes | bytearray | memoryview | FilePart) -> dict[str, Any]:
    """A piece of a response body as its ASGI message: a hot span of a file for the
    connection to send itself, else bytes."""
    if isinstance(data, FilePart):
        return {
            "type": zerocopy.EXTENSION,
            "file": data.fd,
            "offset": data.offset,
            "count": data.count,
            "more_body": True,
        }
    return {"type": "http.response.body", "body": data, "more_body": True}
