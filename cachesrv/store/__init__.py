"""Chunk stores: where content chunks live, named by the BLAKE3 hash of their raw bytes.

A chunk is kept as one zstd frame, or raw where zstd would not save
:data:`RAW_BELOW` of it (already compressed data), or raw and *pending* where its
compression was deferred off the request path: the store compresses it later
(:meth:`ChunkStore.compress_pending`, run in the background) and it reads as raw
until then. Each stored frame has a *frame digest* (BLAKE3-128 of the stored
bytes) recorded when it is written, so a ``Content-Encoding: zstd`` restore can
verify a frame without decoding it; the chunk id stays the name and is what
decoding paths and fsck check.
Backends (``local``: append-only pack files plus an SQLite index) implement
:class:`ChunkStore`; the pipelines above never know which one is in use.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

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


# A frame that does not save this fraction of the chunk is not worth a decode on every
# read: the chunk is stored raw instead.
RAW_BELOW = 0.03


def frame_digest(stored: bytes | bytearray | memoryview) -> bytes:
    """The digest recorded for stored bytes when they are written (checked on read)."""
    return blake3.blake3(stored, max_threads=1).digest(length=16)


class Frame(NamedTuple):
    """A chunk as stored: its bytes, raw size, codec and frame digest (None: written before
    digests were recorded)."""

    data: bytes
    raw_size: int
    codec: Codec = Codec.ZSTD
    digest: bytes | None = None


_local = threading.local()  # zstd (de)compressor objects must not be shared across threads


def decode_frame(expected_id: bytes, frame: Frame) -> bytes:
    """The raw bytes of a stored frame, checked to be the chunk it claims to be."""
    if frame.codec != Codec.ZSTD:
        data = frame.data
    else:
        decompressor = getattr(_local, "decompressor", None)
        if decompressor is None:
            decompressor = _local.decompressor = zstandard.ZstdDecompressor()
        try:
            data = decompressor.decompress(frame.data, max_output_size=frame.raw_size)
        except zstandard.ZstdError as exc:
            raise ChunkCorrupt(f"chunk {expected_id.hex()}: undecodable frame: {exc}") from exc
    if len(data) != frame.raw_size or chunk_id(data) != expected_id:
        raise ChunkCorrupt(f"chunk {expected_id.hex()}: content does not match its id")
    return data


def check_frame(expected_id: bytes, frame: Frame) -> None:
    """Verify a stored frame as cheaply as it allows: by its frame digest (no decoding),
    else by decoding it. Raises :class:`ChunkCorrupt`."""
    if frame.digest is None:
        decode_frame(expected_id, frame)
    elif frame_digest(frame.data) != frame.digest:
        raise ChunkCorrupt(f"chunk {expected_id.hex()}: stored bytes do not match their digest")


def encode_chunk(
    compressor: zstandard.ZstdCompressor, data: bytes | bytearray | memoryview
) -> Frame:
    """A new chunk as it is to be stored: compressed, or raw if zstd does not pay."""
    return choose_codec(data, compressor.compress(data))


def choose_codec(data: bytes | bytearray | memoryview, compressed: bytes) -> Frame:
    """Keep ``compressed`` (zstd of ``data``) unless it saves under RAW_BELOW."""
    if len(compressed) > len(data) * (1 - RAW_BELOW):
        stored = bytes(data)
        return Frame(stored, len(data), Codec.RAW, frame_digest(stored))
    return Frame(compressed, len(data), Codec.ZSTD, frame_digest(compressed))


def defer_chunk(data: bytes | bytearray | memoryview) -> Frame:
    """A new chunk stored as it is, to be compressed by :meth:`ChunkStore.compress_pending`."""
    stored = bytes(data)
    return Frame(stored, len(stored), Codec.PENDING, frame_digest(stored))


def compress_frames(
    compressor: zstandard.ZstdCompressor, ids: Sequence[bytes], frames: Sequence[Frame]
) -> list[Frame | None]:
    """Pending frames compressed (or raw where zstd does not pay), each checked by its
    digest first: a damaged one gives None and stays as it is, for fsck to find."""
    good: list[int] = []
    for n, (chunk_id, frame) in enumerate(zip(ids, frames, strict=True)):
        try:
            check_frame(chunk_id, frame)
            good.append(n)
        except ChunkCorrupt:
            pass
    result: list[Frame | None] = [None] * len(frames)
    if not good:
        return result
    raws: list[bytes | bytearray | memoryview] = [frames[n].data for n in good]
    batch = compressor.multi_compress_to_buffer(raws, threads=1)
    for k, n in enumerate(good):
        result[n] = choose_codec(raws[k], batch[k].tobytes())
    return result


@dataclass(frozen=True)
class StoreStats:
    chunks: int
    stored_bytes: int  # compressed bytes of live chunk records
    raw_bytes: int  # uncompressed bytes of the same chunks
    disk_bytes: int  # bytes the backend occupies (packs incl. garbage not yet compacted)
    quarantined: int = 0  # chunks found corrupt, never served (fsck --repair)
    pending_bytes: int = 0  # raw bytes of chunks not compressed yet (compress_pending will)


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
        """Let go of handles on storage that maintenance removed (here or in another
        process); each call closes those found by the previous one, so that a read still
        using one never hits a reused handle."""

    def verify(self, repair: bool = False) -> VerifyReport:
        """fsck's half: every stored chunk against its id, the backend's own structure;
        ``repair`` quarantines corrupt chunks and removes leftovers."""

    # Whether new chunks may be stored pending (raw, compressed later by compress_pending)
    # to keep zstd off the upload's path: where a write is cheap to redo (local packs).
    defers_compression: bool

    def lease(self, name: str) -> Lease | None:
        """The named lease (``"gc"``: one collection at a time), or None if it is held."""

    def compress_pending(self, level: int, budget: int) -> int:
        """Compress pending chunks (:data:`Codec.PENDING`) at zstd ``level``, about
        ``budget`` raw bytes of them, and repoint them to their compressed copies (a
        chunk deleted meanwhile stays deleted); returns the raw bytes compressed, 0 once
        none is pending (or only damaged ones are: they stay for fsck). Blocking; the
        caller paces it."""

    def stats(self) -> StoreStats: ...

    def close(self) -> None: ...
