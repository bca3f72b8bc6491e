"""The object store under the S3 backends: one shared boto3 client, its timeouts and
retries, errors turned into what the rest of cachesrv understands, whether the store
answered lately (:class:`Reachability`), and the start-up check that conditional writes
are honoured.

boto3 is blocking; cachesrv drives it from worker threads (trio's thread pool, the
restore and ingest threads), so the one client's connection pool is at least as large
as the thread limit. Endpoint, region and credentials come from the standard ``AWS_*``
environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), as boto3 reads it.
"""

from __future__ import annotations

import errno
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions

POOL_CONNECTIONS = 64  # >= trio's default thread limit (40) plus restore/ingest threads
ATTEMPTS = 5  # botocore's "standard" retries: throttling and 5xx, with backoff
RECHECK = 2.0  # seconds between two tries of a store found down (Reachability)


class ObjectStoreUnavailable(OSError):
    """The object store did not answer in time or refused for a while (throttling, 5xx
    after retries, connection failures): the HTTP layer answers 503 + Retry-After."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ETIMEDOUT, message)


class PreconditionFailed(Exception):
    """A conditional write or delete lost: the object is not what the caller last saw."""


class ConditionalWritesUnsupported(RuntimeError):
    """The object store ignores ``If-None-Match: *`` or ``If-Match``: refuse to start."""


@dataclass(frozen=True)
class StoreUrl:
    bucket: str
    prefix: str  # "" or ending in "/"

    @classmethod
    def parse(cls, url: str) -> StoreUrl:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
        prefix = parts.path.strip("/")
        return cls(parts.netloc, prefix + "/" if prefix else "")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


class Reachability:
    """Whether the object store answered lately; one per client, shared by every
    :class:`ObjectStore` on it. A request that finds the store down (no answer, or 5xx,
    after botocore's retries: at least ``--store-timeout``) marks it down; from then on
    requests fail at once (503 + Retry-After upstream, or a read served from the hot
    cache) instead of each waiting out the timeouts again, and every ``recheck`` seconds
    one request tries the store. Any answer, even 404 or 412, marks it up."""

    def __init__(self, recheck: float = RECHECK) -> None:
        self.recheck = recheck
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._last_try = 0.0  # when a request last went to the store while it was down

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def admit(self) -> None:
        """Return if a request may go to the store, else raise ObjectStoreUnavailable."""
        with self._lock:
            if self._down_since is None:
                return
            now = time.monotonic()
            if now >= self._last_try + self.recheck:
                self._last_try = now  # this request tries; the others fail until then
                return
            down_for = now - self._down_since
        raise ObjectStoreUnavailable(
            f"the object store has not answered for {down_for:.0f} s (tried again every "
            f"{self.recheck:g} s)"
        )

    def answered(self) -> None:
        if self._down_since is not None:
            with self._lock:
                self._down_since = None

    def failed(self) -> None:
        with self._lock:
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
            self._last_try = now


def _code(exc: botocore.exceptions.ClientError) -> tuple[str, int]:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(error.get("Code", "")), int(status)


class ObjectStore:
    """One bucket (and a key prefix in it) through a shared boto3 client. Blocking and
    thread-safe. Keys passed in are relative to the prefix."""

    def __init__(
        self,
        url: StoreUrl,
        timeout: float = 10.0,
        client: Any = None,
        reachability: Reachability | None = None,
    ) -> None:
        self.url = url
        self.bucket = url.bucket
        self.prefix = url.prefix
        self.timeout = timeout
        self.client = client if client is not None else make_client(timeout)
        self.reachability = reachability if reachability is not None else Reachability()

    def child(self, prefix: str) -> ObjectStore:
        """The same client on a sub-prefix (``chunks/``, ``catalog/``)."""
        url = StoreUrl(self.bucket, self.prefix + prefix)
        return ObjectStore(url, self.timeout, self.client, self.reachability)

    def _call(self, operation: str, **kwargs: Any) -> Any:
        self.reachability.admit()
        try:
            answer = getattr(self.client, operation)(Bucket=self.bucket, **kwargs)
        except botocore.exceptions.ClientError as exc:
            code, status = _code(exc)
            if status >= 500:
                self.reachability.failed()
            else:
                self.reachability.answered()
            if status == 412 or code == "PreconditionFailed":
                raise PreconditionFailed(kwargs.get("Key", "")) from exc
            if status == 404 or code in ("NoSuchKey", "NotFound", "404"):
                raise KeyError(kwargs.get("Key", "")) from exc
            if status in (409,) and code == "ConditionalRequestConflict":
                raise PreconditionFailed(kwargs.get("Key", "")) from exc
            if status >= 500 or status == 429 or code in ("SlowDown", "RequestTimeout"):
                raise ObjectStoreUnavailable(f"the object store answered {status} {code}") from exc
            raise
        except (
            botocore.exceptions.ConnectionError,
            botocore.exceptions.HTTPClientError,
            botocore.exceptions.ReadTimeoutError,
        ) as exc:
            self.reachability.failed()
            raise ObjectStoreUnavailable(f"the object store does not answer: {exc}") from exc
        self.reachability.answered()
        return answer

    # -- reads -------------------------------------------------------------------

    def get(self, key: str) -> tuple[bytes, str]:
        """Body and ETag; KeyError if there is no such object."""
        answer = self._call("get_object", Key=self.prefix + key)
        return self._body(answer), answer["ETag"]

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive) of an object."""
        answer = self._call("get_object", Key=self.prefix + key, Range=f"bytes={start}-{end - 1}")
        data = self._body(answer)
        if len(data) != end - start:
            raise KeyError(f"{key}: {len(data)} bytes where {end - start} were asked for")
        return data

    def _body(self, answer: dict[str, Any]) -> bytes:
        """A GET's body: the store that stalls or drops it half-way is down too."""
        try:
            with answer["Body"] as body:
                data: bytes = body.read()
        except (
            botocore.exceptions.ConnectionError,
            botocore.exceptions.HTTPClientError,
            botocore.exceptions.ReadTimeoutError,  # dropped mid-body: ResponseStreamingError
        ) as exc:
            self.reachability.failed()
            raise ObjectStoreUnavailable(f"the object store stopped answering: {exc}") from exc
        return data

    def etag(self, key: str) -> str | None:
        try:
            return str(self._call("head_object", Key=self.prefix + key)["ETag"])
        except KeyError:
            return None

    def listing(self, prefix: str = "", start_after: str = "") -> Iterator[tuple[str, int, float]]:
        """(key relative to this store's prefix, size, last modified) in key order."""
        kwargs: dict[str, Any] = {"Prefix": self.prefix + prefix}
        if start_after:
            kwargs["StartAfter"] = self.prefix + start_after
        strip = len(self.prefix)
        while True:
            page = self._call("list_objects_v2", **kwargs)
            for item in page.get("Contents", []):
                yield item["Key"][strip:], int(item["Size"]), item["LastModified"].timestamp()
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def etags(self, prefix: str = "") -> Iterator[tuple[str, str]]:
        """(key relative to this store's prefix, ETag) in key order."""
        kwargs: dict[str, Any] = {"Prefix": self.prefix + prefix}
        strip = len(self.prefix)
        while True:
            page = self._call("list_objects_v2", **kwargs)
            for item in page.get("Contents", []):
                yield item["Key"][strip:], str(item["ETag"])
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def exists_below(self, prefix: str) -> bool:
        page = self._call("list_objects_v2", Prefix=self.prefix + prefix, MaxKeys=1)
        return bool(page.get("Contents"))

    # -- writes ------------------------------------------------------------------

    def put(
        self, key: str, body: bytes, *, if_match: str | None = None, create: bool = False
    ) -> str:
        """Write an object; returns its ETag. ``create``: only if there is none
        (``If-None-Match: *``); ``if_match``: only if it still has that ETag.
        :class:`PreconditionFailed` otherwise. Acknowledged only once durable."""
        kwargs: dict[str, Any] = {"Key": self.prefix + key, "Body": body}
        if create:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        return str(self._call("put_object", **kwargs)["ETag"])

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        kwargs: dict[str, Any] = {"Key": self.prefix + key}
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        try:
            self._call("delete_object", **kwargs)
        except KeyError:
            if if_match is not None:
                raise PreconditionFailed(key) from None

    def delete_many(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self.prefix + k} for k in keys[start : start + 1000]]
            self._call("delete_objects", Delete={"Objects": batch, "Quiet": True})

    def ping(self) -> None:
        self._call("head_bucket")

    def check_conditional_writes(self) -> None:
        """Refuse a store that ignores ``If-None-Match: *`` or ``If-Match`` on PUT:
        switching refs relies on both. Writes and removes one probe object."""
        key = f"probe/{secrets.token_hex(8)}"
        first = self.put(key, b"1", create=True)
        try:
            for what, kwargs in (
                ("If-None-Match: *", {"create": True}),
                ("If-Match", {"if_match": '"00000000000000000000000000000000"'}),
            ):
                try:
                    self.put(key, b"2", **kwargs)  # type: ignore[arg-type]
                except PreconditionFailed:
                    continue
                raise ConditionalWritesUnsupported(
                    f"{self.url}: the object store ignores {what} on PUT (it overwrote an "
                    "object it should have refused); cachesrv needs conditional writes to "
                    "switch refs safely across replicas"
                )
            self.put(key, b"3", if_match=first)
        finally:
            self.delete(key)


def make_client(timeout: float) -> Any:
    """The boto3 S3 client every S3 backend of this process shares."""
    config = botocore.config.Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"max_attempts": ATTEMPTS, "mode": "standard"},
        max_pool_connections=POOL_CONNECTIONS,
        s3={"addressing_style": "path"} if os.environ.get("AWS_ENDPOINT_URL") else {},
        # checksums on every PUT are boto3's default; some S3-compatible stores reject them
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.session.Session().client("s3", region_name=region, config=config)


_shared: dict[tuple[str, float], ObjectStore] = {}
_shared_lock = threading.Lock()


def open_object_store(url: str, timeout: float) -> ObjectStore:
    """The process's object store for ``url`` (one client per process and URL)."""
    key = (url, timeout)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = ObjectStore(StoreUrl.parse(url), timeout)
        return _shared[key]
