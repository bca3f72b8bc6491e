"""HTTP errors: raised anywhere below the app, turned into responses in one place.

:func:`as_http_error` is that place: the service's and the store's errors, and the
HTTP layer's own :class:`HttpError`, each become the status and JSON message the
legacy contract (and the README's error table) promises.
"""

from __future__ import annotations

import errno

from cachesrv.catalog import Conflict, EntryExists
from cachesrv.ingest.targz import BadArchive
from cachesrv.names import InvalidName
from cachesrv.pushed import BadPush, ChunksMissing
from cachesrv.service import EntryKept, NotFound, StoreFull
from cachesrv.wire import WireError


class HttpError(Exception):
    """A response with a JSON ``{"message": ...}`` body (the old server's error shape)."""

    def __init__(
        self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


class ClientGone(Exception):
    """The client disconnected before the request body was complete."""


def disk_full(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT: the store's hard limit or a full disk (SQLite's too)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def as_http_error(exc: Exception) -> HttpError | None:
    """The response for ``exc``, or None if it is a fault of the server (let it raise)."""
    if isinstance(exc, HttpError):
        return exc
    if isinstance(exc, InvalidName):
        return HttpError(403 if exc.escapes else 400, exc.message)
    if isinstance(exc, NotFound):
        return HttpError(404, str(exc))
    if isinstance(exc, Conflict):
        return HttpError(409, f"Conflict: {exc}")
    if isinstance(exc, EntryKept):
        return HttpError(409, f"cache entry {exc.key!r} exists (ask ?replace=true or ?max-age=)")
    if isinstance(exc, EntryExists):
        return HttpError(409, f"cache entry {exc.args[0]!r} exists")
    if isinstance(exc, BadArchive):
        return HttpError(400, str(exc))
    if isinstance(exc, BadPush | WireError):
        return HttpError(400, str(exc))
    if isinstance(exc, ChunksMissing):
        return HttpError(409, f"{exc}: send them first")
    if isinstance(exc, StoreFull):
        return HttpError(507, "Insufficient Storage: the store is at its hard limit")
    return _fault(exc)


RETRY_AFTER_LOCKED = 5  # seconds


def _fault(exc: Exception) -> HttpError | None:
    """Faults of the machine under the store, as answers a client can act on. Each comes
    before a version is published: the previous version stays whole.

    - a full disk or quota: 507;
    - a store that cannot be written (EROFS, EACCES, EPERM): 503; reads go on;
    - an I/O error (EIO and other disk errors): 500 naming it;
    - a store database locked by another process beyond the busy timeout (cachesrv.db
      raises it as EBUSY): 503 with Retry-After (usually a tool such as cachesrv gc);
    - an object store that does not answer in time or keeps refusing (ETIMEDOUT):
      503 with Retry-After.
    """
    if not isinstance(exc, OSError) or exc.errno is None:
        return None
    if exc.errno == errno.EBUSY:
        return HttpError(
            503,
            "Service Unavailable: a store database is locked by another process; retry later",
            [(b"Retry-After", str(RETRY_AFTER_LOCKED).encode())],
        )
    if exc.errno == errno.ETIMEDOUT:  # cachesrv.store.s3.ObjectStoreUnavailable
        return HttpError(
            503,
            "Service Unavailable: the object store does not answer; retry later",
            [(b"Retry-After", str(RETRY_AFTER_LOCKED).encode())],
        )
    if disk_full(exc):
        return HttpError(507, "Insufficient Storage: the disk is full")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return HttpError(503, f"Service Unavailable: the store is not writable ({exc.strerror})")
    if exc.errno in (errno.EIO, errno.ENXIO, errno.EBADF, errno.ESTALE, errno.ENODEV):
        return HttpError(500, f"I/O error in the store ({exc.strerror})")
    return None
