"""Chunk stores: where content chunks live, named by the BLAKE3 hash of their raw bytes.

A chunk is kept as one zstd frame, or raw where zstd would not save
:data:`RAW_BELOW` of it (already compressed data), or raw and *pending* where its
compression was deferred off the request path: the store compresses it later
(:meth:`ChunkStore.compress_pending`, run in the background) and it reads as raw
until then. The background may also compress a run of chunks together into one
*grouped* frame, where that saves :data:`GROUP_GAIN` of their raw bytes over
compressing them alone (a tree of small files: a 300-byte ``package.json`` alone
hardly compresses); each member's row then points at the group's record and at its
place in the decoded group. Each stored frame has a *frame digest* (BLAKE3-128 of the
stored bytes; for a chunk stored raw, the prefix of its id) recorded when it is
written, so a ``Content-Encoding: zstd`` restore can verify a frame without decoding
it; the chunk id stays the name and is what decoding paths and fsck check.
Backends (``local``: append-only pack files plus an SQLite index) implement
:class:`ChunkStore`; the pipelines above never know which one is in use.
"""

from __future__ import annotations

import collections
import enum
import struct
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, TypeVar

import blake3
import zstandard


class ChunkError(Exception):
    """A chunk cannot be served; the response carrying it must fail."""


class ChunkMissing(ChunkError):
    pass


class ChunkCorrupt(ChunkError):
    pass


def chunk_id(data: bytes | memoryview) -> bytes:
    return blake3.blake3(data, max_threads=1).digest()


class Codec(enum.IntEnum):
    """How a chunk's bytes are stored."""

    ZSTD = 0  # one zstd frame
    RAW = 1  # as they are: zstd would not save RAW_BELOW of them
    PENDING = 2  # as they are, not compressed yet: compress_pending() will
    GROUP = 3  # a slice of a grouped frame shared with other chunks (see group_body)


# A frame that does not save this fraction of the chunk is not worth a decode on every
# read: the chunk is stored raw instead.
RAW_BELOW = 0.03


def frame_digest(stored: bytes | bytearray | memoryview) -> bytes:
    """The digest recorded for stored bytes when they are written (checked on read)."""
    return blake3.blake3(stored, max_threads=1).digest(length=16)


class Frame(NamedTuple):
    """A chunk as stored: its bytes, raw size, codec and frame digest (None: written before
    digests were recorded). A grouped chunk's ``data`` is the whole group body (shared
    by its members, and what the digest covers), ``inner`` its offset once decoded and
    ``share`` the part of the body's bytes counted as its own (by raw size)."""

    data: bytes
    raw_size: int
    codec: Codec = Codec.ZSTD
    digest: bytes | None = None
    inner: int = 0
    share: int = 0

    @property
    def stored_size(self) -> int:
        """The bytes counted as this chunk's in the store's stored bytes."""
        return self.share if self.codec == Codec.GROUP else len(self.data)


# -- grouped frames --------------------------------------------------------------------
#
# A group body is ``zstd frame | member table | member count (u32)``; the table holds
# (id, raw size, offset in the decoded frame) per member, so a record is self-describing.

GROUP_RAW = 4 << 20  # raw bytes of the chunks compressed together into one frame, at most
# Grouping must save this fraction of the run's raw bytes over its chunks' frames stored
# alone, tried at the background level. Raw bytes, because that is what a group costs: a
# restore that needs one member decodes the whole group (and re-encodes its part for
# Content-Encoding: zstd). npm's runs save 11-38% of their frames, maven's jars (deflated
# already, so frames as big as raw) 2-8%, as one jar's pieces or two jars share entries;
# Go's objects (3.9x alone) save little of their raw bytes. Stored against zstd -3 of both
# tars, and the raw share grouped (bench.tiny_files; measured with a scratch variant):
#   2% of raw (this):        maven 0.596 (59%), npm 0.599 (100%), Go 0.442 (34%)
#   8% of the frames alone:  maven 0.606 (20%), npm 0.599 (100%), Go 0.445 (30%)
#   3% of the frames alone:  maven 0.597 (51%), npm 0.599 (100%), Go 0.416 (74%)
# The last groups most of the Go cache, and its cold restores lose a third: v2 reads v1's
# groups out of their order, and a restore decoded its 135 groups 683 times (plain 190 ->
# 130 MB/s, --compressed 230 -> 110).
GROUP_GAIN = 0.02
# The least zstd level a run is tried together at. Level 1's match finder misses much of
# what small files share (an upload to S3 compresses at --compression-level, 1): the npm
# pair, ingested as it comes and tried at 1, grouped 79% of its raw bytes and stored
# 20.1 MB; tried at 3, 99.9% and 18.6 MB (the background, at 3: 99.5%, 18.5 MB).
GROUP_TRIAL_LEVEL = 3
GROUP_MEMBER = struct.Struct("<32sII")
_COUNT = struct.Struct("<I")


