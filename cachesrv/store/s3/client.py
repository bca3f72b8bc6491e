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

import botocore.config
import botocore.exceptions
import botocore.loaders
import botocore.session

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
    """The S3 client every S3 backend of this process shares.

    A botocore client (what ``boto3.client("s3")`` returns too) on a data loader that
    looks in :data:`_MODELS` first: an ``endpoints.json`` with every partition but only
    the services this process can create clients for, and an S3 model with only the
    operations :class:`ObjectStore` calls. Parsing botocore's own ``endpoints.json``
    (1.25 MB, every service of every partition) and full S3 model cost each of the three
    processes of a replica ~11 MB of RSS, and pruning them after the parse gives little
    back; not importing boto3 saves ~2 MB more. ``_write_models`` makes the copies from
    the installed botocore; tests/test_s3_models.py checks that they still match it.
    """
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
    session = botocore.session.Session()
    session.register_component("data_loader", _loader(session))
    return session.create_client("s3", region_name=region, config=config)


_MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
# what ObjectStore calls, and what botocore's S3 customizations call on their own client
# (HeadBucket: the region redirector; CreateSession: S3 Express directory buckets)
_S3_OPERATIONS = (
    "PutObject",
    "GetObject",
    "HeadObject",
    "DeleteObject",
    "DeleteObjects",
    "ListObjectsV2",
    "HeadBucket",
    "CreateSession",
)
# the S3 client, and the clients botocore's credential and token providers create on
# the same session (assume-role and web identity, SSO, console login)
_SERVICES = ("s3", "sts", "sso", "sso-oidc", "signin")
_S3_MODEL = os.path.join("s3", "2006-03-01", "service-2")


class _Loader(botocore.loaders.Loader):
    """botocore's loader with :data:`_MODELS` searched first. Its files count as
    botocore's own (they are pruned copies of them): a non-builtin ``endpoints.json``
    would make botocore hand the legacy endpoint to the S3 endpoint ruleset as if it
    were a custom endpoint URL."""

    def is_builtin_path(self, path: str) -> bool:
        return bool(path.startswith(_MODELS) or super().is_builtin_path(path))


def _loader(session: botocore.session.Session) -> _Loader:
    # AWS_DATA_PATH (the session's data_path) still comes first, as it does in botocore
    data_path = session.get_config_variable("data_path") or ""
    paths = [os.path.expanduser(p) for p in data_path.split(os.pathsep) if p]
    return _Loader(extra_search_paths=[*paths, _MODELS])


def _builtin(name: str) -> Any:
    """One of the installed botocore's data files, parsed (the full file)."""
    return botocore.loaders.Loader(include_default_search_paths=False).file_loader.load_file(
        os.path.join(botocore.loaders.Loader.BUILTIN_DATA_PATH, name)
    )


def _pruned_endpoints() -> dict[str, Any]:
    endpoints: dict[str, Any] = _builtin("endpoints")
    for partition in endpoints["partitions"]:
        services = partition["services"]
        partition["services"] = {name: services[name] for name in _SERVICES if name in services}
    return endpoints


def _pruned_s3_model() -> dict[str, Any]:
    """The S3 model with only :data:`_S3_OPERATIONS` and the shapes they reach (their
    documentation stays: dropping it saved no measurable RSS)."""
    model: dict[str, Any] = _builtin(_S3_MODEL)
    operations = {name: model["operations"][name] for name in _S3_OPERATIONS}
    shapes: dict[str, Any] = {}

    def reach(name: str) -> None:
        if name in shapes:
            return
        shape = shapes[name] = model["shapes"][name]
        for member in [
            *shape.get("members", {}).values(),
            *(shape.get(k) for k in ("member", "key", "value")),
        ]:
            if member is not None:
                reach(member["shape"])

    for operation in operations.values():
        for ref in [operation.get("input"), operation.get("output"), *operation.get("errors", [])]:
            if ref is not None:
                reach(ref["shape"])
    model["operations"] = operations
    model["shapes"] = {name: shapes[name] for name in model["shapes"] if name in shapes}
    return model


def _model_files() -> dict[str, str]:
    """The files :data:`_MODELS` should hold (path relative to it: text), made from the
    installed botocore."""
    import json

    def dump(data: Any) -> str:
        return json.dumps(data, indent=1, separators=(",", ":")) + "\n"

    return {
        "endpoints.json": dump(_pruned_endpoints()),
        _S3_MODEL + ".json": dump(_pruned_s3_model()),
    }


def _write_models(directory: str = _MODELS) -> None:
    """Regenerate the pruned copies after a botocore upgrade:
    ``python -c 'from cachesrv.store.s3.client import _write_models; _write_models()'``."""
    for name, text in _model_files().items():
        path = os.path.join(directory, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


_shared: dict[tuple[str, float], ObjectStore] = {}
_shared_lock = threading.Lock()


def open_object_store(url: str, timeout: float) -> ObjectStore:
    """The process's object store for ``url`` (one client per process and URL)."""
    key = (url, timeout)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = ObjectStore(StoreUrl.parse(url), timeout)
        return _shared[key]
