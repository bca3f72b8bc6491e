"""Restore: a manifest in, the exact uploaded bytes out.

Chunks are read in batches in a worker thread (one hand-over per few MiB, not
per chunk), verified against their ids, and kept in a bounded hot-chunk cache
so that many pipelines restoring the same cache do not decompress the same
chunks again and again. The manifest is pinned by the caller for the whole
response, so an overwrite or delete meanwhile never mixes versions.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence

import trio
import zstandard

from cachesrv.manifest import Manifest
from cachesrv.store import ChunkStore, Codec, check_frame, decode_frame

log = logging.getLogger(__name__)

BATCH_BYTES = 512 << 10  # raw bytes per hand-over to a worker thread (x restores = memory)
SEND_BYTES = 256 << 10  # bytes per send to the client


class ChunkReader:
    """Verified chunk reads through a byte-bounded LRU cache. Thread-safe.

    The cache holds raw chunks (plain restores) and stored zstd frames (``Content-Encoding:
    zstd`` restores), each verified once when read from disk; its size counts both.
    """

    def __init__(self, store: ChunkStore, cache_bytes: int, threads: int = 3) -> None:
        self.store = store
        self.cache_bytes = cache_bytes
        # Reads of all restores share a few threads: two cores gain nothing from more, and
        # each thread holds its own SQLite connections and zstd context (memory).
        self.limiter = trio.CapacityLimiter(threads)
        self._cache: OrderedDict[tuple[bytes, bool], bytes] = OrderedDict()
        self._cached = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def _recall(self, key: tuple[bytes, bool]) -> bytes | None:
        with self._lock:
            value = self._cache.get(key)
            if value is None:
                self.misses += 1
                return None
            self._cache.move_to_end(key)
            self.hits += 1
            return value

    def _remember(self, key: tuple[bytes, bool], value: bytes) -> None:
        if len(value) > self.cache_bytes // 8:
            return  # one huge chunk must not flush the whole cache
        with self._lock:
            if key not in self._cache:
                self._cache[key] = value
                self._cached += len(value)
            while self._cached > self.cache_bytes:
                _, evicted = self._cache.popitem(last=False)
                self._cached -= len(evicted)

    def read(self, chunk_id: bytes) -> bytes:
        return self.read_many([chunk_id])[0]

    def read_many(self, ids: Sequence[bytes]) -> list[bytes]:
        """Raw chunks, in order: cached ones from memory, the rest read together."""
        return self._read(ids, frames=False)

    def read_frames(self, ids: Sequence[bytes]) -> list[bytes]:
        """zstd frames, in order: stored ones verified by their frame digest (decoded where
        they have none); raw-stored chunks verified and compressed on the fly."""
        return self._read(ids, frames=True)

    def _read(self, ids: Sequence[bytes], frames: bool) -> list[bytes]:
        found = [self._recall((i, frames)) for i in ids]
        wanted = [i for i, value in zip(ids, found, strict=True) if value is None]
        if wanted:
            read = iter(self.store.read_frames(wanted))
            for index, value in enumerate(found):
                if value is None:
                    chunk_id = ids[index]
                    frame = next(read)
                    if not frames:
                        value = decode_frame(chunk_id, frame)
                    elif frame.codec == Codec.RAW:
                        value = _zstd_of(decode_frame(chunk_id, frame))
                    else:
                        check_frame(chunk_id, frame)
                        value = frame.data
                    self._remember((chunk_id, frames), value)
                    found[index] = value
        return found  # type: ignore[return-value]


def _zstd_of(data: bytes) -> bytes:
    compressor = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = _local.compressor = zstandard.ZstdCompressor(level=1)
    return compressor.compress(data)


_local = threading.local()

Slice = tuple[bytes | None, bytes | None, int, int]  # chunk id or None, inline bytes, lo, hi


def _batches(manifest: Manifest, start: int, end: int) -> Iterator[list[Slice]]:
    """The byte range in batches of about BATCH_BYTES, made as they are needed (a Go
    cache's manifest has ~20k pieces: listing them all per restore cost MBs each)."""
    batch: list[Slice] = []
    size = 0
    for piece, lo, hi in manifest.span(start, end):
        if size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append((piece.chunk_id, piece.inline, lo, hi))
        size += hi - lo
    yield batch


async def _in_thread(
    reader: ChunkReader, read: Callable[[Sequence[bytes]], list[bytes]], ids: list[bytes]
) -> list[bytes]:
    if not ids:
        return []
    return await trio.to_thread.run_sync(read, ids, limiter=reader.limiter)


def _part(data: bytes, lo: int, hi: int) -> bytes:
    return data if (lo, hi) == (0, len(data)) else data[lo:hi]


def _in_sends(parts: Iterable[bytes]) -> Iterator[bytes]:
    """Join consecutive parts into sends of about SEND_BYTES (fewer, larger ASGI messages)."""
    out: list[bytes] = []
    pending = 0
    for part in parts:
        out.append(part)
        pending += len(part)
        if pending >= SEND_BYTES:
            yield b"".join(out)
            out, pending = [], 0
    if out:
        yield b"".join(out)


async def restore_stream(
    reader: ChunkReader, manifest: Manifest, start: int = 0, end: int | None = None
) -> AsyncIterator[bytes]:
    """Yield the bytes [start, end) of the object, in pieces of about SEND_BYTES.

    Raises :class:`cachesrv.store.ChunkError` if a chunk is missing or corrupt:
    the caller must abort the response, never finish it with wrong bytes.
    """
    end = manifest.size if end is None else end
    for batch in _batches(manifest, start, end):
        ids = [cid for cid, _, _, _ in batch if cid is not None]
        chunks = iter(await _in_thread(reader, reader.read_many, ids))
        parts = (
            _part(next(chunks) if cid is not None else inline or b"", lo, hi)
            for cid, inline, lo, hi in batch
        )
        for data in _in_sends(parts):
            yield data


async def restore_zstd(reader: ChunkReader, manifest: Manifest) -> AsyncIterator[bytes]:
    """The whole object as concatenated zstd frames (``Content-Encoding: zstd``).

    Content chunks are sent as the frames they are stored in, no recompression;
    inline metadata runs are compressed on the fly (they are small).
    """
    compressor = zstandard.ZstdCompressor(level=1)
    for batch in _batches(manifest, 0, manifest.size):
        ids = [cid for cid, _, _, _ in batch if cid is not None]
        frames = iter(await _in_thread(reader, reader.read_frames, ids))
        parts = (
            next(frames) if cid is not None else compressor.compress(inline or b"")
            for cid, inline, _, _ in batch
        )
        for data in _in_sends(parts):
            yield data
