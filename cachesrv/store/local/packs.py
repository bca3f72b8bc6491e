"""Pack files of the local chunk store: the record format, what is live in each pack,
compaction, leftovers.

Records: magic | id (32) | raw size (u32) | stored size (u32) | bytes (magic ``CSC1``:
a zstd frame; ``CSR1``: the raw chunk; ``CSP1``: the raw chunk, to be compressed in the
background, after which the index points at a compressed copy and this record is
garbage). They are self-describing, so the index can be
rebuilt from the packs.

A pack is *active* while its writer holds an exclusive ``flock`` on it (see
``writer.py``); nothing here touches an active pack. A writer locks its
file before it lists it in ``packs``, so a listed pack that is not locked is
finished; an unlisted file is left alone for :data:`MIN_AGE` (a writer creates the
file a moment before it locks it).

Compaction copies a pack's live records to a new pack, fsyncs it, repoints the
index rows in one transaction (only rows still pointing at the old place), then
unlinks the old pack. A reader that already has the old pack open keeps reading
it; one that looks the chunk up afterwards finds the new place. A crash at any
point leaves either the old rows (the new pack is an unindexed leftover) or the
new ones (the old pack is an unindexed leftover); both are removed later.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import secrets
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cachesrv.db import Database
from cachesrv.store import (
    ChunkCorrupt,
    Codec,
    Frame,
    decode_frame,
    frame_digest,
    group_parts,
)

from .index import add_pack, add_pack_bytes, add_totals, quarantine

MAGIC = b"CSC1"  # a record holding a zstd frame
MAGIC_RAW = b"CSR1"  # a record holding the raw chunk
MAGIC_PENDING = b"CSP1"  # the raw chunk, its compression deferred
MAGIC_GROUP = b"CSG1"  # a grouped frame: several chunks (cachesrv.store.group_body)
RECORD_MAGICS = {
    Codec.ZSTD: MAGIC,
    Codec.RAW: MAGIC_RAW,
    Codec.PENDING: MAGIC_PENDING,
    Codec.GROUP: MAGIC_GROUP,
}
GROUP_RECORD_ID = bytes(32)  # a grouped record's id field: its members are in its table
CODEC_OF_MAGIC = {magic: codec for codec, magic in RECORD_MAGICS.items()}
RECORD_HEADER = struct.Struct("<4s32sII")
PACK_LIMIT = 1 << 30  # start a new pack past 1 GiB

MIN_AGE = 60.0  # seconds before an unindexed file may be a dead writer's
COPY_STEP = 8 << 20  # bytes copied per compaction increment


def pack_in_use(path: Path) -> bool:
    """Whether a writer holds the pack (a missing file is not in use)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)  # also drops our lock
    return False


@dataclass(frozen=True)
class PackUsage:
    pack: int
    name: str
    file_bytes: int
    live_bytes: int  # records (header + frame) the index points into
    live_chunks: int
    active: bool
    age: float

    @property
    def live_fraction(self) -> float:
        return self.live_bytes / self.file_bytes if self.file_bytes else 0.0


def new_pack_name() -> str:
    return f"{time.time_ns():x}-{os.getpid()}-{secrets.token_hex(4)}.pack"


def pack_names(db: Database) -> dict[int, str]:
    return dict(db.conn.execute("SELECT id, name FROM packs").fetchall())


def usage(db: Database, pack_dir: Path) -> list[PackUsage]:
    """Every pack the index knows, with its live bytes (one grouped scan of the index)."""
    conn = db.conn
    live = {
        pack: (count, total + count * RECORD_HEADER.size)
        for pack, count, total in conn.execute(
            "SELECT pack, count(*), sum(length) FROM chunks GROUP BY pack"
        )
    }
    now = time.time()
    result = []
    for pack, name in pack_names(db).items():
        path = pack_dir / name
        try:
            st = path.stat()
        except FileNotFoundError:
            size, age = 0, now
        else:
            size, age = st.st_size, now - st.st_mtime
        count, live_bytes = live.get(pack, (0, 0))
        result.append(PackUsage(pack, name, size, live_bytes, count, pack_in_use(path), age))
    return result


