"""Local chunk store: append-only pack files plus an SQLite index.

Layout under ``<data>/chunks/``::

    packs/<name>.pack   records (:mod:`.packs`): magic | id | raw size | stored size | bytes
    index.sqlite        chunk id -> (pack, offset, length, raw size, codec, frame digest),
                        totals, upload pins, quarantine (:mod:`.index`)
    gc.lock             the "one collection at a time" lease (an ``flock``)

A file per chunk costs ~180 µs of CPU each on ext4 (DESIGN.md), and a Go cache has
thousands of 175-byte files: chunks are appended to packs instead, a pack per process,
a writer per upload (:mod:`.writer`). Pins (:mod:`.pins`), GC's mark (:mod:`.mark`),
compaction and leftovers (:mod:`.packs`) and fsck (:mod:`.fsck`) are this backend's
halves of :class:`cachesrv.store.ChunkStore`; the lifecycle tools only see that.

Settings come in when the store is opened: ``hard_limit`` (puts past it fail with
ENOSPC, checked against the pack bytes every process sharing the directory counts in
the index) and ``pin_ttl`` (how long this process's pins protect a chunk).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from pathlib import Path

from cachesrv.store import (
    ChunkCorrupt,
    ChunkMissing,
    Codec,
    Frame,
    MaintenanceReport,
    StoreStats,
    VerifyReport,
    compress_frames,
    decode_frame,
    member_frames,
    pending_step,
)
from cachesrv.store.mark import SqliteMarkSession

from . import fsck, packs
from .index import (
    LOCATION,
    LOOKUP_BATCH,
    Location,
    add_totals,
    batched,
    extent,
    lookup,
    open_index,
    quarantine,
)
from .packs import (
    CODEC_OF_MAGIC,
    MAGIC,
    MAGIC_RAW,
    PACK_LIMIT,
    RECORD_HEADER,
    RECORD_MAGICS,
    PackUsage,
)
from .pins import PIN_TTL, Pins, delete_unpinned
from .writer import LocalChunkWriter, PackAppender, within

__all__ = [
    "CODEC_OF_MAGIC",
    "MAGIC",
    "MAGIC_RAW",
    "PACK_LIMIT",
    "PIN_TTL",
    "RECORD_HEADER",
    "RECORD_MAGICS",
    "FileLease",
    "LocalChunkStore",
    "LocalChunkWriter",
]


def _frame(data: bytes, location: Location) -> Frame:
    return Frame(data, location[3], Codec(location[4]), location[5], location[6] or 0, location[2])


class FileLease:
    """An exclusive ``flock`` on a file beside the index: held until released or the
    process dies (a crashed collector never blocks the next one)."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def try_take(cls, path: Path) -> FileLease | None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


PENDING_ROWS = 4096  # pending chunks looked at per compress_pending call, at most


