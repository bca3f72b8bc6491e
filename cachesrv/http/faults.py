"""Faults of the machine under the store, as the HTTP answers a client can act on.

The app turns exceptions into responses in one place (``App.__call__``); this is
the table it reads for the ones that are not an :class:`HttpError`:

- a full disk or quota (``ENOSPC``, ``EDQUOT``): ``507``, as before;
- a store that cannot be written (``EROFS``, ``EACCES``, ``EPERM``): ``503``; reads go on;
- an I/O error (``EIO`` and other disk errors): ``500`` naming it;
- the catalog locked by another process beyond the busy timeout: ``503`` with
  ``Retry-After`` (the lock is usually a tool such as ``cachesrv gc`` or a backup).

Every one of these happens before a version is published, so the previous
version stays whole and nothing acknowledged is lost.
"""

from __future__ import annotations

import errno

from cachesrv.http.errors import HttpError

RETRY_AFTER_LOCKED = 5  # seconds


def as_http_error(exc: BaseException) -> HttpError | None:
    """The response for a fault, or None for an exception that is a bug (a 500 by hypercorn)."""
    if not isinstance(exc, OSError) or exc.errno is None:
        return None
    if exc.errno == errno.EBUSY:  # cachesrv.db: a lock held past the busy timeout
        return HttpError(
            503,
            "Service Unavailable: a store database is locked by another process; retry later",
            [(b"Retry-After", str(RETRY_AFTER_LOCKED).encode())],
        )
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return HttpError(507, "Insufficient Storage: the disk is full")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return HttpError(503, f"Service Unavailable: the store is not writable ({exc.strerror})")
    if exc.errno in (errno.EIO, errno.ENXIO, errno.EBADF, errno.ESTALE, errno.ENODEV):
        return HttpError(500, f"I/O error in the store ({exc.strerror})")
    return None
