"""A chunk store in a dict: the interfaces' proof that they hold no local assumption
(the conformance suite runs every backend through the same promises), and a store for
tests and tools that need no disk. One process; thread-safe. A chunk's footprint is
its stored bytes."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from cachesrv.store import (
    COMMIT_ROWS,
    ChunkCorrupt,
    ChunkMissing,
    ChunkStore,
    Codec,
    Frame,
    MaintenanceReport,
    StoreStats,
    VerifyReport,
    compress_frames,
    decode_frame,
    group_chunks,
    member_frames,
    pending_step,
)
from cachesrv.store.mark import SqliteMarkSession

PIN_TTL = 600.0


class MemoryChunkStore:
    read_ahead = 0
    defers_compression = True

    def __init__(self, hard_limit: int | None = None, pin_ttl: float = PIN_TTL) -> None:
        self.hard_limit = hard_limit
        self.pin_ttl = pin_ttl
        self._lock = threading.Lock()
        self._chunks: dict[bytes, Frame] = {}
        self._pins: dict[bytes, float] = {}  # id -> expiry
        self._quarantine: dict[bytes, str] = {}
        self._leases: set[str] = set()

    # -- writing ---------------------------------------------------------------

    def writer(self) -> MemoryChunkWriter:
        return MemoryChunkWriter(self)

    def usage_bytes(self) -> int:
        with self._lock:
            return sum(f.stored_size for f in self._chunks.values())

    def admits(self, size: int) -> bool:
        return self.hard_limit is None or self.usage_bytes() + size <= self.hard_limit

    def _pin_and_lookup(self, ids: set[bytes]) -> set[bytes]:
        expires = time.time() + self.pin_ttl
        with self._lock:  # atomic with delete_unpinned, as the interface promises
            for i in ids:
                self._pins[i] = max(self._pins.get(i, 0.0), expires)
            return {i for i in ids if i in self._chunks}

    def _commit(self, pending: dict[bytes, Frame]) -> None:
        with self._lock:
            for chunk_id, frame in pending.items():
                self._chunks.setdefault(chunk_id, frame)
                self._quarantine.pop(chunk_id, None)

    # -- reading ---------------------------------------------------------------

    def read_frame(self, chunk_id: bytes) -> Frame:
        with self._lock:
            frame = self._chunks.get(chunk_id)
            reason = self._quarantine.get(chunk_id)
        if frame is not None:
            return frame
        if reason is not None:
            raise ChunkCorrupt(f"chunk {chunk_id.hex()} is quarantined ({reason})")
        raise ChunkMissing(f"chunk {chunk_id.hex()} is not stored")

    def read_frames(self, ids: Sequence[bytes]) -> list[Frame]:
        return [self.read_frame(i) for i in ids]

    def read(self, chunk_id: bytes) -> bytes:
        return decode_frame(chunk_id, self.read_frame(chunk_id))

    def contains(self, ids: Iterable[bytes]) -> set[bytes]:
        with self._lock:
            return {i for i in ids if i in self._chunks}

    def quarantined(self, ids: Iterable[bytes]) -> set[bytes]:
        with self._lock:
            return {i for i in ids if i in self._quarantine and i not in self._chunks}

    def iter_ids(self) -> Iterator[bytes]:
        with self._lock:
            ids = list(self._chunks)
        return iter(ids)

    def iter_sizes(self) -> Iterator[tuple[bytes, int]]:
        with self._lock:
            sizes = [(i, f.stored_size) for i, f in self._chunks.items()]
        return iter(sizes)

    # -- lifecycle -------------------------------------------------------------

    def delete(self, ids: Iterable[bytes]) -> int:
        with self._lock:
            return sum(self._chunks.pop(i, None) is not None for i in set(ids))

    def delete_unpinned(self, ids: Iterable[bytes], at: float) -> tuple[int, int]:
        count = stored = 0
        with self._lock:
            for i in set(ids):
                if self._pins.get(i, -1.0) >= at:
                    continue
                frame = self._chunks.pop(i, None)
                if frame is not None:
                    count += 1
                    stored += frame.stored_size
        return count, stored

    def pinned_ids(self, at: float) -> set[bytes]:
        with self._lock:
            return {i for i, expires in self._pins.items() if expires >= at}

    def prune_pins(self, before: float) -> int:
        with self._lock:
            gone = [i for i, expires in self._pins.items() if expires < before]
            for i in gone:
                del self._pins[i]
        return len(gone)

    def mark(self) -> SqliteMarkSession:
        return SqliteMarkSession.over(self.iter_sizes)

    def maintenance(
        self, max_size: int | None, compact_below: float
    ) -> Generator[None, None, MaintenanceReport]:
        yield  # nothing to compact: a deleted chunk's memory is free at once
        return MaintenanceReport(usage_bytes=self.usage_bytes())

    def release_unused(self) -> None:
        return None

    def verify(self, repair: bool = False) -> VerifyReport:
        report = VerifyReport()
        with self._lock:
            chunks = list(self._chunks.items())
        for chunk_id, frame in chunks:
            report.chunks_checked += 1
            try:
                decode_frame(chunk_id, frame)
            except ChunkCorrupt as exc:
                report.problems.append(f"chunk {chunk_id.hex()}: {exc}")
                report.corrupt.add(chunk_id)
        if repair:
            with self._lock:
                for chunk_id in report.corrupt:
                    if self._chunks.pop(chunk_id, None) is not None:
                        self._quarantine[chunk_id] = "content does not match its id"
                        report.repaired.append(f"quarantined chunk {chunk_id.hex()}")
        return report

    def lease(self, name: str) -> MemoryLease | None:
        with self._lock:
            if name in self._leases:
                return None
            self._leases.add(name)
        return MemoryLease(self, name)

    def stats(self) -> StoreStats:
        with self._lock:
            frames = list(self._chunks.values())
            quarantined = len(self._quarantine.keys() - self._chunks.keys())
        stored = sum(f.stored_size for f in frames)
        raw = sum(f.raw_size for f in frames)
        pending = sum(f.raw_size for f in frames if f.codec == Codec.PENDING)
        return StoreStats(len(frames), stored, raw, stored, quarantined, pending)

    def compress_pending(
        self, level: int, budget: int, group_level: int = 0, full: bool = False
    ) -> int:
        with self._lock:  # in the order they were stored
            pending = ((i, f) for i, f in self._chunks.items() if f.codec == Codec.PENDING)
            todo, reached = pending_step(pending, lambda item: item[1].raw_size, budget)
        if not todo or (full and not reached):
            return 0
        ids, olds = [i for i, _ in todo], [f for _, f in todo]
        records, damaged = compress_frames(level, ids, olds, group_level)
        done = 0
        with self._lock:
            for record in records:
                for n, new in zip(record.members, member_frames(record.frame), strict=True):
                    if self._chunks.get(ids[n]) is olds[n]:  # not deleted or stored anew
                        self._chunks[ids[n]] = new
                        done += new.raw_size
            for n in damaged:  # as the local store does: quarantined, never served
                if self._chunks.get(ids[n]) is olds[n]:
                    del self._chunks[ids[n]]
                    self._quarantine[ids[n]] = "pending frame does not match its digest"
        return done

    def close(self) -> None:
        return None


class MemoryChunkWriter:
    def __init__(self, store: MemoryChunkStore) -> None:
        self._store = store
        self._pending: dict[bytes, Frame] = {}
        self._pending_bytes = 0

    def missing(self, ids: Iterable[bytes]) -> set[bytes]:
        ids = set(ids)
        wanted = ids - self._pending.keys()
        return wanted - self._store._pin_and_lookup(ids)

    def put(self, chunk_id: bytes, frame: Frame) -> None:
        if chunk_id in self._pending:
            return
        store = self._store
        size = frame.stored_size
        if store.hard_limit is not None and not store.admits(self._pending_bytes + size):
            raise OSError(errno.ENOSPC, f"the store is at its hard limit of {store.hard_limit}")
        self._pending[chunk_id] = frame
        self._pending_bytes += size
        if len(self._pending) >= COMMIT_ROWS:
            self.commit()

    def put_group(self, body: Frame) -> None:
        for chunk_id, frame in group_chunks(body):
            self.put(chunk_id, frame)

    def commit(self) -> None:
        self._store._commit(self._pending)
        self._pending, self._pending_bytes = {}, 0

    def abort(self) -> None:
        self._pending, self._pending_bytes = {}, 0


class MemoryLease:
    def __init__(self, store: MemoryChunkStore, name: str) -> None:
        self._store: MemoryChunkStore | None = store
        self._name = name

    def release(self) -> None:
        if self._store is not None:
            with self._store._lock:
                self._store._leases.discard(self._name)
            self._store = None


if TYPE_CHECKING:  # mypy checks the backend against the interface it claims
    _conforms: ChunkStore = MemoryChunkStore()
