"""The SQLite index of the local chunk store: where each chunk lives, totals, pins,
quarantine. ``chunks/index.sqlite``, shared by every process using the directory."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from cachesrv.db import Database

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
    digest BLOB,  -- frame digest of the stored bytes; NULL for chunks stored before digests
    inner INTEGER,  -- grouped chunks (codec 3): offset in the decoded group; else NULL
    span INTEGER  -- grouped chunks: bytes of the group body at offset (length: their share)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS totals (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals VALUES ('chunks', 0), ('stored_bytes', 0), ('raw_bytes', 0);
CREATE TABLE IF NOT EXISTS pins (
    id BLOB PRIMARY KEY,
    time REAL NOT NULL,
    expires REAL  -- NULL: written before pins carried their expiry (see pins.py)
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
CREATE INDEX IF NOT EXISTS chunks_pending ON chunks (pack, offset) WHERE codec = 2;  -- PENDING
"""

# pack, offset of the stored bytes, their length (a grouped chunk: its share of the
# group's), raw size, codec, frame digest, offset in the decoded group and the group
# body's length (None unless grouped)
Location = tuple[int, int, int, int, int, bytes | None, int | None, int | None]
LOCATION = "pack, offset, length, raw_size, codec, digest, inner, span"


def extent(location: Location) -> tuple[int, int]:
    """Where a chunk's stored bytes are read: (offset, length) in its pack."""
    span = location[7]
    return location[1], location[2] if span is None else span


LOOKUP_BATCH = 500


def open_index(root: Path, pack_dir: Path) -> Database:
    """The index, created or brought up to date (stores of every earlier version open)."""
    db = Database(root / "index.sqlite", _SCHEMA)
    conn = db.conn
    with db.transaction():
        columns = {row[1] for row in conn.execute("PRAGMA table_info(chunks)")}
        # Indexes made before codecs and frame digests: old rows are zstd, digest unknown.
        if "codec" not in columns:
            conn.execute("ALTER TABLE chunks ADD COLUMN codec INTEGER NOT NULL DEFAULT 0")
        if "digest" not in columns:
            conn.execute("ALTER TABLE chunks ADD COLUMN digest BLOB")
        if "inner" not in columns:  # made before grouped frames: none is grouped
            conn.execute("ALTER TABLE chunks ADD COLUMN inner INTEGER")
            conn.execute("ALTER TABLE chunks ADD COLUMN span INTEGER")
        if "expires" not in {row[1] for row in conn.execute("PRAGMA table_info(pins)")}:
            conn.execute("ALTER TABLE pins ADD COLUMN expires REAL")
        # Stores made before pack_bytes was counted: measure once (a stat per pack).
        if not conn.execute("SELECT 1 FROM totals WHERE name = 'pack_bytes'").fetchone():
            from .packs import pack_file_bytes  # packs imports this module

            disk = pack_file_bytes(pack_dir)
            conn.execute("INSERT OR IGNORE INTO totals VALUES ('pack_bytes', ?)", (disk,))
    return db


def add_totals(conn: sqlite3.Connection, chunks: int, stored: int, raw: int) -> None:
    for name, delta in (("chunks", chunks), ("stored_bytes", stored), ("raw_bytes", raw)):
        conn.execute("UPDATE totals SET value = value + ? WHERE name = ?", (delta, name))


def add_pack(conn: sqlite3.Connection, name: str) -> int:
    """A new pack's row, under an id no pack ever had: processes keep read handles by id,
    and SQLite would hand a deleted highest id out again (to a pack whose offsets then
    read the old file's bytes). Within the caller's transaction."""
    (last,) = conn.execute(
        "SELECT max(coalesce((SELECT max(id) FROM packs), 0), "
        "coalesce((SELECT value FROM totals WHERE name = 'last_pack'), 0))"
    ).fetchone()
    conn.execute("INSERT INTO packs (id, name) VALUES (?, ?)", (last + 1, name))
    conn.execute("INSERT OR REPLACE INTO totals VALUES ('last_pack', ?)", (last + 1,))
    return int(last + 1)


def add_pack_bytes(conn: sqlite3.Connection, delta: int) -> None:
    conn.execute("UPDATE totals SET value = value + ? WHERE name = 'pack_bytes'", (delta,))


def pack_bytes(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM totals WHERE name = 'pack_bytes'").fetchone()
    return int(row[0]) if row else 0


def lookup(conn: sqlite3.Connection, wanted: Iterable[bytes]) -> set[bytes]:
    """The ids among ``wanted`` that have an index row."""
    found: set[bytes] = set()
    for batch in batched(wanted, LOOKUP_BATCH):
        marks = ",".join("?" * len(batch))
        found.update(
            row[0] for row in conn.execute(f"SELECT id FROM chunks WHERE id IN ({marks})", batch)
        )
    return found


def quarantine(
    conn: sqlite3.Connection,
    chunk_id: bytes,
    pack: int,
    offset: int,
    length: int,
    raw_size: int,
    reason: str,
    now: float,
) -> bool:
    """Move a chunk's row (if it still points there) to ``quarantine``: never served,
    reported missing, so a re-upload stores it again. Within the caller's transaction."""
    if not conn.execute(
        "DELETE FROM chunks WHERE id = ? AND pack = ? AND offset = ?", (chunk_id, pack, offset)
    ).rowcount:
        return False
    conn.execute(
        "INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?)",
        (chunk_id, pack, offset, length, raw_size, reason, now),
    )
    add_totals(conn, -1, -length, -raw_size)
    return True


def batched(items: Iterable[bytes], size: int) -> Iterator[tuple[bytes, ...]]:
    iterator = iter(items)
    while batch := tuple(itertools.islice(iterator, size)):
        yield batch
