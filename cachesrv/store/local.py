"""Local chunk store: append-only pack files plus an SQLite index.

Layout under ``<data>/chunks/``::

    packs/<name>.pack   records: magic | id (32) | raw size (u32) | stored size (u32) | bytes
                        (magic ``CSC1``: a zstd frame; ``CSR1``: the raw chunk)
    index.sqlite        chunk id -> (pack, offset, length, raw size, codec, frame digest)

A file per chunk costs ~180 µs of CPU each on ext4 (DESIGN.md), and a Go
cache has thousands of 175-byte files: chunks are appended to packs instead.
Each process writes its own pack (so replicas or workers sharing the
directory never interleave), and :meth:`commit` fsyncs the pack before the
index rows that point into it are committed: after a crash the index never
names a byte that is not on disk; a torn tail is garbage that fsck trims.
The records are self-describing, so the index can be rebuilt from the packs.

A writer holds an exclusive ``flock`` on the pack it appends to, so garbage
collection and fsck (``cachesrv.lifecycle``) can tell a pack still being
written from one whose writer is gone. A failed write or fsync (ENOSPC, EIO)
abandons the pack: its uncommitted records are dropped and the next put opens
a new one, so an index row never points past what was really written.

:meth:`missing` also *pins* the ids it is asked about (``pins`` table, with a
time): an upload that deduplicates against a stored chunk only references it,
and its manifest is published later; GC never sweeps a chunk pinned within
:attr:`pin_ttl` of its start, whatever process the upload runs in (the
server publishes both ``pin_ttl`` and the hard limit in the ``settings`` table,
which every process sharing the directory re-reads within a second).
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import secrets
import sqlite3
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from cachesrv.db import Database
from cachesrv.store import ChunkCorrupt, ChunkMissing, Codec, Frame, StoreStats, decode_frame

MAGIC = b"CSC1"  # a record holding a zstd frame
MAGIC_RAW = b"CSR1"  # a record holding the raw chunk
RECORD_MAGICS = {Codec.ZSTD: MAGIC, Codec.RAW: MAGIC_RAW}
CODEC_OF_MAGIC = {magic: codec for codec, magic in RECORD_MAGICS.items()}
RECORD_HEADER = struct.Struct("<4s32sII")
PACK_LIMIT = 1 << 30  # start a new pack past 1 GiB
_LOOKUP_BATCH = 500
# A pin protects a chunk from GC for this long (default; see settings); an upload
# re-pins what it references when its pins are older than half of it (lookups and
# finish), so the finish-to-publish step has pin_ttl / 2.
PIN_TTL = 600.0
_PIN_CACHE_LIMIT = 100_000
_LIMIT_RECHECK_SECONDS = 1.0
_LIMIT_RECHECK_BYTES = 4 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS packs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS chunks (
    id BLOB PRIMARY KEY,
    pack INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    raw_size INTEGER NOT NULL,
    codec INTEGER NOT NULL DEFAULT 0,  -- cachesrv.store.Codec
    digest BLOB  -- frame digest of the stored bytes; NULL for chunks stored before digests
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS totals (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals VALUES ('chunks', 0), ('stored_bytes', 0), ('raw_bytes', 0);
CREATE TABLE IF NOT EXISTS pins (
    id BLOB PRIMARY KEY,
    time REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantine (
    id BLOB NOT NULL,
    pack INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    raw_size INTEGER NOT NULL,
    reason TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_by_id ON quarantine (id);
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY,
    value
);
"""

# pack, offset of the stored bytes, their length, raw size, codec, frame digest
Location = tuple[int, int, int, int, int, bytes | None]
_LOCATION = "pack, offset, length, raw_size, codec, digest"


def _frame(data: bytes, location: Location) -> Frame:
    return Frame(data, location[3], Codec(location[4]), location[5])