class LocalChunkStore:
    read_ahead = 0  # a pread of the page cache: less than a hand-over to a thread
    defers_compression = True

    def __init__(
        self,
        root: Path,
        pack_limit: int = PACK_LIMIT,
        hard_limit: int | None = None,
        pin_ttl: float = PIN_TTL,
    ) -> None:
        self.root = root / "chunks"
        self.pack_dir = self.root / "packs"
        self.pack_dir.mkdir(parents=True, exist_ok=True)
        self.db = open_index(self.root, self.pack_dir)
        self.hard_limit = hard_limit
        self.pin_ttl = pin_ttl
        self._appender = PackAppender(self.db, self.pack_dir, pack_limit, hard_limit)
        self._pins = Pins(self.db, pin_ttl)
        self._lock = threading.Lock()
        self._read_fds: dict[int, int] = {}
        self._to_close: list[int] = []  # read fds of removed packs, closed at the next round

    # -- writing -------------------------------------------------------------

    def writer(self) -> LocalChunkWriter:
        return LocalChunkWriter(self._appender, self._pins)

    def usage_bytes(self) -> int:
        return self._appender.usage()

    def admits(self, size: int) -> bool:
        return self.hard_limit is None or within(self.hard_limit, self.usage_bytes(), size)

    # -- reading -------------------------------------------------------------

    def contains(self, ids: Iterable[bytes]) -> set[bytes]:
        return lookup(self.db.conn, set(ids))

    def quarantined(self, ids: Iterable[bytes]) -> set[bytes]:
        found: set[bytes] = set()
        for batch in batched(set(ids), LOOKUP_BATCH):
            marks = ",".join("?" * len(batch))
            found.update(
                row[0]
                for row in self.db.conn.execute(
                    f"SELECT DISTINCT id FROM quarantine WHERE id IN ({marks})", batch
                )
            )
        return found - self.contains(found)

    def _locate(self, chunk_id: bytes) -> Location:
        row = self.db.conn.execute(
            f"SELECT {LOCATION} FROM chunks WHERE id = ?", (chunk_id,)
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
            pack = location[0]
            offset, length = extent(location)
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
        for batch in batched(dict.fromkeys(ids), LOOKUP_BATCH):
            marks = ",".join("?" * len(batch))
            for chunk_id, *location in conn.execute(
                f"SELECT id, {LOCATION} FROM chunks WHERE id IN ({marks})",
                batch,
            ):
                located[chunk_id] = tuple(location)  # type: ignore[assignment]
        frames = []
        groups: dict[tuple[int, int], bytes] = {}  # a group's body, read once for its members
        for chunk_id in ids:
            location = located.get(chunk_id)
            try:
                if location is None:
                    raise FileNotFoundError  # not indexed (any more): the slow path says why
                pack = location[0]
                offset, length = extent(location)
                data = groups.get((pack, offset))
                if data is None:
                    data = os.pread(self._read_fd(pack), length, offset)
                    if location[7] is not None:
                        groups[pack, offset] = data
                frames.append(_frame(data, location))
            except FileNotFoundError:
                frames.append(self.read_frame(chunk_id))
        return frames

    def read(self, chunk_id: bytes) -> bytes:
        return decode_frame(chunk_id, self.read_frame(chunk_id))

    def iter_ids(self) -> Iterator[bytes]:
        for (chunk_id,) in self.db.conn.execute("SELECT id FROM chunks"):
            yield chunk_id

    def iter_sizes(self) -> Iterator[tuple[bytes, int]]:
        """Ids with their footprint: the record (header and stored bytes) in its pack."""
        for chunk_id, length in self.db.conn.execute("SELECT id, length FROM chunks"):
            yield chunk_id, RECORD_HEADER.size + length

    # -- lifecycle -------------------------------------------------------------

    def delete(self, ids: Iterable[bytes]) -> int:
        removed = stored = raw = 0
        with self.db.transaction() as conn:
            for batch in batched(set(ids), LOOKUP_BATCH):
                marks = ",".join("?" * len(batch))
                row = conn.execute(
                    f"SELECT count(*), coalesce(sum(length), 0), coalesce(sum(raw_size), 0) "
                    f"FROM chunks WHERE id IN ({marks})",
                    batch,
                ).fetchone()
                conn.execute(f"DELETE FROM chunks WHERE id IN ({marks})", batch)
                removed, stored, raw = removed + row[0], stored + row[1], raw + row[2]
            add_totals(conn, -removed, -stored, -raw)
        return removed

    def delete_unpinned(self, ids: Iterable[bytes], at: float) -> tuple[int, int]:
        with self.db.transaction() as conn:
            count, stored, raw = delete_unpinned(conn, set(ids), at)
            add_totals(conn, -count, -stored, -raw)
        return count, stored

    def pinned_ids(self, at: float) -> set[bytes]:
        return self._pins.pinned(at)

    def prune_pins(self, before: float) -> int:
        return self._pins.prune(before)

    def mark(self) -> SqliteMarkSession:
        return SqliteMarkSession.beside(self.db.path, RECORD_HEADER.size)

    def pack_usage(self) -> list[PackUsage]:
        return packs.usage(self.db, self.pack_dir)

    def maintenance(
        self, max_size: int | None, compact_below: float
    ) -> Generator[None, None, MaintenanceReport]:
        """Remove leftovers of dead writers, then compact packs whose live fraction is
        under ``compact_below`` (under 0.95 while the packs hold more than ``max_size``)."""
        report = MaintenanceReport()
        files, freed = packs.remove_leftovers(self.db, self.pack_dir)
        report.removed_files += files
        report.reclaimed_bytes += freed
        yield
        over = max_size is not None and (
            packs.recount_pack_bytes(self.db, self.pack_dir) > max_size
        )
        threshold = 0.95 if over else compact_below
        candidates = [
            p
            for p in self.pack_usage()
            if not p.active and p.live_chunks and p.file_bytes and p.live_fraction < threshold
        ]
        candidates.sort(key=lambda p: p.file_bytes - p.live_bytes, reverse=True)
        for pack in candidates:
            for _ in packs.compact(self.db, self.pack_dir, pack):
                yield
            report.compacted += 1
            report.reclaimed_bytes += pack.file_bytes - pack.live_bytes
        report.usage_bytes = packs.recount_pack_bytes(self.db, self.pack_dir)
        return report

    def release_unused(self) -> None:
        for fd in self._to_close:
            os.close(fd)
        live = set(packs.pack_names(self.db))
        with self._lock:
            gone = [p for p in self._read_fds if p not in live]
            self._to_close = [self._read_fds.pop(p) for p in gone]

    def verify(self, repair: bool = False) -> VerifyReport:
        return fsck.verify(self.db, self.pack_dir, repair)

    def lease(self, name: str) -> FileLease | None:
        return FileLease.try_take(self.root / f"{name}.lock")

    def stats(self) -> StoreStats:
        conn = self.db.conn
        totals = dict(conn.execute("SELECT name, value FROM totals").fetchall())
        quarantined = conn.execute("SELECT count(DISTINCT id) FROM quarantine").fetchone()[0]
        pending = conn.execute(
            "SELECT coalesce(sum(raw_size), 0) FROM chunks WHERE codec = 2"  # chunks_pending
        ).fetchone()[0]
        disk = packs.pack_file_bytes(self.pack_dir)
        return StoreStats(
            totals["chunks"],
            totals["stored_bytes"],
            totals["raw_bytes"],
            disk,
            quarantined,
            pending,
        )

    def compress_pending(
        self, level: int, budget: int, group_level: int = 0, full: bool = False
    ) -> int:
        """The compressed copies go to this process's pack, one commit per call. The raw
        records they replace are garbage: a pack left with nothing live is dropped here
        (writers roll a pack they put pending records in), the rest is compaction's. A
        pending record that does not match its digest, or whose pack is gone, is
        quarantined as fsck --repair would (a re-upload stores it again)."""
        conn = self.db.conn
        # Read whole (at most PENDING_ROWS rows): a cursor that pending_step leaves unread
        # keeps its read snapshot open on this thread's connection, and the commit below
        # then fails at once with SQLITE_BUSY_SNAPSHOT whenever another connection has
        # written since (a push's pins did, and the background and pushes got 503s).
        rows: list[tuple[bytes, Location]] = [
            (chunk_id, tuple(location))  # type: ignore[misc]
            for chunk_id, *location in conn.execute(
                # in write order: the compressed copies keep an object's order
                f"SELECT id, {LOCATION} FROM chunks WHERE codec = 2 ORDER BY pack, offset LIMIT ?",
                (PENDING_ROWS,),
            ).fetchall()
        ]
        todo, reached = pending_step(rows, lambda row: row[1][3], budget)
        if not todo or (full and not (reached or len(todo) == PENDING_ROWS)):
            return 0
        ids, frames, olds, bad = [], [], [], []
        for chunk_id, location in todo:
            try:
                data = os.pread(self._read_fd(location[0]), location[2], location[1])
            except FileNotFoundError:
                bad.append((chunk_id, location, "pack missing"))  # unless compacted meanwhile
                continue
            ids.append(chunk_id)
            frames.append(_frame(data, location))
            olds.append(location)
        records, damaged = compress_frames(level, ids, frames, group_level)
        for n in damaged:
            bad.append((ids[n], olds[n], "pending record does not match its digest"))
        writer = self.writer()
        done = 0
        try:
            for record in records:
                if record.frame.codec == Codec.GROUP:
                    news = member_frames(record.frame)
                    writer.replace_group(
                        record.frame,
                        [
                            (ids[n], new, olds[n])
                            for n, new in zip(record.members, news, strict=True)
                        ],
                    )
                else:
                    (n,) = record.members
                    writer.replace(ids[n], record.frame, olds[n])
                done += sum(frames[n].raw_size for n in record.members)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        if bad:
            now = time.time()
            with self.db.transaction() as tx:  # rows that moved meanwhile are left alone
                for chunk_id, (pack, offset, length, raw_size, *_), reason in bad:
                    quarantine(tx, chunk_id, pack, offset, length, raw_size, reason, now)
        emptied = [  # no pending record left: a rolled pack is dead now
            pack
            for pack in {old[0] for old in olds}
            if not conn.execute(
                "SELECT 1 FROM chunks WHERE codec = 2 AND pack = ? LIMIT 1", (pack,)
            ).fetchone()  # chunks_pending: no scan, no write lock while some remain
        ]
        names = packs.pack_names(self.db) if emptied else {}
        for pack in emptied:
            if pack in names:
                packs.drop_if_dead(self.db, self.pack_dir, pack, names[pack])
        return done

    def close(self) -> None:
        self._appender.close()
        with self._lock:
            for fd in [*self._read_fds.values(), *self._to_close]:
                os.close(fd)
            self._read_fds.clear()
            self._to_close.clear()
        self.db.close()
