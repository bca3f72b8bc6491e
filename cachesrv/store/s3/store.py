"""The S3 chunk store: packs, index objects, pins and leases in one bucket.

Layout under the store's prefix (``<prefix>/chunks/``)::

    packs/<time>-<random>.pack   many chunks per object, in the local store's record
                                 format (:mod:`cachesrv.store.local.packs`); read by
                                 ranged GETs, coalesced per pack
    index/<time>-<random>.idx    where each chunk lives, a log (:mod:`.index`)
    pins/<expiry ms>-<random>    chunk ids an upload asked about, protected until expiry
    leases/<name>                one holder at a time (``gc``), taken by conditional writes

A writer buffers its chunks into a pack object of up to :data:`PACK_TARGET` bytes and
uploads it when full; nothing is visible until :meth:`S3ChunkWriter.commit` has
uploaded the last pack and written one index object naming them all. A replica killed
before that leaves only unindexed packs, removed by maintenance after :data:`MIN_AGE`.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import secrets
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import zstandard

from cachesrv.store import (
    COMMIT_ROWS,
    ChunkCorrupt,
    ChunkMissing,
    ChunkStore,
    Codec,
    Frame,
    GroupMember,
    MaintenanceReport,
    StoreStats,
    VerifyReport,
    check_frame,
    compress_chunks,
    decode_frame,
    group_chunks,
    group_parts,
)
from cachesrv.store.local.packs import (
    CODEC_OF_MAGIC,
    GROUP_RECORD_ID,
    RECORD_HEADER,
    RECORD_MAGICS,
)
from cachesrv.store.mark import SqliteMarkSession

from .client import ObjectStore, PreconditionFailed
from .index import ChunkIndex, IndexBatch, Location, Op, decode

PIN_TTL = 600.0
PINNED_MAX = 2 * COMMIT_ROWS  # ids a writer remembers having pinned
PACK_TARGET = 4 << 20  # a writer uploads its pack once it holds this much (memory per upload)
COALESCE_GAP = 64 << 10  # ranged reads of one pack closer than this become one GET
REFRESH_EVERY = 2.0  # seconds a replica trusts its index for stats and lookups
MIN_AGE = 600.0  # seconds before an unindexed pack may be a dead writer's
LEASE_TTL = 60.0  # a lease lapses this long after its holder last renewed it
# An index object's name carries its writer's clock at the PUT; a refresh lists from
# this long before the newest one seen (late PUTs, clock skew), and all of them now and
# then.
LATE_WINDOW = 300.0
FULL_LISTING_EVERY = 60.0
MERGE_AT_LEAST = 64  # index objects old enough before maintenance merges them
# zstd level at which compaction compresses again the live members of a partly dead
# group (maintenance has no upload's settings; zstd's own default)
REGROUP_LEVEL = 3


def _stamp() -> str:
    return f"{time.time_ns():016x}-{os.getpid()}-{secrets.token_hex(4)}"


def _frame(stored: bytes, where: Location) -> Frame:
    """The frame of the chunk at ``where``, from its record's stored bytes."""
    if where.codec != Codec.GROUP:
        return Frame(stored, where.raw_size, where.codec, where.digest)
    return Frame(stored, where.raw_size, where.codec, where.digest, where.inner, where.length)


def _record(chunk_id: bytes, frame: Frame) -> bytes:
    header = RECORD_HEADER.pack(
        RECORD_MAGICS[frame.codec], chunk_id, frame.raw_size, len(frame.data)
    )
    return header + frame.data


