"""fsck: verify every stored chunk against its id and every name's references.

Problems (exit non-zero): a chunk whose bytes do not match its id, an index row
pointing outside its pack or into a missing pack, a name whose manifest is gone or
undecodable, a name referencing a chunk that is not stored (or quarantined).

Notes (harmless, expected after a crash): a torn tail (bytes after the last whole
record of a pack nobody writes to), records no index row points at (an upload that
never committed, a chunk GC swept), packs with no index rows, files the index does
not know. ``repair`` quarantines corrupt chunks (their rows move to ``quarantine``:
never served, reported missing so a re-upload stores them again) and removes the
leftovers: torn tails are truncated, unindexed packs and unknown files unlinked.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from cachesrv.catalog import NAMESPACES, Catalog
from cachesrv.manifest import Manifest, ManifestError
from cachesrv.store import ChunkError, Codec, Frame, check_frame, decode_frame
from cachesrv.store.local import RECORD_HEADER, RECORD_MAGICS, LocalChunkStore

from . import packs


@dataclass
class FsckReport:
    chunks_checked: int = 0
    names_checked: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, object]:
        return {
            "clean": self.clean,
            "chunks_checked": self.chunks_checked,
            "names_checked": self.names_checked,
            "problems": self.problems,
            "notes": self.notes,
            "repaired": self.repaired,
        }


def fsck(store: LocalChunkStore, catalog: Catalog, repair: bool = False) -> FsckReport:
    report = FsckReport()
    bad = _check_chunks(store, report)
    if repair and bad:
        _quarantine(store, bad, report)
    _check_packs(store, report, repair)
    _check_names(store, catalog, report, {b[0] for b in bad})
    return report


def _check_chunks(
    store: LocalChunkStore, report: FsckReport
) -> list[tuple[bytes, int, int, int, int, str]]:
    names = store.pack_names()
    sizes: dict[int, int | None] = {}
    fds: dict[int, int] = {}
    bad = []
    try:
        for chunk_id, (pack, offset, length, raw_size, codec, digest) in store.iter_locations():
            report.chunks_checked += 1
            if pack not in sizes:
                path = store.pack_dir / names.get(pack, "?")
                try:
                    fds[pack] = os.open(path, os.O_RDONLY)
                    sizes[pack] = os.fstat(fds[pack]).st_size
                except FileNotFoundError:
                    sizes[pack] = None
            size = sizes[pack]
            reason = None
            if size is None:
                reason = f"its pack {names.get(pack, pack)} is missing"
            elif offset + length > size:
                reason = f"it lies past the end of pack {names[pack]}"
            else:
                header = os.pread(fds[pack], RECORD_HEADER.size, offset - RECORD_HEADER.size)
                frame = os.pread(fds[pack], length, offset)
                try:
                    magic, named, _, _ = RECORD_HEADER.unpack(header)
                    if named != chunk_id:
                        raise ChunkError("its record header names another chunk")
                    if magic != RECORD_MAGICS[Codec(codec)]:
                        raise ChunkError("its record header says another codec")
                    stored = Frame(frame, raw_size, Codec(codec), digest)
                    if digest is not None:
                        check_frame(chunk_id, stored)  # what zstd restores rely on
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


def _quarantine(
    store: LocalChunkStore, bad: list[tuple[bytes, int, int, int, int, str]], report: FsckReport
) -> None:
    now = time.time()
    with store.db.transaction() as conn:
        for chunk_id, pack, offset, length, raw_size, reason in bad:
            if conn.execute(
                "DELETE FROM chunks WHERE id = ? AND pack = ? AND offset = ?",
                (chunk_id, pack, offset),
            ).rowcount:
                conn.execute(
                    "INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (chunk_id, pack, offset, length, raw_size, reason, now),
                )
                packs._add_totals(conn, -1, -length, -raw_size)
                report.repaired.append(f"quarantined chunk {chunk_id.hex()}")


def _check_packs(store: LocalChunkStore, report: FsckReport, repair: bool) -> None:
    conn = store.db.conn
    ends = dict(
        conn.execute("SELECT pack, max(offset + length) FROM chunks GROUP BY pack").fetchall()
    )
    indexed = {(pack, offset) for pack, offset in conn.execute("SELECT pack, offset FROM chunks")}
    known = store.pack_names()
    for pack, name in known.items():
        path = store.pack_dir / name
        if not path.exists():
            if pack in ends:
                continue  # a problem already, from the chunk check
            report.notes.append(f"pack {name}: listed but gone, no chunk in it")
            if repair:
                with store.db.transaction() as c:
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
    on_disk = {p.name for p in store.pack_dir.iterdir()}
    for leftover in sorted(on_disk - set(known.values())):
        report.notes.append(f"file {leftover}: not a known pack")
    if repair:
        files, freed = packs.remove_leftovers(store, min_age=5.0)
        if files:
            report.repaired.append(f"removed {files} leftover files ({freed} bytes)")
        packs.recount_pack_bytes(store)


def _check_names(
    store: LocalChunkStore, catalog: Catalog, report: FsckReport, corrupt: set[bytes]
) -> None:
    conn = catalog.db.conn
    seen: dict[bytes, str | None] = {}  # manifest -> its problem, or None
    for namespace, (table, column) in NAMESPACES.items():
        for name, manifest_id in conn.execute(f"SELECT {column}, manifest FROM {table}"):
            report.names_checked += 1
            if manifest_id not in seen:
                seen[manifest_id] = _check_manifest(store, catalog, manifest_id, corrupt)
            problem = seen[manifest_id]
            if problem is not None:
                report.problems.append(f"{namespace} {name!r}: {problem}")


def _check_manifest(
    store: LocalChunkStore, catalog: Catalog, manifest_id: bytes, corrupt: set[bytes]
) -> str | None:
    row = catalog.db.conn.execute(
        "SELECT body FROM manifests WHERE id = ?", (manifest_id,)
    ).fetchone()
    if row is None:
        return f"manifest {manifest_id.hex()} is missing"
    try:
        manifest = Manifest.decode(row[0])
    except ManifestError as exc:
        return f"manifest {manifest_id.hex()}: {exc}"
    ids = manifest.chunk_ids()
    damaged = ids & corrupt
    if damaged:
        return f"{len(damaged)} of its chunks are corrupt (e.g. {min(damaged).hex()})"
    lost = ids - store._lookup(ids)  # a plain lookup: missing() would pin them all
    if not lost:
        return None
    sample = sorted(lost)[:500]
    quarantined = store.db.conn.execute(
        f"SELECT count(DISTINCT id) FROM quarantine WHERE id IN ({','.join('?' * len(sample))})",
        sample,
    ).fetchone()[0]
    why = f", {quarantined} of them quarantined as corrupt" if quarantined else ""
    return (
        f"{len(lost)} of its chunks are not stored{why} (e.g. {sample[0].hex()}): upload it again"
    )