class LocalChunkStore:
    def __init__(self, root: Path, pack_limit: int = PACK_LIMIT) -> None:
        self.root = root / "chunks"
        self.pack_dir = self.root / "packs"
        self.pack_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(self.root / "index.sqlite", _SCHEMA)
        self.pack_limit = pack_limit
        self._lock = threading.Lock()
        self._pending: dict[bytes, Location] = {}
        self._pack_id = 0
        self._pack_file: int | None = None  # fd of the pack this process appends to
        self._pack_size = 0
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._read_fds: dict[int, int] = {}
        self._pinned: dict[bytes, float] = {}  # ids this process pinned, and when
        self._limit: int | None = None  # hard limit on pack bytes (settings table)
        self._usage = 0  # committed pack bytes at the last check
        self._written_since_check = 0
        self._checked_at = -1e9
        self.pin_ttl = PIN_TTL
        self._init_pack_bytes()
        self._add_frame_columns()

    def _init_pack_bytes(self) -> None:
        # Stores made before pack_bytes was counted: measure once (a stat per pack).
        conn = self.db.conn
        if conn.execute("SELECT 1 FROM totals WHERE name = 'pack_bytes'").fetchone():
            return
        disk = sum(p.stat().st_size for p in self.pack_dir.glob("*.pack"))
        conn.execute("INSERT OR IGNORE INTO totals VALUES ('pack_bytes', ?)", (disk,))

    def _add_frame_columns(self) -> None:
        # Indexes made before codecs and frame digests: old rows are zstd, digest unknown.
        conn = self.db.conn
        columns = {row[1] for row in conn.execute("PRAGMA table_info(chunks)")}
        with self.db.transaction():
            if "codec" not in columns:
                conn.execute("ALTER TABLE chunks ADD COLUMN codec INTEGER NOT NULL DEFAULT 0")
            if "digest" not in columns:
                conn.execute("ALTER TABLE chunks ADD COLUMN digest BLOB")

    # -- writing -------------------------------------------------------------

    def _open_pack(self) -> None:
        name = f"{time.time_ns():x}-{os.getpid()}-{secrets.token_hex(4)}.pack"
        path = self.pack_dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # "being written": GC and fsck leave it alone
            dir_fd = os.open(self.pack_dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            with _disk_full_as_oserror(), self.db.transaction() as conn:
                cursor = conn.execute("INSERT INTO packs (name) VALUES (?)", (name,))
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        assert cursor.lastrowid is not None
        if self._pack_file is not None:
            os.close(self._pack_file)
        self._pack_id, self._pack_file, self._pack_size = cursor.lastrowid, fd, 0

    def _flush_buffer(self) -> None:
        if self._buffer and self._pack_file is not None:
            data = b"".join(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
            view = memoryview(data)
            try:
                while view:  # a short write is retried; its error, if any, abandons the pack
                    written = os.write(self._pack_file, view)
                    if written <= 0:
                        raise OSError(errno.ENOSPC, "no space left for a pack record")
                    view = view[written:]
            except OSError:
                self._abandon_pack()
                raise
            self._buffer.clear()
            self._buffered = 0

    def _abandon_pack(self) -> None:
        """After a failed write or fsync nothing uncommitted in this pack can be trusted:
        drop it (it is garbage past the last committed record) and start another."""
        if self._pack_file is not None:
            os.close(self._pack_file)
            self._pack_file = None
        self._buffer.clear()
        self._buffered = 0
        self._pending.clear()

    def _refresh_settings(self, now: float) -> None:
        conn = self.db.conn
        settings = dict(conn.execute("SELECT name, value FROM settings").fetchall())
        self._limit = int(settings.get("hard_limit") or 0) or None
        pin_ttl = settings.get("pin_ttl")
        self.pin_ttl = PIN_TTL if pin_ttl is None else float(pin_ttl)
        (self._usage,) = conn.execute(
            "SELECT value FROM totals WHERE name = 'pack_bytes'"
        ).fetchone()
        self._checked_at, self._written_since_check = now, 0

    def _check_limit(self, size: int) -> None:
        now = time.monotonic()
        if (
            now - self._checked_at > _LIMIT_RECHECK_SECONDS
            or self._written_since_check > _LIMIT_RECHECK_BYTES
        ):
            self._refresh_settings(now)
        if self._limit is not None and self._usage + self._written_since_check + size > self._limit:
            raise OSError(errno.ENOSPC, f"the store is at its hard limit of {self._limit} bytes")
        self._written_since_check += size

    def set_hard_limit(self, limit: int | None) -> None:
        """Refuse puts (ENOSPC) once the packs hold this many bytes; every process sharing
        the directory reads it from the index within a second."""
        with self.db.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO settings VALUES ('hard_limit', ?)", (limit or 0,))
        self._checked_at = -1e9

    def set_pin_ttl(self, seconds: float) -> None:
        """How long a pin protects a chunk from GC (see the module docstring)."""
        with self.db.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO settings VALUES ('pin_ttl', ?)", (seconds,))
        self._checked_at = -1e9

    def current_pin_ttl(self) -> float:
        row = self.db.conn.execute("SELECT value FROM settings WHERE name = 'pin_ttl'").fetchone()
        return PIN_TTL if row is None or row[0] is None else float(row[0])

    def put(self, chunk_id: bytes, frame: Frame) -> None:
        with self._lock:
            if chunk_id in self._pending:
                return
            if self._pack_file is None or self._pack_size >= self.pack_limit:
                self._flush_buffer()
                if self._pending:
                    self._commit_locked()
                self._open_pack()
            data = frame.data
            self._check_limit(RECORD_HEADER.size + len(data))
            magic = RECORD_MAGICS[frame.codec]
            header = RECORD_HEADER.pack(magic, chunk_id, frame.raw_size, len(data))
            offset = self._pack_size + len(header)
            self._buffer += (header, data)
            self._buffered += len(header) + len(data)
            self._pack_size = offset + len(data)
            self._pending[chunk_id] = (
                self._pack_id,
                offset,
                len(data),
                frame.raw_size,
                int(frame.codec),
                frame.digest,
            )
            if self._buffered >= 1 << 20 or len(self._buffer) >= 512:
                self._flush_buffer()

    def commit(self) -> None:
        with self._lock:
            self._commit_locked()

    def _commit_locked(self) -> None:
        if not self._pending:
            return
        self._flush_buffer()
        assert self._pack_file is not None
        try:
            os.fsync(self._pack_file)
        except OSError:
            self._abandon_pack()
            raise
        added = stored = raw = 0
        appended = sum(RECORD_HEADER.size + location[2] for location in self._pending.values())
        try:
            with _disk_full_as_oserror(), self.db.transaction() as conn:
                for chunk_id, location in self._pending.items():
                    cursor = conn.execute(
                        f"INSERT OR IGNORE INTO chunks (id, {_LOCATION}) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (chunk_id, *location),
                    )
                    if cursor.rowcount:
                        added += 1
                        stored += location[2]
                        raw += location[3]
                _add_totals(conn, added, stored, raw)
                conn.execute(
                    "UPDATE totals SET value = value + ? WHERE name = 'pack_bytes'", (appended,)
                )
        except OSError:
            self._abandon_pack()
            raise
        self._pending.clear()

    # -- reading -------------------------------------------------------------

    def missing(self, ids: Iterable[bytes]) -> set[bytes]:
        ids = set(ids)
        now = time.time()
        if time.monotonic() - self._checked_at > _LIMIT_RECHECK_SECONDS:
            with self._lock:
                self._refresh_settings(time.monotonic())
        with self._lock:
            wanted = {i for i in ids if i not in self._pending}
            stale = [i for i in ids if self._pinned.get(i, 0.0) < now - self.pin_ttl / 2]
        if stale:
            # Pin and look up in one write transaction: a GC sweep (also one) either
            # sees the pins or ran before, and then the lookup sees the chunk gone.
            conn = self.db.conn
            conn.execute("PRAGMA synchronous=NORMAL")  # pins need not survive a crash
            try:
                with self.db.transaction():
                    conn.executemany(
                        "INSERT OR REPLACE INTO pins VALUES (?, ?)", ((i, now) for i in stale)
                    )
                    found = self._lookup(wanted)
            finally:
                conn.execute("PRAGMA synchronous=FULL")
            with self._lock:
                if len(self._pinned) > _PIN_CACHE_LIMIT:
                    self._pinned.clear()
                self._pinned.update((i, now) for i in stale)
        else:
            found = self._lookup(wanted)
        return wanted - found

    def _lookup(self, wanted: set[bytes]) -> set[bytes]:
        found: set[bytes] = set()
        conn = self.db.conn
        for batch in _batched(wanted, _LOOKUP_BATCH):
            marks = ",".join("?" * len(batch))
            found.update(
                row[0]
                for row in conn.execute(f"SELECT id FROM chunks WHERE id IN ({marks})", batch)
            )
        return found

    def _locate(self, chunk_id: bytes) -> Location:
        row = self.db.conn.execute(
            f"SELECT {_LOCATION} FROM chunks WHERE id = ?", (chunk_id,)
        ).fetchone()
        if row is None:
            quarantined = self.db.conn.execute(
                "SELECT reason FROM quarantine WHERE id = ? LIMIT 1", (chunk_id,)
            ).fetchone()
            if quarantined:
                raise ChunkCorrupt(
                    f"chunk {chunk_id.hex()} is quarantined ({quarantined[0]}); "
                    "upload the object again"
                )
            raise ChunkMissing(f"chunk {chunk_id.hex()} is not stored")
        return row

    def _read_fd(self, pack: int) -> int:
        fd = self._read_fds.get(pack)
        if fd is None:
            row = self.db.conn.execute("SELECT name FROM packs WHERE id = ?", (pack,)).fetchone()
            if row is None:
                raise FileNotFoundError(f"pack {pack} was compacted away")
            fd = os.open(self.pack_dir / row[0], os.O_RDONLY)
            with self._lock:
                if pack in self._read_fds:
                    os.close(fd)
                    fd = self._read_fds[pack]
                else:
                    self._read_fds[pack] = fd
        return fd

    def read_frame(self, chunk_id: bytes) -> Frame:
        for attempt in range(3):
            location = self._locate(chunk_id)
            pack, offset, length = location[:3]
            try:
                fd = self._read_fd(pack)
            except FileNotFoundError:
                # compaction moved the chunk between the lookup and the open: look again
                if attempt == 2:
                    raise ChunkMissing(f"chunk {chunk_id.hex()}: its pack is gone") from None
                continue
            return _frame(os.pread(fd, length, offset), location)
        raise AssertionError("unreachable")

    def read_frames(self, ids: Sequence[bytes]) -> list[Frame]:
        """Frames and raw sizes of many chunks, located with one index query per batch
        (a restore of a Go cache reads thousands of tiny chunks: a query each dominated)."""
        located: dict[bytes, Location] = {}
        conn = self.db.conn
        for batch in _batched(dict.fromkeys(ids), _LOOKUP_BATCH):
            marks = ",".join("?" * len(batch))
            for chunk_id, *location in conn.execute(
                f"SELECT id, {_LOCATION} FROM chunks WHERE id IN ({marks})",
                batch,
            ):
                located[chunk_id] = tuple(location)  # type: ignore[assignment]
        frames = []
        for chunk_id in ids:
            location = located.get(chunk_id)
            try:
                if location is None:
                    raise FileNotFoundError  # not indexed (any more): the slow path says why
                pack, offset, length = location[:3]
                frames.append(_frame(os.pread(self._read_fd(pack), length, offset), location))
            except FileNotFoundError:
                frames.append(self.read_frame(chunk_id))
        return frames

    def forget_packs(self, live: set[int]) -> list[int]:
        """Stop caching read fds of packs not in ``live``; returns the fds to close later
        (a reader may still be in a pread on one: closing now could hit a reused fd)."""
        with self._lock:
            gone = [p for p in self._read_fds if p not in live]
            return [self._read_fds.pop(p) for p in gone]

    def read(self, chunk_id: bytes) -> bytes:
        return decode_frame(chunk_id, self.read_frame(chunk_id))

    def iter_ids(self) -> Iterator[bytes]:
        cursor = self.db.conn.execute("SELECT id FROM chunks")
        for (chunk_id,) in cursor:
            yield chunk_id

    def iter_locations(self) -> Iterator[tuple[bytes, Location]]:
        """Every indexed chunk with where it lives (for fsck and compaction)."""
        cursor = self.db.conn.execute(f"SELECT id, {_LOCATION} FROM chunks")
        for chunk_id, *location in cursor:
            yield chunk_id, tuple(location)  # type: ignore[misc]

    def pack_names(self) -> dict[int, str]:
        return dict(self.db.conn.execute("SELECT id, name FROM packs").fetchall())

    def delete(self, ids: Iterable[bytes]) -> int:
        removed = stored = raw = 0
        with self.db.transaction() as conn:
            for batch in _batched(set(ids), _LOOKUP_BATCH):
                marks = ",".join("?" * len(batch))
                row = conn.execute(
                    f"SELECT count(*), coalesce(sum(length), 0), coalesce(sum(raw_size), 0) "
                    f"FROM chunks WHERE id IN ({marks})",
                    batch,
                ).fetchone()
                conn.execute(f"DELETE FROM chunks WHERE id IN ({marks})", batch)
                removed, stored, raw = removed + row[0], stored + row[1], raw + row[2]
            _add_totals(conn, -removed, -stored, -raw)
        return removed

    def stats(self) -> StoreStats:
        totals = dict(self.db.conn.execute("SELECT name, value FROM totals").fetchall())
        disk = sum(p.stat().st_size for p in self.pack_dir.glob("*.pack"))
        return StoreStats(totals["chunks"], totals["stored_bytes"], totals["raw_bytes"], disk)

    def close(self) -> None:
        with self._lock:
            if self._pending:
                self._commit_locked()
            if self._pack_file is not None:
                os.close(self._pack_file)
                self._pack_file = None
            for fd in self._read_fds.values():
                os.close(fd)
            self._read_fds.clear()
        self.db.close()


def _add_totals(conn: object, chunks: int, stored: int, raw: int) -> None:
    for name, delta in (("chunks", chunks), ("stored_bytes", stored), ("raw_bytes", raw)):
        conn.execute("UPDATE totals SET value = value + ? WHERE name = ?", (delta, name))  # type: ignore[attr-defined]


class _disk_full_as_oserror:
    """SQLite reports a full disk as OperationalError; callers handle it as ENOSPC."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
            raise OSError(errno.ENOSPC, f"index: {exc}") from exc


def _batched(items: Iterable[bytes], size: int) -> Iterator[tuple[bytes, ...]]:
    iterator = iter(items)
    while batch := tuple(itertools.islice(iterator, size)):
        yield batch
