"""A thin view of an ASGI HTTP request: decoded headers, query, streamed body."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import zstandard

from cachesrv.http import auth as _auth
from cachesrv.http.errors import ClientGone, HttpError

Scope = dict[str, Any]


class Request:
    def __init__(self, scope: Scope, receive: Any, auth: _auth.Authorizer | None = None) -> None:
        self.scope = scope
        self._auth = auth
        self._receive = receive
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self.headers = headers
        # bytes a compressed body may decode to (None: no limit); see cachesrv.http.limits
        self.max_decoded: int | None = None

    def require(self, need: _auth.Scope, *names: str) -> None:
        """Allow this request ``need`` on every one of ``names`` (object paths or cache
        keys), or raise 401/403 (:mod:`cachesrv.http.auth`)."""
        if self._auth is not None:
            self._auth.check(self.headers.get("authorization", ""), need, list(names))

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def args(self, name: str) -> list[str]:
        return self.query.get(name, [])

    @property
    def content_length(self) -> int | None:
        try:
            return int(self.headers["content-length"])
        except (KeyError, ValueError):
            return None

    async def raw_body(self) -> AsyncIterator[bytes]:
        """The body as it arrives; :class:`ClientGone` if the client hangs up first."""
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            data = message.get("body", b"")
            if data:
                yield data
            if not message.get("more_body", False):
                return

    def body(self) -> AsyncIterator[bytes]:
        """The body with any ``Content-Encoding: gzip|zstd`` removed: what is stored is the
        decoded stream, so compressed clients still dedup."""
        encoding = self.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            return self.raw_body()
        if encoding not in ("gzip", "x-gzip", "zstd"):
            raise HttpError(415, f"unsupported Content-Encoding {encoding!r}: use gzip or zstd")
        return self._decoded_body(_Decoder(encoding))

    async def _decoded_body(self, decoder: _Decoder) -> AsyncIterator[bytes]:
        decoded = 0
        async for data in self.raw_body():
            out = decoder.feed(data)
            decoded += len(out)
            if self.max_decoded is not None and decoded > self.max_decoded:
                raise HttpError(
                    413, f"Payload Too Large: uploads are limited to {self.max_decoded} bytes"
                )
            if out:
                yield out
        decoder.finish()

    async def small_body(self, limit: int = 64 * 1024) -> bytes:
        parts: list[bytes] = []
        size = 0
        async for data in self.body():
            size += len(data)
            if size > limit:
                raise HttpError(413, f"request body larger than {limit} bytes")
            parts.append(data)
        return b"".join(parts)


class _Decoder:
    """Streaming gzip (multi-member) or zstd (multi-frame) decoding."""

    def __init__(self, encoding: str) -> None:
        self.zstd = encoding == "zstd"
        self._new()

    def _new(self) -> None:
        self.started = False  # the current member/frame has input not yet complete
        if self.zstd:
            self.obj: Any = zstandard.ZstdDecompressor().decompressobj()
        else:
            self.obj = zlib.decompressobj(wbits=31)

    def feed(self, data: bytes) -> bytes:
        out = []
        try:
            while data:
                self.started = True
                out.append(self.obj.decompress(data))
                if not self.obj.eof:
                    break
                data = self.obj.unused_data
                self._new()
        except (zlib.error, zstandard.ZstdError) as exc:
            name = "zstd" if self.zstd else "gzip"
            raise HttpError(400, f"body is not valid {name}: {exc}") from exc
        return b"".join(out)

    def finish(self) -> None:
        if self.started:
            raise HttpError(400, "compressed body is truncated")