class S3ChunkStore:
    # ranged GETs in flight per restore: one at a time, a zstd restore from SeaweedFS on
    # loopback ran at 125 MB/s, waiting out each round trip
    read_ahead = 3
    defers_compression = False  # see compress_pending

    def __init__(
        self,
        objects: ObjectStore,
        hard_limit: int | None = None,
        pin_ttl: float = PIN_TTL,
        group_level: int = 0,
    ) -> None:
        self.objects = objects
        self.group_level = group_level  # what compaction groups live members at (0: never)
        self.hard_limit = hard_limit
        self.pin_ttl = pin_ttl
        self.index = ChunkIndex()
        self._refresh_lock = threading.Lock()
        self._refreshed = 0.0  # monotonic start of the last completed refresh
        self._full_listing = 0.0
        self._pin_cache: dict[str, list[bytes]] = {}  # pin object -> its ids
        self._pins_lock = threading.Lock()
        # the index is read at the first lookup, not here: opening never needs the bucket

    # -- the index -----------------------------------------------------------------

    def refresh(self, since: float | None = None) -> None:
        """Read the index objects not seen yet. With ``since`` (a monotonic time), a
        refresh that started after it is enough (concurrent callers share one)."""
        with self._refresh_lock:
            if since is not None and self._refreshed >= since:
                return
            started = time.monotonic()
            start_after = ""
            if self.index.seen and started - self._full_listing < FULL_LISTING_EVERY:
                # index names start with their writer's clock: list only the recent ones
                newest = int(max(self.index.seen).removeprefix("index/")[:16], 16)
                start_after = f"index/{max(newest - int(LATE_WINDOW * 1e9), 0):016x}"
            else:
                self._full_listing = started
            listed = [key for key, _, _ in self.objects.listing("index/", start_after=start_after)]
            if not start_after:  # forget the names of objects merged away since
                with self.index.lock:
                    self.index.seen &= set(listed)
            new = [key for key in listed if key not in self.index.seen]
            for key in new:
                try:
                    body, _ = self.objects.get(key)
                except KeyError:  # merged away meanwhile
                    continue
                packs, records = decode(body)
                self.index.apply(packs, records)
                self.index.seen.add(key)
            self._refreshed = started

    def _fresh(self) -> None:
        self.refresh(time.monotonic() - REFRESH_EVERY)

    def _write_index(self, batch: IndexBatch, allow_empty: bool = False) -> None:
        if not batch.records and not (allow_empty and batch.packs):
            return
        key = f"index/{_stamp()}.idx"
        body = batch.encode()
        self.objects.put(key, body, create=True)
        packs, records = decode(body)
        self.index.apply(packs, records)
        with self.index.lock:
            self.index.seen.add(key)

    # -- writing ---------------------------------------------------------------------

    def writer(self) -> S3ChunkWriter:
        return S3ChunkWriter(self)

    def usage_bytes(self) -> int:
        self._fresh()
        return self.index.usage()

    def admits(self, size: int) -> bool:
        return self.hard_limit is None or self.usage_bytes() + size <= self.hard_limit

    def _pin(self, ids: Iterable[bytes]) -> None:
        ids = list(ids)
        if not ids:
            return
        expires = int((time.time() + self.pin_ttl) * 1000)
        self.objects.put(f"pins/{expires:016d}-{secrets.token_hex(6)}", b"".join(ids))

    # -- reading ---------------------------------------------------------------------

    def _locate(self, ids: Sequence[bytes]) -> list[Location]:
        with self.index.lock:
            found = [self.index.chunks.get(i) for i in ids]
        if any(w is None for w in found):
            self.refresh(time.monotonic())  # written by another replica since we looked
            with self.index.lock:
                found = [self.index.chunks.get(i) for i in ids]
        result = []
        for chunk_id, where in zip(ids, found, strict=True):
            if where is None:
                with self.index.lock:
                    quarantined = chunk_id in self.index.quarantine
                if quarantined:
                    raise ChunkCorrupt(f"chunk {chunk_id.hex()} is quarantined")
                raise ChunkMissing(f"chunk {chunk_id.hex()} is not stored")
            result.append(where)
        return result

    def read_frame(self, chunk_id: bytes) -> Frame:
        return self.read_frames([chunk_id])[0]

    def read(self, chunk_id: bytes) -> bytes:
        return decode_frame(chunk_id, self.read_frame(chunk_id))

    def read_frames(self, ids: Sequence[bytes]) -> list[Frame]:
        try:
            return self._read_frames(ids)
        except KeyError:  # a pack compacted away since our index was read
            self.refresh(time.monotonic())
            try:
                return self._read_frames(ids)
            except KeyError as exc:
                raise ChunkMissing(f"a pack holding these chunks is gone: {exc}") from exc

    def _read_frames(self, ids: Sequence[bytes]) -> list[Frame]:
        return self._read_at(self._locate(ids))

    def _read_at(self, places: Sequence[Location]) -> list[Frame]:
        """The frames stored at ``places``, in order (KeyError: a pack is gone)."""
        by_pack: dict[str, list[int]] = {}
        for n, where in enumerate(places):
            by_pack.setdefault(where.pack, []).append(n)
        frames: list[Frame | None] = [None] * len(places)
        for pack, numbers in by_pack.items():
            numbers.sort(key=lambda n: places[n].offset)
            run: list[int] = []
            for n in numbers:
                if run:
                    last = places[run[-1]]
                    if places[n].offset - (last.offset + last.extent) > COALESCE_GAP:
                        self._read_run(pack, run, places, frames)
                        run = []
                run.append(n)
            self._read_run(pack, run, places, frames)
        return [f for f in frames if f is not None]

    def _read_run(
        self, pack: str, run: list[int], places: Sequence[Location], frames: list[Frame | None]
    ) -> None:
        start = min(places[n].offset for n in run)
        end = max(places[n].offset + places[n].extent for n in run)
        data = self.objects.get_range(f"packs/{pack}", start, end)
        bodies: dict[int, bytes] = {}  # a group's members share one copy of its body
        for n in run:
            where = places[n]
            stored = bodies.get(where.offset)
            if stored is None:
                stored = data[where.offset - start : where.offset - start + where.extent]
                bodies[where.offset] = stored
            frames[n] = _frame(stored, where)

    def contains(self, ids: Iterable[bytes]) -> set[bytes]:
        ids = set(ids)
        self._fresh()
        with self.index.lock:
            return {i for i in ids if i in self.index.chunks}

    def quarantined(self, ids: Iterable[bytes]) -> set[bytes]:
        self._fresh()
        with self.index.lock:
            return {i for i in ids if i in self.index.quarantine and i not in self.index.chunks}

    def iter_ids(self) -> Iterator[bytes]:
        self._fresh()
        with self.index.lock:
            return iter(self.index.chunks)

    def iter_sizes(self) -> Iterator[tuple[bytes, int]]:
        self._fresh()
        with self.index.lock:
            sizes = self.index.chunks.sizes()
        return ((i, stored + RECORD_HEADER.size) for i, stored in sizes)

    # -- lifecycle -------------------------------------------------------------------

    def _forget(self, ids: Iterable[bytes]) -> dict[bytes, Location]:
        """Forget every copy of ``ids``; returns the copy each was read from."""
        with self.index.lock:
            found = {i: self.index.chunks.get(i) for i in set(ids)}
        victims = {i: where for i, where in found.items() if where is not None}
        batch = IndexBatch()
        for chunk_id in victims:
            for where in self.index.all_copies(chunk_id):
                batch.forget(Op.DEL, chunk_id, where)
        self._write_index(batch)
        return victims

    def delete(self, ids: Iterable[bytes]) -> int:
        self.refresh()
        return len(self._forget(ids))

    def delete_unpinned(self, ids: Iterable[bytes], at: float) -> tuple[int, int]:
        """Pins are written before a writer looks chunks up (and a writer that finds a
        chunk it already knew refreshes its index after pinning); so a pin that lands
        after the first look here is seen by the second, and those chunks are restored
        where they were: their bytes are still in their packs."""
        self.refresh()
        ids = set(ids)
        before = self.pinned_ids(at)
        victims = self._forget(ids - before)
        revived = self.pinned_ids(at) & victims.keys()
        if revived:
            batch = IndexBatch()
            for chunk_id in revived:
                batch.add(chunk_id, victims.pop(chunk_id))
            self._write_index(batch)
        return len(victims), sum(w.length for w in victims.values())

    def _pins(self) -> Iterator[tuple[str, float]]:
        for key, _, _ in self.objects.listing("pins/"):
            expires = key.removeprefix("pins/").partition("-")[0]
            if expires.isdigit():
                yield key, int(expires) / 1000

    def _pin_body(self, key: str) -> list[bytes]:
        """The ids of a pin object (never rewritten: read once, then from memory)."""
        with self._pins_lock:
            cached = self._pin_cache.get(key)
        if cached is not None:
            return cached
        try:
            body, _ = self.objects.get(key)
        except KeyError:
            return []
        ids = [body[i : i + 32] for i in range(0, len(body) - 31, 32)]
        with self._pins_lock:
            self._pin_cache[key] = ids
        return ids

    def pinned_ids(self, at: float) -> set[bytes]:
        pinned: set[bytes] = set()
        listed = dict(self._pins())
        with self._pins_lock:
            for key in self._pin_cache.keys() - listed.keys():
                del self._pin_cache[key]  # pruned by some replica
        for key, expires in listed.items():
            if expires >= at:
                pinned.update(self._pin_body(key))
        return pinned

    def prune_pins(self, before: float) -> int:
        gone = [key for key, expires in self._pins() if expires < before]
        count = sum(len(self._pin_body(key)) for key in gone)
        self.objects.delete_many(gone)
        with self._pins_lock:
            for key in gone:
                self._pin_cache.pop(key, None)
        return count

    def mark(self) -> SqliteMarkSession:
        return SqliteMarkSession.over(self.iter_sizes)

    def maintenance(
        self, max_size: int | None, compact_below: float
    ) -> Generator[None, None, MaintenanceReport]:
        """Delete packs nothing lives in (and unindexed ones older than MIN_AGE: dead
        writers'), and rewrite packs whose live fraction is under ``compact_below``."""
        report = MaintenanceReport()
        self.refresh()
        live = self.index.by_pack()
        now = time.time()
        for key, size, modified in list(self.objects.listing("packs/")):
            name = key.removeprefix("packs/")
            yield
            if name in live:
                count, stored = live[name]
                used = stored + count * RECORD_HEADER.size
                if count and (not size or used / size >= compact_below):
                    continue
                if count:
                    self._compact(name, self.index.in_pack(name))
                    report.compacted += 1
            elif now - modified < MIN_AGE:
                continue  # a writer's pack not committed yet
            gone = IndexBatch()
            gone.gone(name)
            self._write_index(gone)
            self.objects.delete(key)
            report.removed_files += 1
            report.reclaimed_bytes += size
        yield
        self.merge_index(2 * LATE_WINDOW)
        report.usage_bytes = self.usage_bytes()
        return report

    def merge_index(self, older_than: float, at_least: int = MERGE_AT_LEAST) -> int:
        """Replace the index objects written more than ``older_than`` seconds ago by one
        that replays to the same chunks (under the gc lease: one merger at a time), so
        the log a replica lists stays short. Every replica has read those objects by
        then (a refresh lists everything younger than LATE_WINDOW, and all of them every
        FULL_LISTING_EVERY); one that reads the merged object as well ends up with the
        same chunks, the DELs it has seen since still blocking what they forgot.
        Returns how many objects were merged."""
        cutoff = time.time_ns() - int(older_than * 1e9)
        old = [
            key
            for key, _, _ in self.objects.listing("index/")
            if int(key.removeprefix("index/")[:16], 16) < cutoff
        ]
        if len(old) < at_least:
            return 0
        merged = ChunkIndex()
        for key in old:
            try:
                body, _ = self.objects.get(key)
            except KeyError:
                continue
            merged.apply(*decode(body))
        self._write_index(merged.checkpoint(), allow_empty=True)
        self.objects.delete_many(old)
        return len(old)

    def _compact(self, pack: str, records: list[tuple[bytes, Location]]) -> None:
        """Copy the live records of ``pack`` into a new pack. A grouped record some of
        whose members are dead is not copied whole: its live members (decoded, each
        checked against its id) are compressed again, grouped where that still pays; a
        member that fails its check is quarantined, never copied."""
        frames = self._read_at([where for _, where in records])  # these copies, not others
        name = f"{_stamp()}.pack"
        body = bytearray()
        batch = IndexBatch()
        moved: list[tuple[bytes, Location, Location]] = []
        by_record: dict[int, list[tuple[bytes, Location, Frame]]] = {}
        for (chunk_id, old), frame in zip(records, frames, strict=True):
            by_record.setdefault(old.offset, []).append((chunk_id, old, frame))
        for members in by_record.values():
            _, first, frame = members[0]
            if first.codec != Codec.GROUP or len(members) == len(group_parts(frame.data)[1]):
                offset = len(body) + RECORD_HEADER.size
                body += _record(
                    GROUP_RECORD_ID if first.codec == Codec.GROUP else members[0][0], frame
                )
                moved += [(i, old, old._replace(pack=name, offset=offset)) for i, old, _ in members]
                continue
            live: list[tuple[bytes, Location, bytes]] = []
            for chunk_id, old, member in members:
                try:
                    live.append((chunk_id, old, decode_frame(chunk_id, member)))
                except ChunkCorrupt:
                    batch.forget(Op.QUAR, chunk_id, old)
            records_again = compress_chunks(
                zstandard.ZstdCompressor(level=REGROUP_LEVEL),
                REGROUP_LEVEL,
                [i for i, _, _ in live],
                [data for _, _, data in live],
                self.group_level,
            )
            for record in records_again:
                new = record.frame
                offset = len(body) + RECORD_HEADER.size
                if new.codec == Codec.GROUP:
                    body += _record(GROUP_RECORD_ID, new)
                    for (chunk_id, frame), n in zip(group_chunks(new), record.members, strict=True):
                        where = Location(
                            name,
                            offset,
                            frame.share,
                            frame.raw_size,
                            Codec.GROUP,
                            new.digest,
                            frame.inner,
                            len(new.data),
                        )
                        moved.append((chunk_id, live[n][1], where))
                else:
                    (n,) = record.members
                    chunk_id, old, _ = live[n]
                    body += _record(chunk_id, new)
                    where = Location(
                        name, offset, len(new.data), new.raw_size, new.codec, new.digest
                    )
                    moved.append((chunk_id, old, where))
        self.objects.put(f"packs/{name}", bytes(body), create=True)
        for chunk_id, _, new_place in moved:
            batch.add(chunk_id, new_place, len(body))
        for chunk_id, old, _ in moved:
            batch.forget(Op.DEL, chunk_id, old)
        self._write_index(batch)

    def release_unused(self) -> None:
        return None

    def verify(self, repair: bool = False) -> VerifyReport:
        report = VerifyReport()
        self.refresh()
        corrupt: list[tuple[bytes, Location]] = []
        for pack, (count, _) in self.index.by_pack().items():
            if not count:
                continue
            records = self.index.in_pack(pack)
            try:
                body, _ = self.objects.get(f"packs/{pack}")
            except KeyError:
                report.problems.append(f"pack {pack}: indexed but not in the bucket")
                continue
            checked: tuple[int, set[GroupMember]] | None = None  # the last group's
            for chunk_id, where in records:
                report.chunks_checked += 1
                grouped = where.codec == Codec.GROUP
                start = where.offset - RECORD_HEADER.size
                header = body[start : where.offset]
                stored = body[where.offset : where.offset + where.extent]
                problem = None
                if len(header) != RECORD_HEADER.size or len(stored) != where.extent:
                    problem = "record cut short"
                else:
                    magic, named, raw, length = RECORD_HEADER.unpack(header)
                    if (CODEC_OF_MAGIC.get(magic), named, length) != (
                        where.codec,
                        GROUP_RECORD_ID if grouped else chunk_id,
                        where.extent,
                    ) or (not grouped and raw != where.raw_size):
                        problem = "record header does not match the index"
                try:
                    frame = _frame(stored, where)
                    if problem is None and (
                        not grouped or checked is None or checked[0] != where.offset
                    ):
                        check_frame(chunk_id, frame)  # what zstd restores rely on (a group: once)
                        if grouped:
                            checked = (where.offset, set(group_parts(stored)[1]))
                    if problem is None and grouped:
                        assert checked is not None
                        if GroupMember(chunk_id, where.raw_size, where.inner) not in checked[1]:
                            problem = "its grouped frame's table does not list it there"
                    if problem is None:
                        decode_frame(chunk_id, frame)  # and what the bytes really are
                except ChunkCorrupt as exc:
                    problem = str(exc)
                if problem is not None:
                    report.problems.append(f"chunk {chunk_id.hex()} in {pack}: {problem}")
                    report.corrupt.add(chunk_id)
                    corrupt.append((chunk_id, where))
        if repair and corrupt:
            batch = IndexBatch()
            for chunk_id, where in corrupt:
                batch.forget(Op.QUAR, chunk_id, where)
                report.repaired.append(f"quarantined chunk {chunk_id.hex()}")
            self._write_index(batch)
        return report

    def lease(self, name: str) -> S3Lease | None:
        return S3Lease.try_take(self.objects, f"leases/{name}")

    def compress_pending(
        self, level: int, budget: int, group_level: int = 0, full: bool = False
    ) -> int:
        """Nothing is pending here (``defers_compression`` is False): deferring would PUT
        every new byte to the bucket twice and read it back once."""
        return 0

    def stats(self) -> StoreStats:
        self._fresh()
        with self.index.lock:
            chunks, stored, raw = self.index.chunks.totals()
            quarantined = sum(1 for i in self.index.quarantine if i not in self.index.chunks)
        return StoreStats(chunks, stored, raw, self.index.usage(), quarantined)

    def close(self) -> None:
        return None


