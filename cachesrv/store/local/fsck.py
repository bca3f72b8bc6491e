"""fsck of the local store: every indexed chunk against its record and id, every pack
against the index.

Problems: a chunk whose bytes do not match its id, an index row pointing outside its
pack or into a missing pack. Notes (harmless, expected after a crash): a torn tail
(bytes after the last whole record of a pack nobody writes to), records no index row
points at (an upload that never committed, a chunk GC swept), packs with no index
rows, files the index does not know. ``repair`` quarantines corrupt chunks (their rows
move to ``quarantine``) and removes the leftovers: torn tails are truncated, unindexed
packs and unknown files unlinked.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from cachesrv.db import Database
from cachesrv.store import (
    ChunkError,
    Codec,
    Frame,
    GroupMember,
    VerifyReport,
    check_frame,
    decode_frame,
    group_parts,
)

from . import packs
from .index import LOCATION, quarantine
from .packs import GROUP_RECORD_ID, RECORD_HEADER, RECORD_MAGICS

Bad = tuple[bytes, int, int, int, int, str]  # id, pack, offset, length, raw size, reason


def verify(db: Database, pack_dir: Path, repair: bool) -> VerifyReport:
    report = VerifyReport()
    bad = _check_chunks(db, pack_dir, report)
    report.corrupt = {b[0] for b in bad}
    if repair and bad:
        _quarantine(db, bad, report)
    _check_packs(db, pack_dir, report, repair)
    return report


def _check_chunks(db: Database, pack_dir: Path, report: VerifyReport) -> list[Bad]:
    names = packs.pack_names(db)
    sizes: dict[int, int | None] = {}
    fds: dict[int, int] = {}
    bad = []
    try:
        # the last group read (its members follow it): pack, offset, body, member table
        body: tuple[int, int, bytes, set[GroupMember]] | None = None
        for chunk_id, pack, offset, length, raw_size, codec, digest, inner, span in db.conn.execute(
            f"SELECT id, {LOCATION} FROM chunks ORDER BY pack, offset"
        ):
            stored_length = length if span is None else span
            report.chunks_checked += 1
            if pack not in sizes:
                path = pack_dir / names.get(pack, "?")
                try:
                    fds[pack] = os.open(path, os.O_RDONLY)
                    sizes[pack] = os.fstat(fds[pack]).st_size
                except FileNotFoundError:
                    sizes[pack] = None
            size = sizes[pack]
            reason = None
            if size is None:
                reason = f"its pack {names.get(pack, pack)} is missing"
            elif offset + stored_length > size:
                reason = f"it lies past the end of pack {names[pack]}"
            else:
                header = os.pread(fds[pack], RECORD_HEADER.size, offset - RECORD_HEADER.size)
                if body is not None and body[:2] == (pack, offset):
                    frame = body[2]
                else:
                    frame = os.pread(fds[pack], stored_length, offset)
                    body = None
                try:
                    magic, named, _, _ = RECORD_HEADER.unpack(header)
                    grouped = codec == Codec.GROUP
                    if named != (GROUP_RECORD_ID if grouped else chunk_id):
                        raise ChunkError("its record header names another chunk")
                    if magic != RECORD_MAGICS[Codec(codec)]:
                        raise ChunkError("its record header says another codec")
                    stored = Frame(frame, raw_size, Codec(codec), digest, inner or 0)
                    if digest is not None and body is None:  # a group's: with its first member
                        check_frame(chunk_id, stored)  # what zstd restores rely on
                    if grouped:
                        if body is None:
                            body = (pack, offset, frame, set(group_parts(frame)[1]))
                        if GroupMember(chunk_id, raw_size, inner) not in body[3]:
                            raise ChunkError("its grouped frame's table does not list it there")
                    decode_frame(chunk_id, stored)  # and what the bytes really are
                except ChunkError as exc:
                    reason = str(exc)
            if reason is not None:
                report.problems.append(f"chunk {chunk_id.hex()}: {reason}")
                bad.append((chunk_id, pack, offset, length, raw_size, reason))
    finally:
        for fd in fds.values():
            os.close(fd)
    return bad


def _quarantine(db: Database, bad: list[Bad], report: VerifyReport) -> None:
    now = time.time()
    with db.transaction() as conn:
        for chunk_id, pack, offset, length, raw_size, reason in bad:
            if quarantine(conn, chunk_id, pack, offset, length, raw_size, reason, now):
                report.repaired.append(f"quarantined chunk {chunk_id.hex()}")


def _check_packs(db: Database, pack_dir: Path, report: VerifyReport, repair: bool) -> None:
    conn = db.conn
    ends = dict(
        conn.execute(
            "SELECT pack, max(offset + coalesce(span, length)) FROM chunks GROUP BY pack"
        ).fetchall()
    )
    indexed = {(pack, offset) for pack, offset in conn.execute("SELECT pack, offset FROM chunks")}
    known = packs.pack_names(db)
    for pack, name in known.items():
        path = pack_dir / name
        if not path.exists():
            if pack in ends:
                continue  # a problem already, from the chunk check
            report.notes.append(f"pack {name}: listed but gone, no chunk in it")
            if repair:
                with db.transaction() as c:
                    c.execute("DELETE FROM packs WHERE id = ?", (pack,))
                report.repaired.append(f"forgot pack {name}")
            continue
        if packs.pack_in_use(path):
            continue  # a writer is appending: its tail is not torn, just unfinished
        records, stop, size = packs.scan(path)
        unindexed = sum(1 for r in records if (pack, r.offset) not in indexed)
        if pack not in ends:
            report.notes.append(f"pack {name}: no index row points into it ({size} bytes)")
            continue
        if unindexed:
            report.notes.append(f"pack {name}: {unindexed} records no index row points at")
        end = ends[pack]
        if end < size:
            what = "torn tail" if stop < size else "unindexed tail"
            report.notes.append(f"pack {name}: {what} of {size - end} bytes")
            if repair:
                with open(path, "r+b") as f:
                    f.truncate(end)
                    os.fsync(f.fileno())
                report.repaired.append(f"truncated pack {name} to {end} bytes")
    on_disk = {p.name for p in pack_dir.iterdir()}
    for leftover in sorted(on_disk - set(known.values())):
        report.notes.append(f"file {leftover}: not a known pack")
    if repair:
        files, freed = packs.remove_leftovers(db, pack_dir, min_age=5.0)
        if files:
            report.repaired.append(f"removed {files} leftover files ({freed} bytes)")
        packs.recount_pack_bytes(db, pack_dir)
