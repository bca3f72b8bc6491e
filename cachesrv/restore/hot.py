"""The hot cache: recent objects kept decoded on disk, in verified spans, for fast restores.

DESIGN.md's read-path numbers: a restore that decompresses every byte tops out
near 0.55 of hypercorn's send ceiling on two cores. So the bytes of recently
written and read objects are also kept *as the client gets them*, in spans of
:data:`SPAN` bytes at fixed offsets of the object, each with a digest taken
when it was written. Serving a hot span is one digest check per MiB through a
mapping of the page cache, then ``sendfile(2)`` (:class:`SpanFiles`; a ``pread``
where the connection cannot send files), with no per-chunk step: many tiny tar
members restore as fast as a few big ones.

The span digest is XXH3-128 (:func:`span_digest`), not the store's BLAKE3: it
guards against accidents (a torn write, a flipped bit, a truncated segment), which
a 128-bit hash misses with odds of 2^-128, and it costs 0.04 ms per MiB where
BLAKE3 costs 0.17-0.39, on the event loop of the process that sends every hot
restore. A cryptographic digest would add nothing here: whoever can rewrite a
segment can rewrite the index beside it. The chunk store keeps its BLAKE3 ids,
checked on every decode and by ``fsck``.

Layout under ``<data>/hot/``::

    segments/<name>.seg   spans appended by one process at a time (its own file)
    index.sqlite          (object digest, span index) -> (segment, offset, length, digest)

Keyed by the object's digest (its ETag), so equal bytes under any name or
version share their spans. Restores that miss add the spans they decoded; after
each upload a warm-up job decodes the new version in the background (writing it
on the upload path halved warm upload speed: the page-cache writes throttle), so
the first restore of it is hot already. Everything here can be lost at any time without
loss: nothing is fsynced, a span that fails its digest (a torn write after a
crash, a flipped bit) is a miss that drops the row, and the restore reads the
chunk store instead, which verifies every chunk against its id. The cache is
bounded by a byte limit: whole segments are dropped oldest first. Its bytes
count in ``disk_bytes`` and ``hot_bytes``, not in the store's stored bytes.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import secrets
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import xxhash

from cachesrv.db import Database

log = logging.getLogger("cachesrv.hot")

SPAN = 1 << 20  # bytes of an object per span: one pread, one digest, one send
SEGMENT_BYTES = 64 << 20  # a process starts a new segment past this
_FAULT_AROUND = 64 << 10  # Linux maps this much around a page fault (fault_around_bytes)

# The index's format, in SQLite's user_version (2: XXH3-128 span digests; 0 or 1: the
# BLAKE3-128 digests of before). An index of another version is emptied when opened.
_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS spans (
    object BLOB NOT NULL,
    idx INTEGER NOT NULL,
    segment INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    digest BLOB NOT NULL,
    PRIMARY KEY (object, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS spans_by_segment ON spans (segment);
"""


def span_digest(data: bytes | bytearray | memoryview) -> bytes:
    """The digest a span is recorded with and checked against (see the module's text)."""
    return xxhash.xxh3_128_digest(data)


@dataclass(frozen=True)
class HotSpan:
    """Where one span of an object lies, and the digest it must match."""

    segment: int
    offset: int
    length: int
    digest: bytes


@dataclass(frozen=True)
class Written:
    """A span appended but not yet recorded (see :meth:`HotCache.record`)."""

    index: int
    span: HotSpan


@dataclass(frozen=True)
class FilePart:
    """Bytes ``[offset, offset + count)`` of the open file ``fd``, checked against their
    span's digest, for a connection that sends files itself (``sendfile(2)``, see
    :mod:`cachesrv.http.zerocopy`). The descriptor is :class:`SpanFiles`' own."""

    fd: int
    offset: int
    count: int

    def __len__(self) -> int:
        return self.count

    def part(self, start: int, stop: int) -> FilePart:
        """Bytes ``[start, stop)`` of this part."""
        return FilePart(self.fd, self.offset + start, stop - start)


class _CacheRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _CacheStat(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in ("cache", "dirty", "writeback", "evicted", "recently_evicted")
    ]


