"""Writing to the local store: one pack file per process, one writer per upload.

Each process appends to its own pack (replicas or workers sharing the directory never
interleave) through :class:`PackAppender`, under an exclusive ``flock`` ("being
written": GC and fsck leave a locked pack alone). A :class:`LocalChunkWriter` is one
upload's view: its records go to the process's pack, its index rows wait in its own
pending list until its :meth:`~LocalChunkWriter.commit` fsyncs the pack and commits
them, so after a crash the index never names a byte that is not on disk (a torn tail
is garbage that fsck trims). An upload of many chunks (a tree of 100,000 tiny files)
commits every :data:`COMMIT_ROWS` of them, so that what its writer holds does not grow
with the upload: they are pinned since it asked about them, and if the upload then
fails they are garbage for GC, as after a crash between a commit and the publish.

A pack that fills up is fsynced and *retired*: it stays open and locked until no
writer has uncommitted rows in it, so GC never takes it for a dead writer's leftover.
A failed write or fsync (ENOSPC, EIO) abandons the pack: the uncommitted rows of every
writer in it are dropped and the next put opens a new one, so an index row never
points past what was really written. A writer that committed pending records (their
compression deferred to the background) rolls the pack over, so that once they are
compressed elsewhere the pack is finished, dead and dropped, not an active pack of garbage.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from cachesrv.db import Database
from cachesrv.store import COMMIT_ROWS, Codec, Frame, group_chunks

from .index import (
    LOCATION,
    Location,
    add_pack,
    add_pack_bytes,
    add_totals,
    lookup,
    pack_bytes,
)
from .packs import (
    GROUP_RECORD_ID,
    PACK_LIMIT,
    RECORD_HEADER,
    RECORD_MAGICS,
    WRITEBACK_BYTES,
    fsync_dir,
    new_pack_name,
    start_writeback,
)
from .pins import Pins

# The usage the hard limit is checked against is re-read (other processes write too)
# this often, or after this many bytes written here.
_USAGE_RECHECK_SECONDS = 1.0
_USAGE_RECHECK_BYTES = 4 << 20


def within(limit: int | None, usage: int, size: int) -> bool:
    """The hard limit's one rule: ``size`` more bytes on ``usage`` stay within ``limit``."""
    return limit is None or usage + size <= limit


