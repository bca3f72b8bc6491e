"""One restore, blocking: a byte range of a stored object in, verified bytes out on a socket.

A job runs in a restore worker process (or, with ``--restore-workers 0``, in a
thread of the server): it reads the manifest, serves each span of the object
from the hot cache when it is there and verifies (one ``pread`` and one digest
per MiB), else decodes it from the chunk store (a batch of frames per span,
``multi_decompress_to_buffer``, every chunk checked against its id) and adds it
to the hot cache. ``Content-Encoding: zstd`` jobs send the stored frames as
they are, each verified by its frame digest, without decoding them.

The output is a stream of frames on a socket, ``kind (1) | length (u32 LE) |
payload``: ``D`` data, then ``E`` (JSON numbers) at the end, or ``X`` (a
message) as soon as anything cannot be served. The server sends its status line
only after the first ``D``, so damage found at the start is a clean 500; after
that an ``X`` aborts the response, so the client sees a failed transfer, never
wrong bytes. The socket's buffer is the read-ahead: the job runs ahead of the
client by as much as it holds, and blocks (back-pressure) when it is full.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import logging
import socket
import struct
import threading
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import blake3
import zstandard

from cachesrv.catalog import CatalogBackend
from cachesrv.manifest import ManifestError, Piece, PieceStream
from cachesrv.restore.hot import SPAN, HotCache, Written
from cachesrv.store import (
    ChunkCorrupt,
    ChunkError,
    ChunkStore,
    Codec,
    Frame,
    check_frame,
    chunk_id,
    decode_frame,
    decode_group,
    decoded_groups,
)

log = logging.getLogger("cachesrv.restore")

FRAME = struct.Struct("<cI")
DATA, END, FAIL = b"D", b"E", b"X"
UNAVAILABLE = b"U"  # the store did not answer in time: retry later, the object is whole
ZSTD_BATCH = 64  # content pieces per read of stored frames, at most
READERS = 16  # threads reading ahead for every restore of this process (object stores)
ZSTD_FRAME = struct.Struct("<IBI")  # magic, descriptor (single segment, 4-byte size), size
ZSTD_MAGIC = 0xFD2FB528
RAW_BLOCK = 128 << 10  # largest zstd block
HOT_ZSTD_LEVEL = 3  # of the zstd spans a warm-up keeps (background work: 4.28x, Go cache)
RECORD_EVERY = 32  # spans: newly hot spans become visible to other restores this often
# Spans decoded at once in this process, whatever the number of restores: two cores gain
# nothing from more, and each decode holds a few MiB (memory is one budget).
_decoding = threading.BoundedSemaphore(2)
T = TypeVar("T")


@dataclass(frozen=True)
class Job:
    manifest_id: bytes
    digest: bytes  # the object's BLAKE3 (hot-cache key)
    size: int
    start: int = 0
    end: int = -1  # exclusive; -1: the object's end
    zstd: bool = False
    piece: int = SPAN  # bytes per frame sent (smaller when many restores share memory)
    warm: bool = False  # only fill the hot cache (after an upload): nothing is sent
    # the connection sends files itself (cachesrv.http.zerocopy): hot spans may come as
    # hot.FilePart, sent with sendfile(2)
    zero_copy: bool = False

    @property
    def stop(self) -> int:
        """Where the job's bytes end (exclusive): ``end``, or the object's size."""
        return self.size if self.end < 0 else self.end

    def encode(self) -> bytes:
        fields = asdict(self)
        fields["manifest_id"], fields["digest"] = self.manifest_id.hex(), self.digest.hex()
        return json.dumps(fields).encode()

    @classmethod
    def decode(cls, data: bytes) -> Job:
        fields = json.loads(data)
        fields["manifest_id"] = bytes.fromhex(fields["manifest_id"])
        fields["digest"] = bytes.fromhex(fields["digest"])
        return cls(**fields)


@dataclass
class JobStats:
    hot_hits: int = 0  # spans served from the hot cache
    hot_sendfiles: int = 0  # of them, sent with sendfile(2) (hot.FilePart)
    hot_misses: int = 0  # spans decoded from the chunk store
    corrupt: int = 0  # chunks that failed verification


@dataclass
class Source:
    """What jobs read, one per process: chunks, manifests and the hot cache."""

    store: ChunkStore
    catalog: CatalogBackend
    hot: HotCache | None
    # manifest id -> [body, jobs reading it]: concurrent restores of one version share
    # one body (the Go cache's is 1 MB; 16 restores held 16 copies); none is kept after
    _bodies: dict[bytes, list[Any]] = field(default_factory=dict, repr=False)
    _bodies_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @contextlib.contextmanager
    def manifest_body(self, manifest_id: bytes) -> Iterator[bytes | None]:
        """The encoded manifest (None: the catalog has none), while the block runs."""
        with self._bodies_lock:
            held = self._bodies.get(manifest_id)
            if held is not None:
                held[1] += 1
        if held is None:
            body = self.catalog.manifest_body(manifest_id)
            if body is None:
                yield None
                return
            with self._bodies_lock:
                held = self._bodies.setdefault(manifest_id, [body, 0])
                held[1] += 1
        try:
            yield held[0]
        finally:
            with self._bodies_lock:
                held[1] -= 1
                if held[1] == 0:
                    del self._bodies[manifest_id]


def run(source: Source, job: Job, out: socket.socket) -> None:
    """Serve ``job`` onto ``out`` (blocking); its numbers go in the ``END`` frame. Never
    raises for a broken object or a peer that went away: those end the stream."""
    stats = JobStats()
    try:
        with source.manifest_body(job.manifest_id) as body:
            if body is None:
                raise KeyError(job.manifest_id)
            manifest = PieceStream.stored(job.manifest_id, body)  # read as it is served
            parts = (
                _zstd_hot(source, job, manifest, stats) or _zstd(source, manifest, job.piece)
                if job.zstd
                else _plain(source, job, manifest, stats)
            )
            for part in parts:
                if not job.warm:
                    send_frame(out, DATA, part)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the response ended early (client gone): nothing more to send
    except (ChunkError, ManifestError, KeyError) as exc:
        if isinstance(exc, ChunkCorrupt | ManifestError):
            stats.corrupt += 1
        message = "its manifest is gone" if isinstance(exc, KeyError) else str(exc)
        log.error("restore of %s: %s", job.manifest_id.hex()[:16], message)
        _try_send(out, FAIL, message.encode())
    except Exception as exc:  # a bug must not take the worker down with it
        if isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT:
            # the object store out of reach (cachesrv.http.errors: 503 + Retry-After)
            log.warning("restore of %s: %s", job.manifest_id.hex()[:16], exc)
            _try_send(out, UNAVAILABLE, str(exc).encode())
        else:
            log.exception("restore of %s failed", job.manifest_id.hex()[:16])
            _try_send(out, FAIL, f"restore failed: {exc}".encode())
    else:
        _try_send(out, END, json.dumps(asdict(stats)).encode())
    finally:
        decoded_groups.clear()  # memory is one budget: a restore's groups go with it


def send_frame(sock: socket.socket, kind: bytes, payload: bytes | memoryview = b"") -> None:
    views = [memoryview(FRAME.pack(kind, len(payload))), memoryview(payload)]
    while views:
        sent = sock.sendmsg(views)
        while sent and views:
            if sent >= len(views[0]):
                sent -= len(views.pop(0))
            else:
                views[0] = views[0][sent:]
                sent = 0
        views = [v for v in views if len(v)]


def _try_send(sock: socket.socket, kind: bytes, payload: bytes) -> None:
    try:
        send_frame(sock, kind, payload)
    except OSError:
        pass


# -- plain (identity) restores ----------------------------------------------------


def _plain(
    source: Source, job: Job, manifest: PieceStream, stats: JobStats
) -> Iterator[memoryview]:
    end = job.stop
    if end <= job.start:
        return
    hot = source.hot
    known = hot.lookup(job.digest) if hot is not None else {}
    # a warm-up also keeps the object's Content-Encoding: zstd form (see _zstd_hot)
    zkey = zstd_key(job.digest)
    zknown = hot.lookup(zkey) if hot is not None and job.warm else {}
    zwritten: list[Written] = []
    compressor = zstandard.ZstdCompressor(level=HOT_ZSTD_LEVEL) if job.warm else None
    cold = _ColdReader(source.store)
    spans = range(job.start // SPAN, (end - 1) // SPAN + 1)
    depth = _depth(source.store, job.piece)
    # the frames of the spans not hot, in order, read ahead (an object store's round trips)
    ahead = (
        _read_ahead(source.store, _span_ids(manifest, [i for i in spans if i not in known]), depth)
        if depth > 0
        else None
    )
    written: list[Written] = []
    try:
        for index in spans:
            lo, hi = index * SPAN, min((index + 1) * SPAN, manifest.size)
            span = known.get(index)
            if job.warm and span is not None and index in zknown:
                continue  # already hot: a warm-up does not read it back
            data: bytes | memoryview | None = None
            if hot is not None and span is not None:
                data = hot.read(job.digest, index, span)
            if data is None:
                frames = None
                if ahead is not None and span is None:  # one of the spans read ahead
                    (_, ids), stored = next(ahead)
                    frames = dict(zip(ids, stored, strict=True))
                with _decoding:
                    data = cold.read(manifest, lo, hi, frames)
                stats.hot_misses += 1
                if hot is not None:
                    added = hot.append(index, data)
                    if added is not None:
                        written.append(added)
                    if len(written) >= RECORD_EVERY:
                        hot.record(job.digest, written)
                        written = []
            else:
                stats.hot_hits += 1
            if compressor is not None and hot is not None and index not in zknown:
                added = hot.append(index, compressor.compress(data))
                if added is not None:
                    zwritten.append(added)
            view = memoryview(data)[max(job.start - lo, 0) : min(end, hi) - lo]
            for at in range(0, len(view), job.piece):
                yield view[at : at + job.piece]
            if hot is not None and span is not None:
                hot.release(span)
    finally:
        if ahead is not None:
            ahead.close()
        if hot is not None:
            hot.record(job.digest, written)
            hot.record(zkey, zwritten)


def _span_ids(manifest: PieceStream, indices: list[int]) -> Iterator[tuple[int, list[bytes]]]:
    """Each span of ``indices`` (in order) with the chunk ids it needs, read from a cursor
    of its own on the manifest."""
    stream = PieceStream(manifest.blob)
    for index in indices:
        pieces = stream.span(index * SPAN, min((index + 1) * SPAN, manifest.size))
        yield index, list(dict.fromkeys(p.chunk_id for p, _, _ in pieces if p.chunk_id is not None))


class _ColdReader:
    """Spans decoded from the chunk store: one batch read and decode per span; the chunk
    that straddles two spans is decoded once."""

    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self.decompressor = zstandard.ZstdDecompressor()
        self._last: tuple[bytes, bytes | memoryview] | None = None

    def read(
        self, manifest: PieceStream, lo: int, hi: int, frames: dict[bytes, Frame] | None = None
    ) -> bytes:
        """Bytes [lo, hi) of the object; ``frames``: those of its chunks read already."""
        pieces = list(manifest.span(lo, hi))
        last = self._last
        wanted = [
            p.chunk_id
            for p, _, _ in pieces
            if p.chunk_id is not None and (last is None or p.chunk_id != last[0])
        ]
        chunks = self._decode(list(dict.fromkeys(wanted)), frames)
        if last is not None:
            chunks[last[0]] = last[1]
        parts: list[bytes | memoryview] = []
        last_piece: tuple[bytes, bytes | memoryview] | None = None
        for piece, a, b in pieces:
            data = piece.inline if piece.chunk_id is None else chunks[piece.chunk_id]
            assert data is not None
            parts.append(data if (a, b) == (0, len(data)) else memoryview(data)[a:b])
            if piece.chunk_id is not None:
                last_piece = (piece.chunk_id, data)
        if last_piece is not None:  # a copy: a view would keep the whole batch alive
            self._last = (last_piece[0], bytes(last_piece[1]))
        return b"".join(parts)

    def _decode(
        self, ids: Sequence[bytes], given: dict[bytes, Frame] | None = None
    ) -> dict[bytes, bytes | memoryview]:
        if not ids:
            return {}
        if given is not None and all(i in given for i in ids):
            frames = [given[i] for i in ids]
        else:
            frames = self.store.read_frames(ids)
        packed = [i for i, f in enumerate(frames) if f.codec == Codec.ZSTD]
        decoded: dict[int, bytes | memoryview] = {}
        if packed:
            sizes = struct.pack(f"<{len(packed)}Q", *(frames[i].raw_size for i in packed))
            try:
                batch = self.decompressor.multi_decompress_to_buffer(
                    [frames[i].data for i in packed], decompressed_sizes=sizes
                )
                decoded = {i: memoryview(batch[k]) for k, i in enumerate(packed)}  # type: ignore[arg-type]
            except zstandard.ZstdError:
                # one frame is damaged: decode one by one, which names it
                decoded = {i: decode_frame(ids[i], frames[i]) for i in packed}
        chunks: dict[bytes, bytes | memoryview] = {}
        for i, (cid, frame) in enumerate(zip(ids, frames, strict=True)):
            data: bytes | memoryview
            if frame.codec == Codec.GROUP:  # a slice of a group decoded once for its members
                try:
                    group = decode_group(frame)
                except ChunkCorrupt as exc:
                    raise ChunkCorrupt(f"chunk {cid.hex()}: {exc}") from exc
                # a copy, not a view: a view would keep its decoded group (4 MiB) alive
                # until the span is joined, a group per member once decoded_groups has
                # let it go (a span of an npm tree over 3 groups held 50-70 MB so)
                data = group[frame.inner : frame.inner + frame.raw_size]
            else:
                data = decoded.get(i, frame.data)
            if len(data) != frame.raw_size or chunk_id(data) != cid:
                raise ChunkCorrupt(f"chunk {cid.hex()}: content does not match its id")
            chunks[cid] = data
        return chunks


# -- Content-Encoding: zstd restores ---------------------------------------------


def zstd_key(digest: bytes) -> bytes:
    """The hot cache's key for the ``Content-Encoding: zstd`` form of the object with this
    digest: a zstd frame per span of the object (see :func:`_zstd_hot`)."""
    return blake3.blake3(b"zstd spans of " + digest).digest()


def _zstd_hot(
    source: Source, job: Job, manifest: PieceStream, stats: JobStats
) -> Iterator[bytes | memoryview] | None:
    """The object as a zstd frame per span from the hot cache, where its warm-up left
    them all (None otherwise: the stored frames are sent instead). One digest per span,
    through the segment's mapping, whatever the object's frames: a tree of small files (grouped
    frames, tar headers between them) restores compressed as fast as a big file. A span
    that fails its digest is decoded from the store and compressed again."""
    hot = source.hot
    if hot is None:
        return None
    key = zstd_key(job.digest)
    known = hot.lookup(key)
    spans = range((manifest.size + SPAN - 1) // SPAN)
    if not spans or any(i not in known for i in spans):
        return None

    def parts() -> Iterator[bytes | memoryview]:
        cold = _ColdReader(source.store)
        for index in spans:
            span = known[index]
            data = hot.read(key, index, span)
            if data is None:
                lo, hi = index * SPAN, min((index + 1) * SPAN, manifest.size)
                with _decoding:
                    plain = cold.read(manifest, lo, hi)
                data = memoryview(zstandard.ZstdCompressor(level=1).compress(plain))
                stats.hot_misses += 1
            else:
                stats.hot_hits += 1
            for at in range(0, len(data), job.piece):
                yield data[at : at + job.piece]
            hot.release(span)

    return parts()


def _zstd(source: Source, manifest: PieceStream, piece_bytes: int) -> Iterator[bytes]:
    """The whole object as concatenated zstd frames: stored frames as they are (verified
    by their digest), raw-stored chunks wrapped in frames of raw blocks (no compression:
    zstd would not have saved anything). What has no frame of its own is compressed on
    the fly, each run of it in one frame: inline metadata, and grouped chunks (a group's
    frame holds chunks this object may not have, in another order), which are decoded
    from their group (decoded once for its members) and checked against their ids; a run
    is at most one batch (``piece_bytes``)."""
    compressor = zstandard.ZstdCompressor(level=1)
    batches = _zstd_batches(manifest, piece_bytes)
    for (batch, _), stored in _read_ahead(source.store, batches, _depth(source.store, piece_bytes)):
        frames = iter(stored)
        out: list[bytes | memoryview] = []
        loose: list[bytes] = []  # the run to compress here
        for piece in batch:
            if piece.chunk_id is None:
                assert piece.inline is not None
                loose.append(piece.inline)
                continue
            frame: Frame = next(frames)
            if frame.codec == Codec.GROUP:
                loose.append(decode_frame(piece.chunk_id, frame))
                continue
            if loose:
                out.append(compressor.compress(b"".join(loose)))
                loose = []
            if frame.codec != Codec.ZSTD:  # raw, or pending compression
                out += raw_frame(decode_frame(piece.chunk_id, frame))
            else:
                check_frame(piece.chunk_id, frame)
                out.append(frame.data)
        if loose:
            out.append(compressor.compress(b"".join(loose)))
        yield b"".join(out)


def _zstd_batches(
    manifest: PieceStream, piece_bytes: int
) -> Iterator[tuple[list[Piece], list[bytes]]]:
    """The pieces in order, a batch per frame sent (up to ZSTD_BATCH chunks or
    ``piece_bytes`` of the object), each with the ids of its chunks."""
    batch: list[Piece] = []
    ids: list[bytes] = []
    raw = 0
    for _, piece in manifest:
        batch.append(piece)
        if piece.chunk_id is not None:
            ids.append(piece.chunk_id)
        raw += piece.size
        if len(ids) >= ZSTD_BATCH or raw >= piece_bytes:
            yield batch, ids
            batch, ids, raw = [], [], 0
    if batch:
        yield batch, ids


def _depth(store: ChunkStore, piece_bytes: int) -> int:
    """How far a restore reads ahead: the store's ``read_ahead``, one at most when many
    restores share memory (their pieces are smaller then)."""
    return store.read_ahead if piece_bytes >= SPAN else min(store.read_ahead, 1)


def _read_ahead(
    store: ChunkStore, batches: Iterator[tuple[T, list[bytes]]], depth: int
) -> Generator[tuple[tuple[T, list[bytes]], list[Frame]], None, None]:
    """Each ``(item, chunk ids)`` with the stored frames of those ids, read ``depth``
    batches ahead of the one handed out, in the shared reader threads (0: read here, one
    at a time); what is queued when the iterator is closed is not read."""

    def read(ids: list[bytes]) -> list[Frame]:
        return store.read_frames(ids) if ids else []

    if depth <= 0:
        yield from ((batch, read(batch[1])) for batch in batches)
        return
    pending: collections.deque[tuple[tuple[T, list[bytes]], Future[list[Frame]]]] = (
        collections.deque()
    )
    try:
        for batch in batches:
            pending.append((batch, _readers().submit(read, batch[1])))
            if len(pending) > depth:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    finally:
        for _, future in pending:  # the response ended early: what is queued is not read
            future.cancel()


_reader_pool: ThreadPoolExecutor | None = None
_reader_lock = threading.Lock()


def _readers() -> ThreadPoolExecutor:
    """The process's read-ahead threads, started on first use (local stores use none)."""
    global _reader_pool
    with _reader_lock:
        if _reader_pool is None:
            _reader_pool = ThreadPoolExecutor(READERS, thread_name_prefix="read-ahead")
        return _reader_pool


def raw_frame(data: bytes) -> list[bytes | memoryview]:
    """``data`` as one zstd frame of raw (stored, uncompressed) blocks: what a decoder
    reads back as ``data``, made without running the compressor."""
    view = memoryview(data)
    parts: list[bytes | memoryview] = [ZSTD_FRAME.pack(ZSTD_MAGIC, 0xA0, len(data))]
    at = 0
    while True:
        block = view[at : at + RAW_BLOCK]
        at += len(block)
        last = at >= len(data)
        header = (len(block) << 3) | int(last)  # block type 0: raw
        parts += (header.to_bytes(3, "little"), block)
        if last:
            return parts