class _PageCache:
    """Whether a range of a file is all in the page cache: Linux's ``cachestat(2)`` (6.5
    and later; ~6 µs per MiB span from here, 1.3 of it the call, where ``mincore(2)``
    over a mapping cost ~10). Where it is missing every answer is False, and the caller
    reads in a thread."""

    CACHESTAT = 451  # the call's number, the same on every architecture

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = getattr(libc, "syscall", None)
        self.works = self._syscall is not None and sys.platform == "linux"

    def resident(self, fd: int, offset: int, length: int) -> bool:
        if not self.works:
            return False
        assert self._syscall is not None
        stat = _CacheStat()
        start = offset - offset % mmap.PAGESIZE
        span = _CacheRange(start, offset + length - start)
        if self._syscall(self.CACHESTAT, fd, ctypes.byref(span), ctypes.byref(stat), 0) != 0:
            if ctypes.get_errno() == errno.ENOSYS:
                self.works = False  # an older kernel: ask no more
            return False
        return bool(stat.cache == -(-span.len // mmap.PAGESIZE))


class HotCache:
    """Thread-safe; one per process. ``limit`` bounds the bytes of all segments."""

    def __init__(self, root: Path, limit: int) -> None:
        self.root = root / "hot"
        self.segment_dir = self.root / "segments"
        self.segment_dir.mkdir(parents=True, exist_ok=True)
        self.limit = limit
        self.db = Database(self.root / "index.sqlite", _SCHEMA, durable=False)
        self._lock = threading.Lock()
        self._segment: int | None = None  # the segment this process appends to
        self._fd: int | None = None
        self._size = 0
        self._read_fds: dict[int, int] = {}
        # :meth:`read` (restore jobs in worker processes) maps segments: a span is
        # hashed and sent from the page cache without a copy (a pread of each span cost
        # as much as its digest). The server's own hot restores map with SpanFiles (each
        # its own descriptor, for sendfile), or read with :meth:`read_bytes`.
        # Segment files only ever grow and are never rewritten, so a mapped byte never
        # changes once written; a grown segment is mapped again.
        self._maps: dict[int, mmap.mmap] = {}
        self._page_cache = _PageCache()
        self._upgrade()

    def _upgrade(self) -> None:
        """Empty an index written by another version of this code (its digests differ)."""
        with self.db.transaction() as conn:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version == _VERSION:
                return
            names = [name for (name,) in conn.execute("SELECT name FROM segments")]
            conn.execute("DELETE FROM spans")
            conn.execute("DELETE FROM segments")
            conn.execute(f"PRAGMA user_version = {_VERSION}")
        for name in names:
            (self.segment_dir / name).unlink(missing_ok=True)
        if names:
            log.info("hot cache: dropped %d segments of index version %d", len(names), version)

    # -- reading ---------------------------------------------------------------

    def lookup(self, digest: bytes) -> dict[int, HotSpan]:
        """Every recorded span of the object with this digest, by span index."""
        rows = self.db.conn.execute(
            "SELECT idx, segment, offset, length, digest FROM spans WHERE object = ?", (digest,)
        ).fetchall()
        return {idx: HotSpan(*location) for idx, *location in rows}

    def holds(self, digest: bytes, size: int) -> bool:
        """Whether every span of the object (``size`` bytes) is recorded here."""
        known = self.lookup(digest)
        return all(index in known for index in range((size + SPAN - 1) // SPAN))

    def read(self, digest: bytes, index: int, span: HotSpan) -> memoryview | None:
        """The span's bytes, verified; None when it is gone or damaged (read the store)."""
        try:
            data = self._view(span)
        except (OSError, ValueError):
            data = memoryview(b"")  # segment dropped meanwhile, or shorter: a miss
        return data if self._checked(digest, index, span, data, len(data)) else None

    def read_bytes(self, digest: bytes, index: int, span: HotSpan) -> bytes | None:
        """:meth:`read` as one ``bytes`` object, for a process that hands the span to
        hypercorn: it sends ``bytes`` as they are and copies anything else, so the
        ``pread`` here is the span's only copy (a mapping is not used: mapped pages
        count as the process's memory). It may wait for the disk: an event loop calls it
        only for a span :meth:`in_page_cache` found there, and a thread for the rest."""
        try:
            data = os.pread(self._read_fd(span.segment), span.length, span.offset)
        except (OSError, sqlite3.Error):
            data = b""  # segment dropped meanwhile: a miss
        return data if self._checked(digest, index, span, data, len(data)) else None

    def in_page_cache(self, span: HotSpan) -> bool:
        """Whether every byte of the span is in the page cache now (a read of it will
        not wait for the disk, unless the kernel drops it first); False if unknown."""
        try:
            fd = self._read_fd(span.segment)
        except (OSError, sqlite3.Error):
            return False
        return self._page_cache.resident(fd, span.offset, span.length)

    @property
    def knows_the_page_cache(self) -> bool:
        """Whether :meth:`in_page_cache` can answer True here (the kernel has the call)."""
        return self._page_cache.works

    def _checked(
        self,
        digest: bytes,
        index: int,
        span: HotSpan,
        data: bytes | bytearray | memoryview,
        got: int,
    ) -> bool:
        """Whether ``got`` bytes of ``data`` are the whole span and match its digest; if
        not, the span is forgotten (the restore reads the store)."""
        if got == span.length and span_digest(data) == span.digest:
            return True
        if got:
            log.warning("hot span %s/%d does not match its digest; dropped", digest.hex(), index)
        self._forget(digest, index, span)
        return False

    def release(self, span: HotSpan) -> None:
        """Unmap a served span's pages from this process (they stay in the page cache):
        mapped pages count as the process's memory, and memory is one budget."""
        mapping = self._maps.get(span.segment)
        if mapping is not None:
            _unmap_pages(mapping, span)

    def _view(self, span: HotSpan) -> memoryview:
        end = span.offset + span.length
        mapping = self._maps.get(span.segment)
        if mapping is None or len(mapping) < end:
            fd = self._read_fd(span.segment)
            size = os.fstat(fd).st_size
            if size < end:
                return memoryview(b"")  # recorded but never written whole (a crash)
            mapping = mmap.mmap(fd, size, prot=mmap.PROT_READ)
            with self._lock:  # a replaced mapping is unmapped when its last view goes
                self._maps[span.segment] = mapping
        return memoryview(mapping)[span.offset : end]

    def _read_fd(self, segment: int) -> int:
        fd = self._read_fds.get(segment)
        if fd is None:
            fd = self._open_segment(segment)
            with self._lock:
                if segment in self._read_fds:
                    os.close(fd)
                    fd = self._read_fds[segment]
                else:
                    self._read_fds[segment] = fd
        return fd

    def _open_segment(self, segment: int) -> int:
        """A new read-only descriptor of the segment's file."""
        row = self.db.conn.execute("SELECT name FROM segments WHERE id = ?", (segment,)).fetchone()
        if row is None:
            raise FileNotFoundError(f"hot segment {segment} was dropped")
        return os.open(self.segment_dir / row[0], os.O_RDONLY)

    def _forget(self, digest: bytes, index: int, span: HotSpan) -> None:
        try:
            with self.db.transaction() as conn:
                conn.execute(
                    "DELETE FROM spans WHERE object = ? AND idx = ? AND segment = ? AND offset = ?",
                    (digest, index, span.segment, span.offset),
                )
        except sqlite3.Error:
            pass  # a cache: the next read finds it bad again

    # -- writing ---------------------------------------------------------------

    def append(self, index: int, data: bytes | bytearray | memoryview) -> Written | None:
        """Write one span to this process's segment; None if it could not be written
        (a full disk: the cache is an optimisation, never a reason to fail)."""
        digest = span_digest(data)
        with self._lock:
            try:
                if self._fd is None or self._size >= SEGMENT_BYTES:
                    self._rotate()
                assert self._fd is not None and self._segment is not None
                offset = self._size
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
                self._size += len(data)
            except (OSError, sqlite3.Error) as exc:
                log.warning("hot cache: span not written: %s", exc)
                self._close_segment()
                return None
            return Written(index, HotSpan(self._segment, offset, len(data), digest))

    def record(self, digest: bytes, written: list[Written]) -> None:
        """Make appended spans findable (only those whose segment still exists)."""
        if not written:
            return
        with self._lock:  # lock order: this lock, then the database, never the reverse
            current = (self._size, self._segment)
        try:
            with self.db.transaction() as conn:
                conn.executemany(
                    "INSERT OR REPLACE INTO spans SELECT ?, ?, ?, ?, ?, ? "
                    "WHERE EXISTS (SELECT 1 FROM segments WHERE id = ?)",
                    ((digest, w.index, *_fields(w.span), w.span.segment) for w in written),
                )
                if current[1] is not None:
                    conn.execute("UPDATE segments SET bytes = ? WHERE id = ?", current)
        except sqlite3.Error as exc:
            log.warning("hot cache: spans not recorded: %s", exc)

    def trim(self, keep: int) -> None:
        """Drop segments, oldest first, until at most ``keep`` bytes are left (the store
        needs the room: the hot cache yields to the hard limit, it never causes a 507)."""
        with self._lock:
            self._close_segment()
            with self.db.transaction() as conn:
                self._drop_oldest(conn, room=0, limit=keep)

    def _rotate(self) -> None:
        self._close_segment()
        name = f"{time.time_ns():x}-{os.getpid()}-{secrets.token_hex(4)}.seg"
        with self.db.transaction() as conn:
            self._drop_oldest(conn, room=SEGMENT_BYTES, limit=self.limit)
            cursor = conn.execute("INSERT INTO segments (name) VALUES (?)", (name,))
        assert cursor.lastrowid is not None
        self._fd = os.open(
            self.segment_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644
        )
        self._segment, self._size = cursor.lastrowid, 0

    def _drop_oldest(self, conn: sqlite3.Connection, room: int, limit: int) -> None:
        """Drop whole segments, oldest first, until ``room`` more bytes fit ``limit``.
        A writer still appending to a dropped segment records nothing more into it."""
        rows = conn.execute("SELECT id, name, bytes FROM segments ORDER BY id").fetchall()
        total = sum(size for _, _, size in rows)
        for segment, name, size in rows:
            if total + room <= limit:
                break
            conn.execute("DELETE FROM spans WHERE segment = ?", (segment,))
            conn.execute("DELETE FROM segments WHERE id = ?", (segment,))
            (self.segment_dir / name).unlink(missing_ok=True)
            total -= size
        live = {row[0] for row in conn.execute("SELECT id FROM segments")}
        for segment in [s for s in self._read_fds if s not in live]:
            os.close(self._read_fds.pop(segment))  # a mapping stays valid without its fd
            self._maps.pop(segment, None)

    def _close_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._segment = None

    # -- numbers ---------------------------------------------------------------

    def hot_bytes(self) -> int:
        (total,) = self.db.conn.execute("SELECT coalesce(sum(bytes), 0) FROM segments").fetchone()
        with self._lock:
            if self._segment is not None:  # this process's segment, counted as it grows
                row = self.db.conn.execute(
                    "SELECT bytes FROM segments WHERE id = ?", (self._segment,)
                ).fetchone()
                total += self._size - (row[0] if row else self._size)
        return int(total)

    def close(self) -> None:
        with self._lock:
            self._close_segment()
            for fd in self._read_fds.values():
                os.close(fd)
            self._read_fds.clear()
            self._maps.clear()
        self.db.close()


class SpanFiles:
    """One restore's own descriptors of the segments it sends spans from, for
    ``sendfile(2)`` (:class:`FilePart`): a descriptor the cache closes when it drops a
    segment must not be what a send is still reading.

    Each span is checked against its digest through a mapping of its segment, pages
    that are in the page cache already (no copy, where a ``pread`` copied the MiB:
    ~0.07 ms per MiB against ~0.1), and unmapped again at once, since mapped pages count
    as this process's memory. ``sendfile`` then sends those cached pages. Segments are
    never rewritten, so the pages hold the checked bytes; only if the kernel evicted a
    page between the check and the send, and the disk under it had changed meanwhile,
    would the send read other bytes. Not thread-safe: one restore, one span at a time.
    """

    def __init__(self, hot: HotCache) -> None:
        self.hot = hot
        # the segment of the span sent last: one descriptor per restore (the Go cache's
        # v2 spans lie in ~16 segments, nearly all in order; a hundred restores holding
        # a descriptor for each would be past a default limit of 1,024 files)
        self._segment_id = -1
        self._fd = -1
        self._mapping: mmap.mmap | None = None

    def verified(self, digest: bytes, index: int, span: HotSpan) -> FilePart | None:
        """The span as a :class:`FilePart` once it matches its digest; None when it is
        gone or damaged (it is dropped; read the store). May wait for the disk, like
        :meth:`HotCache.read_bytes`. The part is valid until the next call."""
        end = span.offset + span.length
        try:
            mapping = self._map(span.segment, end)
        except (OSError, ValueError, sqlite3.Error):
            mapping = None  # dropped meanwhile: a miss
        if mapping is None or len(mapping) < end:  # or recorded but never written whole
            self.hot._checked(digest, index, span, b"", 0)
            return None
        with memoryview(mapping)[span.offset : end] as view:
            good = self.hot._checked(digest, index, span, view, span.length)
        _unmap_pages(mapping, span)
        return FilePart(self._fd, span.offset, span.length) if good else None

    def _map(self, segment: int, end: int) -> mmap.mmap | None:
        if segment != self._segment_id:
            self.close()
            self._fd = self.hot._open_segment(segment)
            self._segment_id = segment
        if self._mapping is None or len(self._mapping) < end:
            if self._mapping is not None:  # a segment still being written, grown since
                self._mapping.close()
                self._mapping = None
            size = os.fstat(self._fd).st_size
            self._mapping = mmap.mmap(self._fd, size, prot=mmap.PROT_READ) if size else None
        return self._mapping

    def close(self) -> None:
        if self._mapping is not None:
            self._mapping.close()
            self._mapping = None
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._segment_id = -1, -1


def _unmap_pages(mapping: mmap.mmap, span: HotSpan) -> None:
    """Unmap a span's pages from this process (they stay in the page cache)."""
    # a fault maps the cached pages around it too (the kernel's fault-around, 64 KiB
    # aligned): those of the neighbouring spans, which this restore may never read
    start = span.offset - span.offset % _FAULT_AROUND
    end = min(-(-(span.offset + span.length) // _FAULT_AROUND) * _FAULT_AROUND, len(mapping))
    try:
        mapping.madvise(mmap.MADV_DONTNEED, start, end - start)
    except (OSError, ValueError):
        pass  # only memory accounting: the bytes are right either way


def _fields(span: HotSpan) -> tuple[int, int, int, bytes]:
    return span.segment, span.offset, span.length, span.digest
