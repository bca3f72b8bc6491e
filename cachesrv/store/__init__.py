"""Chunk stores: where content chunks live, named by the BLAKE3 hash of their raw bytes.

A chunk is kept as one zstd frame. Backends (``local``: append-only pack files
plus an SQLite index) implement :class:`ChunkStore`; the pipelines above never
know which one is in use. Every read is verified against the chunk's id.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

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


_local = threading.local()  # zstd (de)compressor objects must not be shared across threads


def decode_frame(expected_id: bytes, frame: bytes, raw_size: int) -> bytes:
    """Decompress a stored frame and check it is the chunk it claims to be."""
    decompressor = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    try:
        data = decompressor.decompress(frame, max_output_size=raw_size)
    except zstandard.ZstdError as exc:
        raise ChunkCorrupt(f"chunk {expected_id.hex()}: undecodable frame: {exc}") from exc
    if len(data) != raw_size or chunk_id(data) != expected_id:
        raise ChunkCorrupt(f"chunk {expected_id.hex()}: content does not match its id")
    return data


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

    def put(self, chunk_id: bytes, raw_size: int, frame: bytes) -> None:
        """Queue a chunk; it becomes readable and durable at the next :meth:`commit`."""

    def commit(self) -> None:
        """Make every chunk put so far durable and visible, before any manifest names it."""


class ChunkStore(ChunkSink, Protocol):
    """What the ingest and restore pipelines and the lifecycle tools need."""

    def read_frame(self, chunk_id: bytes) -> tuple[bytes, int]:
        """The stored zstd frame and the raw size, unverified (see :func:`decode_frame`)."""

    def read(self, chunk_id: bytes) -> bytes:
        """The raw bytes of a chunk, verified against its id."""

    def read_frames(self, ids: Sequence[bytes]) -> list[tuple[bytes, int]]:
        """:meth:`read_frame` for many chunks at once, in order."""

    def iter_ids(self) -> Iterator[bytes]:
        """Every stored chunk id."""

    def delete(self, ids: Iterable[bytes]) -> int:
        """Forget chunks (garbage collection); returns how many were stored."""

    def stats(self) -> StoreStats: ...

    def close(self) -> None: ...