class S3ChunkWriter:
    def __init__(self, store: S3ChunkStore) -> None:
        self._store = store
        self._pending: dict[bytes, Location] = {}
        self._packs: dict[str, int] = {}  # uploaded, not indexed yet: name -> size
        self._name = f"{_stamp()}.pack"
        self._buffer = bytearray()
        # the pack being PUT while the next one fills (one at a time): name, size, PUT
        self._in_flight: tuple[str, int, Future[str]] | None = None
        # ids this writer pinned since _pinned_at: not pinned again until half the pin's
        # life is over; forgotten sooner once PINNED_MAX are held (an id asked again then
        # is pinned twice, 32 bytes in the bucket, instead of a set that grows with the
        # upload: ~140 bytes of memory an id)
        self._pinned: set[bytes] = set()
        self._pinned_at = 0.0

    def missing(self, ids: Iterable[bytes]) -> set[bytes]:
        store = self._store
        ids = set(ids)
        now = time.time()
        if now - self._pinned_at > store.pin_ttl / 2 or len(self._pinned) >= PINNED_MAX:
            self._pinned = set()
            self._pinned_at = now
        renew = ids - self._pinned
        store._pin(renew)  # before the lookup: a sweep after this sees the pin
        self._pinned |= renew
        wanted = ids - self._pending.keys()
        # "stored" is trusted only from an index read after the pin was written (one
        # LIST of the recent index objects per batch, not a request per chunk)
        store.refresh(time.monotonic())
        with store.index.lock:
            return {i for i in wanted if i not in store.index.chunks}

    def put(self, chunk_id: bytes, frame: Frame) -> None:
        if chunk_id in self._pending:
            return
        offset = self._append(chunk_id, frame)
        self._pending[chunk_id] = Location(
            self._name, offset, len(frame.data), frame.raw_size, frame.codec, frame.digest
        )
        self._flush_if_full()

    def put_group(self, body: Frame) -> None:
        members = group_chunks(body)
        assert not any(i in self._pending for i, _ in members), "a chunk twice in one writer"
        offset = self._append(GROUP_RECORD_ID, body)
        for chunk_id, frame in members:
            self._pending[chunk_id] = Location(
                self._name,
                offset,
                frame.share,
                frame.raw_size,
                Codec.GROUP,
                body.digest,
                frame.inner,
                len(body.data),
            )
        self._flush_if_full()

    def _append(self, record_id: bytes, frame: Frame) -> int:
        """Buffer one record into the current pack; returns its stored bytes' offset."""
        store = self._store
        record = _record(record_id, frame)
        if store.hard_limit is not None:
            flying = self._in_flight[1] if self._in_flight else 0
            pending = sum(self._packs.values()) + flying + len(self._buffer)
            if not store.admits(pending + len(record)):
                raise OSError(errno.ENOSPC, f"the store is at its hard limit of {store.hard_limit}")
        offset = len(self._buffer) + RECORD_HEADER.size
        self._buffer += record
        return offset

    def _flush_if_full(self) -> None:
        if len(self._buffer) >= PACK_TARGET:
            self._upload()
        if len(self._pending) >= COMMIT_ROWS:
            self.commit()

    def _upload(self) -> None:
        """PUT the pack filled so far in a thread, while the upload goes on filling the
        next (the previous PUT waited for first): a PUT's round trips overlap the
        upload's hashing and compression instead of adding to them."""
        if not self._buffer:
            return
        self._landed()
        body = bytes(self._buffer)
        # acknowledged by the object store only once durable; boto3 retries throttling
        put = _pack_puts().submit(self._store.objects.put, f"packs/{self._name}", body, create=True)
        self._in_flight = (self._name, len(body), put)
        self._name = f"{_stamp()}.pack"
        self._buffer = bytearray()

    def _landed(self) -> None:
        """Wait for the pack in flight, if any (its error is the upload's)."""
        if self._in_flight is not None:
            name, size, put = self._in_flight
            self._in_flight = None
            put.result()
            self._packs[name] = size

    def commit(self) -> None:
        if not self._pending:
            return
        self._upload()
        self._landed()
        batch = IndexBatch()
        for chunk_id, where in self._pending.items():
            batch.add(chunk_id, where, self._packs[where.pack])
        self._store._write_index(batch)
        self._pending.clear()
        self._packs.clear()

    def abort(self) -> None:
        try:
            self._landed()
        except Exception:  # noqa: BLE001 - nothing of it is visible; GC removes a leftover
            pass
        uploaded = [f"packs/{name}" for name in self._packs]
        self._pending.clear()
        self._packs.clear()
        self._buffer = bytearray()
        self._name = f"{_stamp()}.pack"
        if uploaded:
            self._store.objects.delete_many(uploaded)


