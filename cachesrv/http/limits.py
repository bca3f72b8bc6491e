"""Limits that keep one client, or many, from holding the server.

Checked before a request reaches a route (``RequestLimits.check``): header
count, ambiguous framing, a path that is not UTF-8, a declared body over the
upload limit, and a slot among the concurrent uploads. While a body arrives
(``RequestLimits.guard``, a wrapper of ASGI ``receive``): its size against the
upload limit and the time between two body bytes against the body timeout.
Every refusal is an :class:`HttpError`, so an upload in progress is aborted by
the same path as any failed one and nothing is published.

The request line and headers are bounded by h11 (64 KiB, ``server.py``) and
the time a connection may take to send them by hypercorn's keep-alive timeout.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote_to_bytes

import trio

from cachesrv.config import Config
from cachesrv.http.errors import HttpError
from cachesrv.http.request import Request

Receive = Callable[[], Awaitable[dict[str, Any]]]
HEADER_BYTES = 64 * 1024  # as h11_max_incomplete_size in server.py
RETRY_AFTER = 2  # seconds a client refused for lack of an upload slot should wait
UPLOAD_METHODS = ("PUT", "POST")


def _close() -> list[tuple[bytes, bytes]]:
    # the body was not read: the connection cannot carry another request
    return [(b"Connection", b"close")]


def too_large(limit: int) -> HttpError:
    return HttpError(413, f"Payload Too Large: uploads are limited to {limit} bytes", _close())


def _utf8(raw: bytes, what: str) -> None:
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HttpError(400, f"{what} is not valid UTF-8 once percent-decoded") from exc


_DAYS = re.compile(r"[0-9]{1,6}")


def parse_days(raw: str) -> int:
    """``days`` of ``DELETE /delete``: a whole number of days, 0 when absent or empty
    (the old server's default). A negative or non-numeric one is a 400: the old server
    read ``-1`` as "everything" and ``abc`` as 0, both deleting what no one asked for."""
    text = raw.strip()
    if not text:
        return 0
    if not _DAYS.fullmatch(text):
        raise HttpError(400, f"days must be a whole number of days from 0 to 999999, not {raw!r}")
    return int(text)


class RequestLimits:
    def __init__(self, config: Config) -> None:
        self.max_upload_size = config.max_upload_size
        self.max_concurrent_uploads = config.max_concurrent_uploads
        self.body_timeout = config.body_timeout
        self.max_headers = config.max_headers
        self.uploads_in_flight = 0
        self.refused_busy = 0  # uploads answered 503 for lack of a slot, since start

    def check(self, request: Request) -> None:
        """Refuse, before any byte of the body is read, what must not go further."""
        scope = request.scope
        if len(scope["headers"]) > self.max_headers:
            raise HttpError(
                431, f"Request Header Fields Too Large: more than {self.max_headers} headers"
            )
        # h11 bounds only headers still incomplete: a block that arrived fast can be larger
        if sum(len(name) + len(value) for name, value in scope["headers"]) > HEADER_BYTES:
            raise HttpError(431, f"Request Header Fields Too Large: more than {HEADER_BYTES} bytes")
        if "transfer-encoding" in request.headers and "content-length" in request.headers:
            # the framing a proxy in front of us used may not be ours (request smuggling)
            raise HttpError(
                400, "Content-Length and Transfer-Encoding in one request are refused", _close()
            )
        _utf8(scope.get("raw_path") or scope["path"].encode("utf-8", "replace"), "the path")
        _utf8(scope.get("query_string", b""), "the query string")
        if request.method in UPLOAD_METHODS and self.max_upload_size is not None:
            length = request.content_length
            if length is not None and length > self.max_upload_size:
                raise too_large(self.max_upload_size)

    @contextmanager
    def upload_slot(self, request: Request) -> Iterator[None]:
        """Hold one of the concurrent upload slots for an upload's lifetime."""
        if request.method not in UPLOAD_METHODS or self.max_concurrent_uploads is None:
            yield
            return
        if self.uploads_in_flight >= self.max_concurrent_uploads:
            self.refused_busy += 1
            raise HttpError(
                503,
                f"Service Unavailable: {self.max_concurrent_uploads} uploads are in flight; "
                f"retry in {RETRY_AFTER} s",
                [(b"Retry-After", str(RETRY_AFTER).encode()), *_close()],
            )
        self.uploads_in_flight += 1
        try:
            yield
        finally:
            self.uploads_in_flight -= 1

    def guard(self, receive: Receive) -> Receive:
        """``receive`` with the body timeout and the upload size limit applied."""
        received = 0
        timeout = self.body_timeout
        limit = self.max_upload_size

        async def guarded() -> dict[str, Any]:
            nonlocal received
            with trio.move_on_after(timeout if timeout is not None else float("inf")) as wait:
                message = await receive()
            if wait.cancelled_caught:
                raise HttpError(
                    408,
                    f"Request Timeout: no body byte for {timeout:g} s; nothing was stored",
                    _close(),
                )
            received += len(message.get("body", b""))
            if limit is not None and received > limit:
                raise too_large(limit)
            return message

        return guarded

    def decoded_limit(self) -> int | None:
        """Bytes a compressed body may decode to (the same limit as its raw bytes)."""
        return self.max_upload_size
