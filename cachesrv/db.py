"""SQLite access shared by the local chunk index and the catalog.

One connection per thread (sqlite3 objects must not cross threads), closed when
its thread ends (trio's worker threads come and go: each left its connection, three
file descriptors and up to a page cache, open until the database closed), WAL so
readers never wait for the writer, ``synchronous=FULL`` because a commit here
is what makes an upload durable: it is done once per upload, not per chunk.
A full disk in a write transaction is raised as ``OSError(ENOSPC)``, the way a
failed pack write arrives, so that callers (the HTTP layer's 507) know one error;
a lock held by another process past the busy timeout likewise as ``OSError(EBUSY)``.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Database:
    # Page cache per connection, in KiB (SQLite's default is 2000). A process with many
    # threads, so many connections, lowers it (cachesrv.restore.process).
    cache_kib = 2000

    def __init__(
        self, path: Path, schema: str, durable: bool = True, busy_timeout: float = 60.0
    ) -> None:
        """``durable=False`` (a cache): commits are not fsynced; WAL still keeps the file
        consistent, a crash may lose the last commits. ``busy_timeout``: seconds a write
        waits for another connection's lock before ``database is locked``."""
        self.path = path
        self.busy_timeout = busy_timeout
        self._synchronous = "FULL" if durable else "NORMAL"
        self._local = threading.local()
        self._all: set[sqlite3.Connection] = set()  # open, in live threads (or not yet closed)
        self._lock = threading.Lock()
        self.conn.executescript(schema)  # idempotent (IF NOT EXISTS), runs its own commit

    @property
    def conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            conn.execute(f"PRAGMA cache_size=-{self.cache_kib}")
            self._local.conn = conn
            # the thread's locals go when it ends, and the holder with them: its
            # connection is closed then (from that thread, as it exits)
            self._local.holder = holder = _Holder()
            weakref.finalize(holder, self._release, conn)
            with self._lock:
                self._all.add(conn)
        return conn

    def _release(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            self._all.discard(conn)
        conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken up front so concurrent writers queue instead of failing."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled back already (a full disk)
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code == sqlite3.SQLITE_FULL:
                raise OSError(errno.ENOSPC, f"{self.path.name}: {exc}") from exc
            if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                # another process held the lock past busy_timeout: the HTTP layer's 503
                # the extended name tells a lock held too long (SQLITE_BUSY) from a stale
                # read snapshot on this connection (SQLITE_BUSY_SNAPSHOT: waiting cannot help)
                name = getattr(exc, "sqlite_errorname", "")
                raise OSError(errno.EBUSY, f"{self.path.name} is locked: {exc} ({name})") from exc
            raise

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._all)


class _Holder:
    """A thread's token for its connection (``weakref.finalize`` needs an object that
    can be referenced weakly, and a connection in a thread-local cannot be watched)."""