class PackAppender:
    """This process's pack files. Thread-safe: every method takes :attr:`lock`."""

    def __init__(
        self,
        db: Database,
        pack_dir: Path,
        pack_limit: int = PACK_LIMIT,
        hard_limit: int | None = None,
    ) -> None:
        self.db = db
        self.pack_dir = pack_dir
        self.pack_limit = pack_limit
        self.hard_limit = hard_limit
        self.lock = threading.RLock()
        self.pack_id = 0
        self._fd: int | None = None  # the pack being appended to
        self._size = 0
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._unsent = 0  # bytes at the current pack's end not yet handed to the disk
        self._synced = True  # everything appended to the current pack is fsynced
        self._retired: dict[int, int] = {}  # full packs still awaiting commits: id -> fd
        self.uncommitted: dict[int, int] = {}  # pack -> writers' pending rows in it
        self.abandoned = 0  # bumped whenever a pack is abandoned (writers then drop rows)
        self.abandoned_packs: set[int] = set()
        self._usage = 0  # pack bytes at the last check
        self._written_since_check = 0
        self._checked_at = -1e9

    def append(
        self, chunk_id: bytes, frame: Frame, limited: bool = True, rows: int = 1
    ) -> Location:
        """Buffer one record (of ``rows`` index rows: a grouped frame's members); returns
        where its bytes will be. Raises OSError (the hard limit unless not ``limited``,
        a full disk)."""
        with self.lock:
            if self._fd is None or self._size >= self.pack_limit:
                self._open_pack()
            data = frame.data
            if limited:
                self._check_limit(RECORD_HEADER.size + len(data))
            header = RECORD_HEADER.pack(
                RECORD_MAGICS[frame.codec], chunk_id, frame.raw_size, len(data)
            )
            offset = self._size + len(header)
            self._buffer += (header, data)
            self._buffered += len(header) + len(data)
            self._size = offset + len(data)
            self._synced = False
            location = (
                self.pack_id,
                offset,
                len(data),
                frame.raw_size,
                int(frame.codec),
                frame.digest,
                None,
                None,
            )
            self.uncommitted[self.pack_id] = self.uncommitted.get(self.pack_id, 0) + rows
            if self._buffered >= 1 << 20 or len(self._buffer) >= 512:
                self._flush()
            return location

    def sync(self, packs: set[int]) -> None:
        """Make the records of ``packs`` durable (a retired pack already is)."""
        with self.lock:
            if self.pack_id in packs and self._fd is not None and not self._synced:
                self._flush()
                try:
                    os.fsync(self._fd)
                    # O_APPEND writes land at the file's end: if someone truncated the
                    # pack, our offsets are wrong and nothing uncommitted may be trusted
                    if os.fstat(self._fd).st_size != self._size:
                        raise OSError(
                            errno.EIO,
                            f"pack {self.pack_id} changed size under its writer "
                            "(truncated?); its uncommitted records are dropped",
                        )
                except OSError:
                    self.abandon()
                    raise
                self._synced = True

    def settle(self, counts: dict[int, int]) -> None:
        """Rows of these packs were committed or dropped: a retired pack nobody waits on
        any more is closed (its lock goes; it is an ordinary finished pack)."""
        with self.lock:
            for pack, n in counts.items():
                left = self.uncommitted.get(pack, 0) - n
                if left > 0:
                    self.uncommitted[pack] = left
                    continue
                self.uncommitted.pop(pack, None)
                fd = self._retired.pop(pack, None)
                if fd is not None:
                    os.close(fd)

    def usage(self) -> int:
        return pack_bytes(self.db.conn)

    def _check_limit(self, size: int) -> None:
        if self.hard_limit is None:
            return
        now = time.monotonic()
        if (
            now - self._checked_at > _USAGE_RECHECK_SECONDS
            or self._written_since_check > _USAGE_RECHECK_BYTES
        ):
            self._usage = self.usage()
            self._checked_at, self._written_since_check = now, 0
        if not within(self.hard_limit, self._usage + self._written_since_check, size):
            raise OSError(
                errno.ENOSPC, f"the store is at its hard limit of {self.hard_limit} bytes"
            )
        self._written_since_check += size

    def roll(self) -> None:
        """Finish the current pack (durable, kept until its rows commit); the next record
        starts another. Its lock goes with its last writer, so maintenance may then drop
        it once nothing in it is live (pending records, once compressed elsewhere)."""
        with self.lock:
            if self._fd is None:
                return
            self.sync({self.pack_id})
            assert self._fd is not None
            if self.uncommitted.get(self.pack_id):
                self._retired[self.pack_id] = self._fd
            else:
                os.close(self._fd)
            self._fd = None

    def _open_pack(self) -> None:
        self.roll()  # the pack is full
        name = new_pack_name()
        path = self.pack_dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # "being written": GC and fsck leave it alone
            fsync_dir(self.pack_dir)
            with self.db.transaction() as conn:
                pack_id = add_pack(conn, name)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self.pack_id, self._fd, self._size, self._synced = pack_id, fd, 0, True
        self._unsent = 0

    def _flush(self) -> None:
        if self._buffer and self._fd is not None:
            data = b"".join(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
            view = memoryview(data)
            try:
                while view:  # a short write is retried; its error, if any, abandons the pack
                    written = os.write(self._fd, view)
                    if written <= 0:
                        raise OSError(errno.ENOSPC, "no space left for a pack record")
                    view = view[written:]
            except OSError:
                self.abandon()
                raise
            self._buffer.clear()
            self._buffered = 0
            self._unsent += len(data)
            if self._unsent >= WRITEBACK_BYTES:  # what is written is all appended now
                start_writeback(self._fd, self._size - self._unsent, self._unsent)
                self._unsent = 0

    def abandon(self) -> None:
        """After a failed write or fsync nothing uncommitted in this pack can be trusted:
        drop it (it is garbage past the last committed record) and start another."""
        with self.lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._buffer.clear()
            self._buffered = 0
            self.abandoned_packs.add(self.pack_id)
            self.uncommitted.pop(self.pack_id, None)
            self.abandoned += 1

    def close(self) -> None:
        with self.lock:
            self._flush()
            for fd in [*self._retired.values(), *([self._fd] if self._fd is not None else [])]:
                os.close(fd)
            self._retired.clear()
            self._fd = None


class LocalChunkWriter:
    """One upload's writer (see the module docstring). One thread at a time."""

    def __init__(self, appender: PackAppender, pins: Pins) -> None:
        self._appender = appender
        self._pins = pins
        self._pending: dict[bytes, Location] = {}
        self._replacing: dict[bytes, Location] = {}  # id -> the row its new copy replaces
        self._seen_abandoned = appender.abandoned

    def missing(self, ids: Iterable[bytes]) -> set[bytes]:
        ids = set(ids)
        self._drop_abandoned()
        wanted = {i for i in ids if i not in self._pending}
        return wanted - self._pins.pin_and_lookup(ids, wanted)

    def put(self, chunk_id: bytes, frame: Frame) -> None:
        self._add(chunk_id, frame, limited=True)

    def replace(self, chunk_id: bytes, frame: Frame, old: Location) -> None:
        """Queue a new copy of a stored chunk (its pending frame, compressed) that takes
        the place of row ``old`` at commit, unless that row moved or went meanwhile
        (then the copy is garbage). The old record becomes garbage. Not held to the
        hard limit: a store full of pending chunks must still be able to shrink."""
        self._replacing[chunk_id] = old
        self._add(chunk_id, frame, limited=False)

    def put_group(self, body: Frame) -> None:
        self._add_group(body, group_chunks(body), limited=True)

    def replace_group(self, body: Frame, members: list[tuple[bytes, Frame, Location]]) -> None:
        """:meth:`replace` for the chunks of one grouped frame (``body``): one record,
        a row per member (``member_frames`` gives their frames), each taking the place
        of its old row as replace does."""
        for chunk_id, _, old in members:
            self._replacing[chunk_id] = old
        self._add_group(body, [(chunk_id, frame) for chunk_id, frame, _ in members], limited=False)

    def _add_group(self, body: Frame, members: list[tuple[bytes, Frame]], limited: bool) -> None:
        self._drop_abandoned()
        try:
            base = self._appender.append(GROUP_RECORD_ID, body, limited=limited, rows=len(members))
        finally:
            self._drop_abandoned()
        pack, offset = base[:2]
        for chunk_id, frame in members:
            assert chunk_id not in self._pending, "a chunk twice in one writer's groups"
            self._pending[chunk_id] = (
                pack,
                offset,
                frame.share,
                frame.raw_size,
                int(Codec.GROUP),
                body.digest,
                frame.inner,
                len(body.data),
            )
        if len(self._pending) >= COMMIT_ROWS:
            self.commit()

    def _add(self, chunk_id: bytes, frame: Frame, limited: bool) -> None:
        self._drop_abandoned()
        if chunk_id in self._pending:
            return
        try:
            self._pending[chunk_id] = self._appender.append(chunk_id, frame, limited)
        finally:
            self._drop_abandoned()
        if len(self._pending) >= COMMIT_ROWS:
            self.commit()

    def commit(self) -> None:
        appender = self._appender
        with appender.lock:
            self._drop_abandoned()
            if not self._pending:
                return
            counts = self._counts()
            deferred = any(loc[4] == Codec.PENDING for loc in self._pending.values())
            try:
                appender.sync(set(counts))
                self._insert_rows()
            except OSError:
                appender.abandon()
                self._drop_abandoned()
                raise
            self._pending.clear()
            self._replacing.clear()
            appender.settle(counts)
            if deferred:
                # its pending records become garbage as the background compresses them:
                # in a finished pack, maintenance can reclaim them (an active one it skips)
                appender.roll()

    def abort(self) -> None:
        # Their records stay in the pack as garbage, uncounted in pack_bytes until GC
        # recounts (as a crash would leave them): the hard limit measures committed data.
        with self._appender.lock:
            self._drop_abandoned()
            counts = self._counts()
            self._pending.clear()
            self._replacing.clear()
            self._appender.settle(counts)

    def _counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for location in self._pending.values():
            counts[location[0]] = counts.get(location[0], 0) + 1
        return counts

    def _drop_abandoned(self) -> None:
        appender = self._appender
        if self._seen_abandoned == appender.abandoned:
            return
        with appender.lock:
            self._seen_abandoned = appender.abandoned
            dead = appender.abandoned_packs
            self._pending = {i: loc for i, loc in self._pending.items() if loc[0] not in dead}

    def _insert_rows(self) -> None:
        added = stored = raw = 0
        appended = sum(RECORD_HEADER.size + loc[2] for loc in self._pending.values())
        with self._appender.db.transaction() as conn:
            fresh = []
            for chunk_id, location in self._pending.items():
                old = self._replacing.get(chunk_id)
                if old is None:
                    fresh.append(chunk_id)
                    continue
                cursor = conn.execute(
                    "UPDATE chunks SET pack = ?, offset = ?, length = ?, codec = ?, "
                    "digest = ?, inner = ?, span = ? WHERE id = ? AND pack = ? AND offset = ?",
                    (*location[:3], *location[4:], chunk_id, *old[:2]),
                )
                if cursor.rowcount:
                    stored += location[2] - old[2]
            # Rows another writer added since this one looked are kept (the write lock is
            # held from here on); the rest go in with one executemany, not an execute per
            # row (a cursor and a statement lookup each; with the batched feeds, the ingest
            # worker's CPU for Go v1 went 2.48-2.51 -> 2.36-2.39 s cold).
            known = lookup(conn, fresh)
            rows = [(i, *self._pending[i]) for i in fresh if i not in known]
            conn.executemany(
                f"INSERT OR IGNORE INTO chunks (id, {LOCATION}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            added = len(rows)
            stored += sum(row[3] for row in rows)
            raw += sum(row[4] for row in rows)
            add_totals(conn, added, stored, raw)
            add_pack_bytes(conn, appended)