@functools.cache
def _pack_puts() -> ThreadPoolExecutor:
    """The threads that PUT writers' packs (one in flight per writer); boto3's client
    is thread-safe, and a PUT waits on the network with the GIL released."""
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="cachesrv-pack-put")


class S3Lease:
    """An object ``{"owner", "expires"}`` taken with ``If-None-Match: *`` (or, once
    expired, by ``If-Match`` on the one seen), renewed by a thread of the holder every
    third of :data:`LEASE_TTL`, deleted on release: a crashed holder blocks the next
    one for at most LEASE_TTL."""

    def __init__(self, objects: ObjectStore, key: str, etag: str, owner: str) -> None:
        self._objects = objects
        self._key = key
        self._etag = etag
        self._owner = owner
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name=f"lease {key}", daemon=True)
        self._renewer.start()

    @staticmethod
    def _body(owner: str) -> bytes:
        return json.dumps({"owner": owner, "expires": time.time() + LEASE_TTL}).encode()

    @classmethod
    def try_take(cls, objects: ObjectStore, key: str) -> S3Lease | None:
        owner = f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"
        try:
            etag = objects.put(key, cls._body(owner), create=True)
        except PreconditionFailed:
            try:
                body, seen = objects.get(key)
            except KeyError:
                return None  # released meanwhile: the next try takes it
            try:
                expires = float(json.loads(body)["expires"])
            except (ValueError, KeyError, TypeError):
                expires = 0.0
            if expires >= time.time():
                return None
            try:
                etag = objects.put(key, cls._body(owner), if_match=seen)
            except PreconditionFailed:
                return None
        return cls(objects, key, etag, owner)

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_TTL / 3):
            try:
                self._etag = self._objects.put(
                    self._key, self._body(self._owner), if_match=self._etag
                )
            except (PreconditionFailed, OSError):
                return  # taken over or unreachable: it lapses

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._renewer.join()
        try:
            self._objects.delete(self._key, if_match=self._etag)
        except (PreconditionFailed, OSError):
            pass  # taken over since, or it lapses by itself


if TYPE_CHECKING:  # mypy checks the backend against the interface it claims
    _conforms: ChunkStore = S3ChunkStore(ObjectStore.__new__(ObjectStore))
