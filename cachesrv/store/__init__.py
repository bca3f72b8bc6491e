"""Chunk stores: where content chunks live, named by the BLAKE3 hash of their raw bytes.

A chunk is kept as one zstd frame, or raw where zstd would not save
:data:`RAW_BELOW` of it (already compressed data). Each stored frame has a
*frame digest* (BLAKE3-128 of the stored bytes) recorded when it is written,
so a ``Content-Encoding: zstd`` restore can verify a frame without decoding
it; the chunk id stays the name and is what decoding paths and fsck check.
Backends (``local``: append-only pack files plus an SQLite index) implement
:class:`ChunkStore`; the pipelines above never know which one is in use.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
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
    if frame.codec == Codec.RAW:
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


@dataclass(frozen=True)
class StoreStats:
    chunks: int
    stored_bytes: int  # compressed bytes of live chunk records
    raw_bytes: int  # uncompressed bytes of the same chunks
    disk_bytes: int  # bytes the backend occupies (packs incl. garbage not yet compacted)


class ChunkSink(Protocol):
    """What ingest needs: look up, add, make durable. Blocking and thread-safe."""

    def missing(self, ids: Iterable[bytes]) -> set[bytes]:
        """The ids among ``ids`` that are not stored (looked up together)."""

    def put(self, chunk_id: bytes, frame: Frame) -> None:
        """Queue a chunk; it becomes readable and durable at the next :meth:`commit`."""

    def commit(self) -> None:
        """Make every chunk put so far durable and visible, before any manifest names it."""


class ChunkStore(ChunkSink, Protocol):
    """What the ingest and restore pipelines and the lifecycle tools need."""

    def read_frame(self, chunk_id: bytes) -> Frame:
        """The chunk as stored, unverified (see :func:`decode_frame`, :func:`check_frame`)."""

    def read(self, chunk_id: bytes) -> bytes:
        """The raw bytes of a chunk, verified against its id."""

    def read_frames(self, ids: Sequence[bytes]) -> list[Frame]:
        """:meth:`read_frame` for many chunks at once, in order."""

    def iter_ids(self) -> Iterator[bytes]:
        """Every stored chunk id."""

    def delete(self, ids: Iterable[bytes]) -> int:
        """Forget chunks (garbage collection); returns how many were stored."""

    def stats(self) -> StoreStats: ...

    def close(self) -> None: ...