def drop_if_dead(db: Database, pack_dir: Path, pack: int, name: str) -> int | None:
    """Unlink the pack if no index row points into it and no writer holds it; returns
    the bytes freed (also taken off ``pack_bytes``), None if it stays. Nothing can point
    into it afterwards: only its own writer appends to a pack. Quarantine rows outlive
    their pack (as they do compaction): a restore still says the chunk was found corrupt,
    until a re-upload stores it anew."""
    path = pack_dir / name
    if pack_in_use(path):
        return None
    with db.transaction() as conn:
        # a row may have appeared since the caller looked: only an unused pack goes
        if conn.execute("SELECT 1 FROM chunks WHERE pack = ? LIMIT 1", (pack,)).fetchone():
            return None
        conn.execute("DELETE FROM packs WHERE id = ?", (pack,))
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        add_pack_bytes(conn, -size)
    return _unlink(path)


def remove_leftovers(db: Database, pack_dir: Path, min_age: float = MIN_AGE) -> tuple[int, int]:
    """Unlink packs no index row points into and files the index does not know, when
    no writer holds them; returns (files, bytes) removed."""
    removed = freed = 0
    known = set(pack_names(db).values())
    for entry in usage(db, pack_dir):
        if entry.live_chunks or entry.active:
            continue
        dropped = drop_if_dead(db, pack_dir, entry.pack, entry.name)
        if dropped is not None:
            freed += dropped
            removed += 1
    now = time.time()
    for path in pack_dir.iterdir():
        if path.name in known:
            continue
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:
            continue
        if age >= min_age and not pack_in_use(path):
            freed += _unlink(path)
            removed += 1
    if removed:
        fsync_dir(pack_dir)
    return removed, freed


def pack_file_bytes(pack_dir: Path) -> int:
    """Bytes of the pack files on disk now. A pack unlinked between the listing and its
    stat (GC or compaction, in this process or another) counts as gone: it is."""
    total = 0
    for path in pack_dir.glob("*.pack"):
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            pass
    return total


def recount_pack_bytes(db: Database, pack_dir: Path) -> int:
    """Set the ``pack_bytes`` total (the hard limit's measure) to what is on disk."""
    with db.transaction() as conn:  # commits wait: none lands between stat and set
        total = pack_file_bytes(pack_dir)
        conn.execute("UPDATE totals SET value = ? WHERE name = 'pack_bytes'", (total,))
    return total


