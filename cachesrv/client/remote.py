"""The server's chunk endpoints as blocking calls (:mod:`cachesrv.http.routes.chunks`).

One HTTP/1.1 connection per thread, kept alive; requests name their target as
``?path=`` or ``?key=``. A credential comes as a token (``Authorization: Bearer``) or
``user:pass`` (Basic), as curl would send it.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlencode, urlsplit

from cachesrv import wire

BUSY_RETRIES = 5


class RemoteError(Exception):
    """A request the server refused or could not answer; ``status`` 0: no answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status


@dataclass(frozen=True)
class Target:
    """An object path or a cache key."""

    kind: str  # "path" | "key"
    name: str

    def query(self, **extra: str) -> str:
        return urlencode({self.kind: self.name, **extra}, quote_via=quote)


@dataclass(frozen=True)
class Found:
    """A manifest as the server answered it."""

    match: str  # "exact" | "partial"
    name: str  # the key (or path) it was found under
    manifest_id: bytes
    body: bytes
    age: float


class Remote:
    def __init__(self, url: str, token: str | None = None, user: str | None = None) -> None:
        parts = urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--server must be an http(s) URL, not {url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.base = parts.path
        self.headers: dict[str, str] = {}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        elif user:
            self.headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = (
                http.client.HTTPSConnection
                if self.scheme == "https"
                else http.client.HTTPConnection
            )
            conn = self._local.conn = cls(self.host, self.port, timeout=300)
        return conn

    def request(
        self, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body. A ``503`` with ``Retry-After`` (too many uploads in
        flight) is retried after it says, a few times; every endpoint is idempotent."""
        for _ in range(BUSY_RETRIES):
            status, headers, data = self._request_once(method, path, body)
            wait = {k.lower(): v for k, v in headers.items()}.get("retry-after", "")
            if status != 503 or not wait.isdigit():
                break
            time.sleep(min(int(wait), 10))
        return status, headers, data

    def _request_once(
        self, method: str, path: str, body: bytes | None
    ) -> tuple[int, dict[str, str], bytes]:
        """A dropped kept-alive connection is retried once."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, self.base + path, body=body, headers=self.headers)
                response = conn.getresponse()
                data = response.read()
                return response.status, dict(response.getheaders()), data
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise RemoteError(0, f"server {self.host} is unreachable: {exc}") from exc
        raise AssertionError("unreachable")

    def _ok(
        self, method: str, path: str, body: bytes | None = None
    ) -> tuple[dict[str, str], bytes]:
        status, headers, data = self.request(method, path, body)
        if status >= 300:
            try:
                message = json.loads(data)["message"]
            except (ValueError, KeyError, TypeError):
                message = data[:200].decode("utf-8", "replace")
            raise RemoteError(status, message)
        return headers, data

    # -- the endpoints ------------------------------------------------------------

    def settings(self) -> dict[str, int]:
        result: dict[str, int] = json.loads(self._ok("GET", "/-/chunks/settings")[1])
        return result

    def missing(self, target: Target, ids: list[bytes]) -> list[bytes]:
        body = wire.encode_ids(ids)
        return wire.decode_ids(self._ok("POST", f"/-/chunks/missing?{target.query()}", body)[1])

    def upload(self, target: Target, batch: bytes) -> None:
        self._ok("POST", f"/-/chunks/upload?{target.query()}", batch)

    def publish(
        self, target: Target, manifest: bytes, replace: bool, max_age: float | None
    ) -> dict[str, object]:
        extra = {"replace": "true"} if replace else {}
        if max_age is not None:
            extra["max-age"] = str(max_age)
        result: dict[str, object] = json.loads(
            self._ok("PUT", f"/-/manifest?{target.query(**extra)}", manifest)[1]
        )
        return result

    def manifest(
        self, target: Target, restore_keys: list[str], exact: bool = False
    ) -> Found | None:
        extra = {"restore-keys": ",".join(restore_keys)} if restore_keys else {}
        if exact:
            extra["exact"] = "true"
        status, headers, data = self.request("GET", f"/-/manifest?{target.query(**extra)}")
        if status == 404:
            return None
        if status >= 300:
            raise RemoteError(status, data[:200].decode("utf-8", "replace"))
        lower = {k.lower(): v for k, v in headers.items()}
        return Found(
            lower["cachesrv-match"],
            unquote(lower["cachesrv-key"]),
            bytes.fromhex(lower["cachesrv-manifest"]),
            data,
            float(lower.get("cachesrv-age", "0")),
        )

    def fetch(self, target: Target, manifest_id: bytes, ids: list[bytes]) -> bytes:
        query = target.query(manifest=manifest_id.hex())
        return self._ok("POST", f"/-/chunks/fetch?{query}", wire.encode_ids(ids))[1]
