"""Local chunk store: append-only pack files plus an SQLite index.

Layout under ``<data>/chunks/``::

    packs/<name>.pack   records: MAGIC | id (32) | raw size (u32) | frame size (u32) | frame
    index.sqlite        chunk id -> (pack, offset, length, raw size)

A file per chunk costs ~180 µs of CPU each on ext4 (DESIGN.md), and a Go
cache has thousands of 175-byte files: chunks are appended to packs instead.
Each process writes its own pack (so replicas or workers sharing the
directory never interleave), and :meth:`commit` fsyncs the pack before the
index rows that point into it are committed: after a crash the index never
names a byte that is not on disk; a torn tail is garbage that fsck trims.
The records are self-describing, so the index can be rebuilt from the packs.
"""

from __future__ import annotations

import itertools
import os
import secrets
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from cachesrv.db import Database
from cachesrv.store import ChunkMissing, StoreStats, decode_frame

MAGIC = b"CSC1"
RECORD_HEADER = struct.Struct("<4s32sII")
PACK_LIMIT = 1 << 30  # start a new pack past 1 GiB
_LOOKUP_BATCH = 500

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
    raw_size INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS totals (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals VALUES ('chunks', 0), ('stored_bytes', 0), ('raw_bytes', 0);
"""

Location = tuple[int, int, int, int]  # pack, offset of the frame, frame length, raw size


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

    # -- writing -------------------------------------------------------------

    def _open_pack(self) -> None:
        name = f"{time.time_ns():x}-{os.getpid()}-{secrets.token_hex(4)}.pack"
        path = self.pack_dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        dir_fd = os.open(self.pack_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        with self.db.transaction() as conn:
            cursor = conn.execute("INSERT INTO packs (name) VALUES (?)", (name,))
        assert cursor.lastrowid is not None
        if self._pack_file is not None:
            os.close(self._pack_file)
        self._pack_id, self._pack_file, self._pack_size = cursor.lastrowid, fd, 0

    def _flush_buffer(self) -> None:
        if self._buffer and self._pack_file is not None:
            os.writev(self._pack_file, self._buffer)
            self._buffer.clear()
            self._buffered = 0

    def put(self, chunk_id: bytes, raw_size: int, frame: bytes) -> None:
        with self._lock:
            if chunk_id in self._pending:
                return
            if self._pack_file is None or self._pack_size >= self.pack_limit:
                self._flush_buffer()
                if self._pending:
                    self._commit_locked()
                self._open_pack()
            header = RECORD_HEADER.pack(MAGIC, chunk_id, raw_size, len(frame))
            offset = self._pack_size + len(header)
            self._buffer += (header, frame)
            self._buffered += len(header) + len(frame)
            self._pack_size = offset + len(frame)
            self._pending[chunk_id] = (self._pack_id, offset, len(frame), raw_size)
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
        os.fsync(self._pack_file)
        added = stored = raw = 0
        with self.db.transaction() as conn:
            for chunk_id, (pack, offset, length, raw_size) in self._pending.items():
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?, ?)",
                    (chunk_id, pack, offset, length, raw_size),
                )
                if cursor.rowcount:
                    added += 1
                    stored += length
                    raw += raw_size
            _add_totals(conn, added, stored, raw)
        self._pending.clear()

    # -- reading -------------------------------------------------------------

    def missing(self, ids: Iterable[bytes]) -> set[bytes]:
        with self._lock:
            wanted = {i for i in ids if i not in self._pending}
        if not wanted:
            return wanted
        found: set[bytes] = set()
        conn = self.db.conn
        for batch in _batched(wanted, _LOOKUP_BATCH):
            marks = ",".join("?" * len(batch))
            found.update(
                row[0]
                for row in conn.execute(f"SELECT id FROM chunks WHERE id IN ({marks})", batch)
            )
        return wanted - found

    def _locate(self, chunk_id: bytes) -> Location:
        row = self.db.conn.execute(
            "SELECT pack, offset, length, raw_size FROM chunks WHERE id = ?", (chunk_id,)
        ).fetchone()
        if row is None:
            raise ChunkMissing(f"chunk {chunk_id.hex()} is not stored")
        return row

    def _read_fd(self, pack: int) -> int:
        fd = self._read_fds.get(pack)
        if fd is None:
            (name,) = self.db.conn.execute(
                "SELECT name FROM packs WHERE id = ?", (pack,)
            ).fetchone()
            fd = os.open(self.pack_dir / name, os.O_RDONLY)
            with self._lock:
                if pack in self._read_fds:
                    os.close(fd)
                    fd = self._read_fds[pack]
                else:
                    self._read_fds[pack] = fd
        return fd

    def read_frame(self, chunk_id: bytes) -> tuple[bytes, int]:
        pack, offset, length, raw_size = self._locate(chunk_id)
        frame = os.pread(self._read_fd(pack), length, offset)
        return frame, raw_size

    def read(self, chunk_id: bytes) -> bytes:
        frame, raw_size = self.read_frame(chunk_id)
        return decode_frame(chunk_id, frame, raw_size)

    def iter_ids(self) -> Iterator[bytes]:
        cursor = self.db.conn.execute("SELECT id FROM chunks")
        for (chunk_id,) in cursor:
            yield chunk_id

    def iter_locations(self) -> Iterator[tuple[bytes, Location]]:
        """Every indexed chunk with where it lives (for fsck and compaction)."""
        cursor = self.db.conn.execute("SELECT id, pack, offset, length, raw_size FROM chunks")
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


def _batched(items: Iterable[bytes], size: int) -> Iterator[tuple[bytes, ...]]:
    iterator = iter(items)
    while batch := tuple(itertools.islice(iterator, size)):
        yield batch