def compact(db: Database, pack_dir: Path, pack: PackUsage) -> Iterator[int]:
    """Move the live records of ``pack`` to a new pack, in increments (yields bytes
    copied so far). Ends with the old pack unlinked and its bytes reclaimed. A grouped
    record some of whose members are gone is not copied whole: its live members become
    pending records (raw), for the background to compress and group again."""
    old_path = pack_dir / pack.name
    rows = db.conn.execute(
        "SELECT id, offset, length, raw_size, codec, digest, inner, span FROM chunks "
        "WHERE pack = ? ORDER BY offset, inner",
        (pack.pack,),
    ).fetchall()
    records: dict[int, list[tuple]] = {}  # frame offset -> its rows (a group's: several)
    for row in rows:
        records.setdefault(row[1], []).append(row)
    name = new_pack_name()
    new_path = pack_dir / name
    out = os.open(new_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
    try:
        fcntl.flock(out, fcntl.LOCK_EX)
        with db.transaction() as conn:
            new_pack = add_pack(conn, name)
        fsync_dir(pack_dir)
        src = os.open(old_path, os.O_RDONLY)
        moved: list[_Moved] = []
        bad: list[tuple[bytes, int, int, int]] = []
        position = copied = since_yield = 0
        try:
            for offset, members in records.items():
                for data, new_rows in _copies(src, offset, members, bad):
                    _write_all(out, data)
                    moved += [m._replace(offset=m.offset + position) for m in new_rows]
                    position += len(data)
                    copied += len(data)
                    since_yield += len(data)
                if since_yield >= COPY_STEP:
                    since_yield = 0
                    yield copied
        finally:
            os.close(src)
        os.fsync(out)
        with db.transaction() as conn:
            for m in moved:
                if conn.execute(
                    "UPDATE chunks SET pack = ?, offset = ?, length = ?, codec = ?, digest = ?, "
                    "inner = ?, span = ? WHERE id = ? AND pack = ? AND offset = ?",
                    (new_pack, *m[1:7], m.chunk_id, pack.pack, m.old_offset),
                ).rowcount:
                    add_totals(conn, 0, m.length - m.old_length, 0)
            now = time.time()
            for chunk_id, offset, length, raw_size in bad:
                # not what the index says is there: never served, never copied
                quarantine(
                    conn, chunk_id, pack.pack, offset, length, raw_size, "bad record header", now
                )
            left = conn.execute(
                "SELECT count(*) FROM chunks WHERE pack = ?", (pack.pack,)
            ).fetchone()[0]
            if not left:
                conn.execute("DELETE FROM packs WHERE id = ?", (pack.pack,))
                add_pack_bytes(conn, position - pack.file_bytes)
        if not left:
            _unlink(old_path)
            fsync_dir(pack_dir)
    finally:
        os.close(out)  # drops the lock: the new pack is an ordinary, finished pack
    yield copied


class _Moved(NamedTuple):
    """A row's new place (offset relative to the copy's start until written)."""

    chunk_id: bytes
    offset: int
    length: int
    codec: int
    digest: bytes | None
    inner: int | None
    span: int | None
    old_offset: int
    old_length: int


def _copies(
    src: int, offset: int, rows: list[tuple], bad: list[tuple[bytes, int, int, int]]
) -> Iterator[tuple[bytes, list[_Moved]]]:
    """The records that carry the live ``rows`` of one stored record at ``offset`` into a
    new pack, each with the rows' new places; rows whose record is not what the index
    says go to ``bad``."""
    chunk_id, _, length, raw_size, codec, digest, _, span = rows[0]
    stored = length if span is None else span
    record = os.pread(src, RECORD_HEADER.size + stored, offset - RECORD_HEADER.size)
    header = (
        RECORD_HEADER.unpack_from(record) if len(record) >= RECORD_HEADER.size else (b"", b"", 0, 0)
    )
    grouped = codec == Codec.GROUP
    expected = (RECORD_MAGICS[Codec(codec)], GROUP_RECORD_ID if grouped else chunk_id)
    if header[:2] != expected or header[3] != stored or len(record) != RECORD_HEADER.size + stored:
        bad.extend((r[0], offset, r[2], r[3]) for r in rows)
        return
    if not grouped or len(rows) == len(group_parts(record[RECORD_HEADER.size :])[1]):
        yield (
            record,
            [  # copied whole
                _Moved(r[0], RECORD_HEADER.size, r[2], r[4], r[5], r[6], r[7], offset, r[2])
                for r in rows
            ],
        )
        return
    body = Frame(record[RECORD_HEADER.size :], 0, Codec.GROUP, digest)
    intact = digest is None or frame_digest(body.data) == digest  # once for all members
    for member_id, _, old_length, member_raw, _, _, inner, _ in rows:
        try:
            if not intact:
                raise ChunkCorrupt("grouped frame does not match its digest")
            data = decode_frame(member_id, body._replace(raw_size=member_raw, inner=inner))
        except ChunkCorrupt:
            bad.append((member_id, offset, old_length, member_raw))
            continue
        header_bytes = RECORD_HEADER.pack(MAGIC_PENDING, member_id, len(data), len(data))
        new = _Moved(
            member_id,
            RECORD_HEADER.size,
            len(data),
            int(Codec.PENDING),
            frame_digest(data),
            None,
            None,
            offset,
            old_length,
        )
        yield header_bytes + data, [new]


@dataclass(frozen=True)
class Record:
    offset: int  # of the frame
    chunk_id: bytes
    raw_size: int
    length: int


def scan(path: Path) -> tuple[list[Record], int, int]:
    """The well-formed records of a pack from its start, the offset where they stop,
    and the file size (a torn tail is everything after the stop)."""
    records = []
    size = path.stat().st_size
    position = 0
    with open(path, "rb") as f:
        while position + RECORD_HEADER.size <= size:
            f.seek(position)
            header = f.read(RECORD_HEADER.size)
            magic, chunk_id, raw_size, length = RECORD_HEADER.unpack(header)
            end = position + RECORD_HEADER.size + length
            if magic not in CODEC_OF_MAGIC or end > size:
                break
            records.append(Record(position + RECORD_HEADER.size, chunk_id, raw_size, length))
            position = end
    return records, position, size


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _unlink(path: Path) -> int:
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size


# Appended pack bytes handed to the disk at a time, ahead of the fsync (start_writeback)
WRITEBACK_BYTES = 8 << 20
_SYNC_FILE_RANGE_WRITE = 2
_libc = ctypes.CDLL(None, use_errno=True)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing ``length`` bytes of ``fd`` from ``offset`` to the disk now, without
    waiting (Linux's ``sync_file_range(2)``; nothing where it is missing). Durability
    still comes from the fsync at a commit, which then waits for the last few MiB only:
    on a machine whose RAM lets the kernel hold a whole upload dirty, the fsyncs of a
    cold 736 MB upload (the Go cache) waited ~1 s for all of it, after its CPU work."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # its errors: the fsync's


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