class GroupMember(NamedTuple):
    chunk_id: bytes
    raw_size: int
    inner: int


def group_body(frame: bytes, members: Sequence[GroupMember]) -> bytes:
    table = b"".join(GROUP_MEMBER.pack(*m) for m in members)
    return frame + table + _COUNT.pack(len(members))


def group_parts(body: bytes | memoryview) -> tuple[memoryview, list[GroupMember]]:
    """A group body's zstd frame and member table. Raises :class:`ChunkCorrupt`."""
    view = memoryview(body)
    if len(view) < _COUNT.size:
        raise ChunkCorrupt("a grouped frame too short for its member table")
    (count,) = _COUNT.unpack_from(view, len(view) - _COUNT.size)
    start = len(view) - _COUNT.size - count * GROUP_MEMBER.size
    if start < 0:
        raise ChunkCorrupt("a grouped frame's member table is longer than the frame")
    members = [
        GroupMember(*GROUP_MEMBER.unpack_from(view, start + n * GROUP_MEMBER.size))
        for n in range(count)
    ]
    return view[:start], members


class _DecodedGroups:
    """Recently decoded groups, by frame digest: a restore reads a group's members over
    several spans, and decodes it once. Bounded in bytes; thread-safe."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: bytes) -> bytes | None:
        with self._lock:
            data = self._entries.get(key)
            if data is not None:
                self._entries.move_to_end(key)
            return data

    def put(self, key: bytes, data: bytes) -> None:
        with self._lock:
            if key in self._entries or len(data) > self.capacity:
                return
            self._entries[key] = data
            self._bytes += len(data)
            while self._bytes > self.capacity:
                _, old = self._entries.popitem(last=False)
                self._bytes -= len(old)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


decoded_groups = _DecodedGroups(2 * GROUP_RAW)


_local = threading.local()  # zstd (de)compressor objects must not be shared across threads


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    return decompressor


def decode_group(frame: Frame) -> bytes:
    """The decoded frame of a grouped chunk's group (from :data:`decoded_groups` when a
    member was read lately), decoded only from a body that matches its digest; each
    member taken from it is still checked against its id."""
    key = frame.digest or chunk_id(frame.data)
    data = decoded_groups.get(key)
    if data is None:
        if frame.digest is not None and frame_digest(frame.data) != frame.digest:
            raise ChunkCorrupt("a grouped frame does not match its digest")  # nor is it kept
        compressed, _ = group_parts(frame.data)
        try:
            data = _decompressor().decompress(compressed, max_output_size=GROUP_RAW)
        except zstandard.ZstdError as exc:
            raise ChunkCorrupt(f"undecodable grouped frame: {exc}") from exc
        decoded_groups.put(key, data)
    return data


def decode_frame(expected_id: bytes, frame: Frame) -> bytes:
    """The raw bytes of a stored frame, checked to be the chunk it claims to be."""
    try:
        if frame.codec == Codec.ZSTD:
            data = _decompressor().decompress(frame.data, max_output_size=frame.raw_size)
        elif frame.codec == Codec.GROUP:
            data = decode_group(frame)[frame.inner : frame.inner + frame.raw_size]
        else:
            data = frame.data
    except (zstandard.ZstdError, ChunkCorrupt) as exc:
        raise ChunkCorrupt(f"chunk {expected_id.hex()}: undecodable frame: {exc}") from exc
    if len(data) != frame.raw_size or chunk_id(data) != expected_id:
        raise ChunkCorrupt(f"chunk {expected_id.hex()}: content does not match its id")
    return data


def portable(expected_id: bytes, frame: Frame) -> Frame:
    """A frame that stands alone (what the chunk endpoints send): a grouped chunk's
    bytes, decoded and checked, stored raw; any other frame as it is."""
    if frame.codec != Codec.GROUP:
        return frame
    data = decode_frame(expected_id, frame)
    return Frame(data, len(data), Codec.RAW, frame_digest(data))


def check_frame(expected_id: bytes, frame: Frame) -> None:
    """Verify a stored frame as cheaply as it allows: by its frame digest (no decoding),
    else by decoding it. Raises :class:`ChunkCorrupt`."""
    if frame.digest is None:
        decode_frame(expected_id, frame)
    elif frame_digest(frame.data) != frame.digest:
        raise ChunkCorrupt(f"chunk {expected_id.hex()}: stored bytes do not match their digest")


def raw_digest(cid: bytes) -> bytes:
    """:func:`frame_digest` of a chunk stored as it is, from its id ``cid``
    (:func:`chunk_id` of the same bytes): BLAKE3's output is extendable, so the 16-byte
    digest of the bytes is the prefix of their 32-byte one, and a new byte is not hashed
    twice (the second hash was 9% of an ingest worker's time on a cold upload)."""
    return cid[:16]


def encode_chunk(
    compressor: zstandard.ZstdCompressor, cid: bytes, data: bytes | bytearray | memoryview
) -> Frame:
    """A new chunk as it is to be stored: compressed, or raw if zstd does not pay."""
    return choose_codec(cid, data, compressor.compress(data))


def choose_codec(cid: bytes, data: bytes | bytearray | memoryview, compressed: bytes) -> Frame:
    """Keep ``compressed`` (zstd of ``data``, whose id is ``cid``) unless it saves under
    RAW_BELOW."""
    if len(compressed) > len(data) * (1 - RAW_BELOW):
        return Frame(bytes(data), len(data), Codec.RAW, raw_digest(cid))
    return Frame(compressed, len(data), Codec.ZSTD, frame_digest(compressed))


def defer_chunk(cid: bytes, data: bytes | bytearray | memoryview) -> Frame:
    """A new chunk (id ``cid``) stored as it is, to be compressed by
    :meth:`ChunkStore.compress_pending`."""
    stored = bytes(data)
    return Frame(stored, len(stored), Codec.PENDING, raw_digest(cid))


class Compressed(NamedTuple):
    """One record :meth:`ChunkStore.compress_pending` stores: the chunks it holds (their
    places in the input) and its frame; several chunks: a grouped frame (codec GROUP,
    ``data`` the group body, ``raw_size`` the group's)."""

    members: list[int]
    frame: Frame


def member_frames(frame: Frame) -> list[Frame]:
    """How each chunk of a stored record reads back: a grouped frame's members, in the
    order of its table, each with its share of the body's bytes (by raw size); any other
    frame, itself."""
    if frame.codec != Codec.GROUP:
        return [frame]
    _, members = group_parts(frame.data)
    frames, counted = [], 0
    for k, member in enumerate(members):
        last = k == len(members) - 1
        share = (
            len(frame.data) - counted
            if last
            else len(frame.data) * member.raw_size // frame.raw_size
        )
        frames.append(
            Frame(frame.data, member.raw_size, Codec.GROUP, frame.digest, member.inner, share)
        )
        counted += share
    return frames


def group_chunks(body: Frame) -> list[tuple[bytes, Frame]]:
    """Each chunk of a grouped frame with how it reads back (:func:`member_frames`)."""
    _, members = group_parts(body.data)
    return [(m.chunk_id, f) for m, f in zip(members, member_frames(body), strict=True)]


T = TypeVar("T")


def pending_step(
    pending: Iterable[T], raw_size: Callable[[T], int], budget: int
) -> tuple[list[T], bool]:
    """The pending chunks one :meth:`ChunkStore.compress_pending` call takes, in the order
    they were written: up to ``budget`` raw bytes (the first whatever its size, so that a
    group is never larger), and whether the budget was reached (more is pending than one
    step: with ``full``, a step is only taken then)."""
    taken: list[T] = []
    raw = 0
    for item in pending:
        size = raw_size(item)
        if taken and raw + size > budget:
            return taken, True
        taken.append(item)
        raw += size
    return taken, raw >= budget


def compress_frames(
    level: int, ids: Sequence[bytes], frames: Sequence[Frame], group_level: int = 0
) -> tuple[list[Compressed], list[int]]:
    """Pending frames compressed at ``level`` (or raw where zstd does not pay), each
    checked by its digest first; returns the records to store (:func:`compress_chunks`)
    and the places of the damaged frames (they stay as they are, for fsck to find)."""
    good: list[int] = []
    damaged: list[int] = []
    for n, (cid, frame) in enumerate(zip(ids, frames, strict=True)):
        try:
            check_frame(cid, frame)
            good.append(n)
        except ChunkCorrupt:
            damaged.append(n)
    records = compress_chunks(
        zstandard.ZstdCompressor(level=level),
        level,
        [ids[n] for n in good],
        [frames[n].data for n in good],
        group_level,
    )
    return [Compressed([good[k] for k in r.members], r.frame) for r in records], damaged


def compress_chunks(
    compressor: zstandard.ZstdCompressor,
    level: int,
    ids: Sequence[bytes],
    raws: Sequence[bytes | bytearray | memoryview],
    group_level: int = 0,
    threads: int = 1,
) -> list[Compressed]:
    """Chunks (their ids and raw bytes, in the order they were written) as the records
    to store: each compressed alone by ``compressor`` (at zstd ``level``), or raw where
    zstd does not pay. With ``group_level``, runs of consecutive chunks (up to
    :data:`GROUP_RAW`) are also tried as one frame at ``level`` (at least
    :data:`GROUP_TRIAL_LEVEL`); a run where that saves
    :data:`GROUP_GAIN` of its raw bytes over its frames alone is stored as one frame at
    ``group_level``. Chunks zstd does not shrink alone are tried too: two pieces of one
    jar, or two jars with an entry in common, do shrink together. The background runs
    this on pending chunks; an upload that compresses as it goes (an object store's,
    where a deferred write would be PUT twice), on each batch of its new chunks.
    What loses: a restore with ``Content-Encoding: zstd`` that needs only part of a group
    re-encodes that part, so a big-file cache (whose chunks gain little together) keeps
    its frames apart."""
    if not raws:
        return []
    batch = compressor.multi_compress_to_buffer(list(raws), threads=threads)
    alone = [choose_codec(ids[k], raws[k], batch[k].tobytes()) for k in range(len(raws))]
    del batch  # its buffer is sized for the worst case (the run's raw size): not kept
    runs: list[list[int]] = []  # places in raws[]: consecutive chunks tried together
    run: list[int] | None = None
    run_raw = 0
    for k in range(len(raws)):
        if not group_level:
            runs.append([k])
            continue
        if run is None or run_raw + len(raws[k]) > GROUP_RAW:
            run, run_raw = [], 0
            runs.append(run)
        run.append(k)
        run_raw += len(raws[k])
    records: list[Compressed] = []
    trial, trial_level = compressor, level
    if group_level and level < GROUP_TRIAL_LEVEL:
        trial, trial_level = zstandard.ZstdCompressor(level=GROUP_TRIAL_LEVEL), GROUP_TRIAL_LEVEL
    for run in runs:
        grouped = _group(
            trial,
            trial_level,
            group_level,
            [ids[k] for k in run],
            [raws[k] for k in run],
            sum(len(alone[k].data) for k in run),
        )
        if grouped is None:
            records.extend(Compressed([k], alone[k]) for k in run)
        else:
            records.append(Compressed(list(run), grouped))
    return records


def _group(
    trial: zstandard.ZstdCompressor,
    trial_level: int,
    level: int,
    ids: Sequence[bytes],
    raws: Sequence[bytes | bytearray | memoryview],
    alone: int,
) -> Frame | None:
    """The run as one grouped frame, if compressing it together (tried at the trial's
    level) saves GROUP_GAIN of its raw bytes over ``alone`` (its frames' bytes stored
    apart); else None."""
    if len(raws) < 2:
        return None
    total = sum(len(r) for r in raws)
    together = _compress_run(trial, raws, total)
    if alone - len(together) < total * GROUP_GAIN:
        return None
    if level != trial_level:
        together = _compress_run(_group_compressor(level), raws, total)
    members, inner = [], 0
    for cid, raw in zip(ids, raws, strict=True):
        members.append(GroupMember(cid, len(raw), inner))
        inner += len(raw)
    body = group_body(together, members)
    return Frame(body, total, Codec.GROUP, frame_digest(body))


def _group_compressor(level: int) -> zstandard.ZstdCompressor:
    """Level ``level`` with its match tables capped at 2^20 entries: 5.5 MiB of context
    at level 9 instead of 10.5 (npm pair: 0.597 of zstd -3 instead of 0.596)."""
    params = zstandard.ZstdCompressionParameters.from_level(level, source_size=GROUP_RAW)
    return zstandard.ZstdCompressor(
        compression_params=zstandard.ZstdCompressionParameters.from_level(
            level,
            source_size=GROUP_RAW,
            hash_log=min(params.hash_log, 20),
            chain_log=min(params.chain_log, 20),
        )
    )


def _compress_run(
    compressor: zstandard.ZstdCompressor,
    raws: Sequence[bytes | bytearray | memoryview],
    total: int,
) -> bytes:
    """One frame of the run's bytes, streamed in (no joined copy of them)."""
    stream = compressor.compressobj(size=total)
    out = [stream.compress(raw) for raw in raws]
    out.append(stream.flush())
    return b"".join(out)


@dataclass(frozen=True)
class StoreStats:
    chunks: int
    stored_bytes: int  # compressed bytes of live chunk records
    raw_bytes: int  # uncompressed bytes of the same chunks
    disk_bytes: int  # bytes the backend occupies (packs incl. garbage not yet compacted)
    quarantined: int = 0  # chunks found corrupt, never served (fsck --repair)
    pending_bytes: int = 0  # raw bytes of chunks not compressed yet (compress_pending will)


# Seconds between two release_unused calls of a process. The background's compression
# drops every upload's pending pack, and a handle on it kept the unlinked file's disk and
# a descriptor until the next collection (every 10 minutes: a server taking 24 uploads at
# once held 220 more descriptors after each burst). A handle is closed at the call after
# the one that found its storage gone, so a read has that long to end.
RELEASE_INTERVAL = 5.0

# A writer commits by itself once it holds this many uncommitted chunks (~200 bytes of
# state each), so that a tree of 100,000 tiny files costs it no more than a big file.
COMMIT_ROWS = 8192


class ChunkWriter(Protocol):
    """One upload's way into a store: it looks chunks up, adds the new ones, makes them
    durable. Its pins and its uncommitted chunks are its own: another writer's commit or
    abort never touches them. Blocking; one thread at a time."""

    def missing(self, ids: Iterable[bytes]) -> set[bytes]:
        """The ids among ``ids`` that are not stored (looked up together). Every id asked
        about is *pinned*: no GC sweep deletes it until the pin expires, ``pin_ttl`` after
        it was written (the store's setting, fixed when it is opened). Asking again
        renews a pin older than half of that."""

    def put(self, chunk_id: bytes, frame: Frame) -> None:
        """Queue a chunk; it becomes readable and durable at this writer's :meth:`commit`
        (which ``put`` calls itself once :data:`COMMIT_ROWS` are queued). Raises
        ``OSError(ENOSPC)`` at the store's hard limit or a full disk."""

    def put_group(self, body: Frame) -> None:
        """:meth:`put` for the chunks of one grouped frame (codec GROUP, ``data`` the
        group body: its member table names them): one record, a row per member."""

    def commit(self) -> None:
        """Make every chunk put so far durable and visible, before any manifest names it."""

    def abort(self) -> None:
        """Forget the chunks put since the last commit (never visible; garbage for GC).
        Pins lapse at their expiry."""


class ChunkSink(Protocol):
    """What ingest needs: a writer per upload."""

    def writer(self) -> ChunkWriter: ...


class ChunkSource(Protocol):
    """What the restore pipeline needs. Blocking and thread-safe."""

    # Batches of frames a restore reads ahead of what it sends, in other threads: 0 where
    # a read is a pread (a hand-over to a thread costs more), more where each read waits
    # out a round trip (an object store's ranged GET).
    read_ahead: int

    def read_frame(self, chunk_id: bytes) -> Frame:
        """The chunk as stored, unverified (see :func:`decode_frame`, :func:`check_frame`)."""

    def read(self, chunk_id: bytes) -> bytes:
        """The raw bytes of a chunk, verified against its id."""

    def read_frames(self, ids: Sequence[bytes]) -> list[Frame]:
        """:meth:`read_frame` for many chunks at once, in order."""


class MarkSession(Protocol):
    """GC's mark: which manifests reference which chunks, held where the backend can
    join it with its chunks (the local one: temporary SQLite tables; memory stays flat
    whatever the store). Sizes are a chunk's *footprint*: the bytes it occupies in the
    backend, what freeing it gives back. One thread at a time; :meth:`close` when done."""

    def add(self, manifest_id: bytes, chunk_ids: Iterable[bytes], live: bool) -> None:
        """References of one root; ``live``: a name refers to it (eviction counts those)."""

    def seal(self) -> int:
        """Done adding; returns how many distinct stored-or-not chunks are marked."""

    def usage_by_manifest(self) -> dict[bytes, tuple[int, int]]:
        """Per live manifest: (footprint of chunks only it references, of those it shares)."""

    def footprint(self) -> tuple[int, int, int]:
        """(footprint of every stored chunk, of those marked by no live root, of the
        unmarked ones)."""

    def held_by(self, manifest_id: bytes) -> Iterator[tuple[bytes, int, int]]:
        """The stored chunks a live manifest references: (id, live references, footprint)."""

    def garbage(self, batch: int) -> Iterator[list[bytes]]:
        """Stored chunks no root references, in batches."""

    def close(self) -> None: ...


@dataclass
class MaintenanceReport:
    removed_files: int = 0  # leftovers of dead writers, unused containers
    reclaimed_bytes: int = 0
    compacted: int = 0  # containers rewritten without their garbage
    usage_bytes: int = 0  # what the hard limit measures, after the work


@dataclass
class VerifyReport:
    chunks_checked: int = 0
    problems: list[str] = field(default_factory=list)  # broken: fsck exits non-zero
    notes: list[str] = field(default_factory=list)  # harmless leftovers of a crash
    repaired: list[str] = field(default_factory=list)
    corrupt: set[bytes] = field(default_factory=set)


class Lease(Protocol):
    """Held by one process at a time across everything sharing the store."""

    def release(self) -> None: ...


class ChunkStore(ChunkSink, ChunkSource, Protocol):
    """What the ingest and restore pipelines and the lifecycle tools need."""

    def contains(self, ids: Iterable[bytes]) -> set[bytes]:
        """The ids among ``ids`` that are stored (a plain lookup: nothing is pinned)."""

    def quarantined(self, ids: Iterable[bytes]) -> set[bytes]:
        """The ids among ``ids`` that were quarantined as corrupt (and not stored anew)."""

    def iter_ids(self) -> Iterator[bytes]:
        """Every stored chunk id."""

    def iter_sizes(self) -> Iterator[tuple[bytes, int]]:
        """Every stored chunk id with its footprint."""

    def delete(self, ids: Iterable[bytes]) -> int:
        """Forget chunks, pinned or not; returns how many were stored."""

    def delete_unpinned(self, ids: Iterable[bytes], at: float) -> tuple[int, int]:
        """Forget those of ``ids`` that no pin protects at time ``at`` (one atomic step
        against concurrent :meth:`ChunkWriter.missing`: either the pin is seen or the
        lookup sees the chunk gone). Returns (chunks, stored bytes) deleted."""

    def pinned_ids(self, at: float) -> set[bytes]:
        """Ids some pin protects at time ``at``."""

    def prune_pins(self, before: float) -> int:
        """Forget pins that expired before ``before``; returns how many."""

    def mark(self) -> MarkSession:
        """A new, empty mark for one collection."""

    def usage_bytes(self) -> int:
        """Bytes the store occupies, as the hard limit and eviction measure them."""

    def admits(self, size: int) -> bool:
        """Whether ``size`` more bytes fit under the store's hard limit (None: always)."""

    def maintenance(
        self, max_size: int | None, compact_below: float
    ) -> Generator[None, None, MaintenanceReport]:
        """Backend housekeeping after a sweep (local: leftovers of dead writers, pack
        compaction), in increments; returns what it did."""

    def release_unused(self) -> None:
        """Let go of handles on storage that maintenance or compression removed (here or
        in another process); each call closes those found by the previous one, so that a
        read still using one never hits a reused handle. Every process that reads calls
        it every :data:`RELEASE_INTERVAL`."""

    def verify(self, repair: bool = False) -> VerifyReport:
        """fsck's half: every stored chunk against its id, the backend's own structure;
        ``repair`` quarantines corrupt chunks and removes leftovers."""

    # Whether new chunks may be stored pending (raw, compressed later by compress_pending)
    # to keep zstd off the upload's path: where a write is cheap to redo (local packs).
    defers_compression: bool

    def lease(self, name: str) -> Lease | None:
        """The named lease (``"gc"``: one collection at a time), or None if it is held."""

    def compress_pending(
        self, level: int, budget: int, group_level: int = 0, full: bool = False
    ) -> int:
        """Compress pending chunks (:data:`Codec.PENDING`) at zstd ``level``, about
        ``budget`` raw bytes of them in the order they were written (runs of them into
        grouped frames at ``group_level`` where that pays, see :func:`compress_frames`),
        and repoint them to their compressed copies (a chunk deleted meanwhile stays
        deleted); returns the raw bytes compressed, 0 once none is pending (or only
        damaged ones are: they stay for fsck), or with ``full`` while less than
        ``budget`` is (uploads still adding to it: a group is not cut short). Blocking;
        the caller paces it."""

    def stats(self) -> StoreStats: ...

    def close(self) -> None: ...
