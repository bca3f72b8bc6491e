"""One upload's ingest, blocking: bytes in, durable chunks and a manifest out.

:class:`IngestSession` is the core (split, hash, look up, compress, append). It runs
in a worker process (:mod:`cachesrv.ingest.process`) or in a thread of the server
(:class:`cachesrv.ingest.upload.ThreadUpload`), on batches of about a MiB: DESIGN.md
measured that handing work over per chunk loses to the GIL convoy, so each hand-over
carries a large unit of work. Nothing becomes visible here: publishing a name is the
catalog's job, after :meth:`IngestSession.finish` made the chunks durable.
"""

from __future__ import annotations

from dataclasses import dataclass

import blake3
import zstandard

from cachesrv.catalog.records import StoredManifest
from cachesrv.chunking import ChunkParams, Splitter
from cachesrv.chunking import Piece as SplitPiece
from cachesrv.manifest import ManifestWriter, Piece
from cachesrv.store import (
    GROUP_RAW,
    ChunkMissing,
    ChunkStore,
    ChunkWriter,
    Codec,
    chunk_id,
    compress_chunks,
    defer_chunk,
)

# Metadata runs are kept inline in the manifest up to this size; a longer run
# (a huge pax header, garbage after a tar's end) is stored as a chunk instead
# so that manifests stay small whatever the upload.
INLINE_LIMIT = 64 * 1024
# New chunks are compressed together once this many raw bytes are queued: one call
# compresses them all on several threads (zstd releases the GIL once for the batch;
# a thread per chunk would wait for the GIL after every chunk, DESIGN.md's convoy), and
# a batch is what grouping looks at. An upload that defers compression queues nothing:
# it stores each new chunk as it comes (24 sessions fed 3 MB each held 5.3 MB apiece
# with the queue, 3.4 without).
COMPRESS_BATCH = GROUP_RAW
# Uploads store new chunks raw for the background to compress only while the store has
# this much room below its hard limit: raw bytes fill it faster than compressed ones.
DEFER_HEADROOM = 1 << 30
ID_SIZE = 32
CHECK_BATCH = 8192  # chunk ids asked about at once in the check at the end


def may_defer(store: ChunkStore, enabled: bool) -> bool:
    """Whether an upload starting now stores its new chunks pending (``enabled``: the
    server's background compression is on)."""
    return enabled and store.defers_compression and store.admits(DEFER_HEADROOM)


@dataclass
class IngestStats:
    logical_bytes: int = 0
    chunks: int = 0
    new_chunks: int = 0
    new_bytes: int = 0  # raw bytes of chunks that were not stored yet
    stored_bytes: int = 0  # bytes written for them (compressed, or raw if deferred)
    inline_bytes: int = 0  # metadata kept in the manifest (tar headers, padding)


class IngestSession:
    """Blocking: feed bytes, then finish() for the manifest (or abort()). Not
    thread-safe itself. ``store`` is this upload's own writer. The manifest is encoded
    as the pieces come (a tree of 100,000 files has 200,000): what is held is its
    compressed text and the chunk ids (32 bytes each, in one buffer), for the check at
    the end."""

    def __init__(
        self,
        store: ChunkWriter,
        params: ChunkParams,
        level: int = 3,
        tar_aware: bool = True,
        threads: int = 1,
        defer: bool = False,
        group_level: int = 0,
    ) -> None:
        self.store = store
        self.defer = defer  # store new chunks pending: the store compresses them later
        # else compressed here, and with group_level, small ones grouped where that pays
        # (compress_chunks: the background's rule, on each batch of new chunks)
        self.group_level = group_level
        self.level = level
        self.splitter = Splitter(params, tar_aware=tar_aware)
        self.compressor = zstandard.ZstdCompressor(level=level)
        self.threads = threads
        self.hasher = blake3.blake3()
        self.manifest = ManifestWriter()
        self._last: Piece | None = None  # not written yet: the next inline run may join it
        self._ids = bytearray()  # every chunk the manifest names, end to end
        self.stats = IngestStats()
        self._queued: dict[bytes, bytes] = {}  # new chunks awaiting compression
        self._queued_bytes = 0

    def feed(self, *parts: bytes | bytearray | memoryview) -> None:
        """The upload's next bytes, in order. Several parts at once are split first, and
        their chunks looked up (and pinned) in one go: a lookup is a transaction."""
        pieces: list[SplitPiece] = []
        try:
            for data in parts:
                self.hasher.update(data)
                self.stats.logical_bytes += len(data)
                pieces += self.splitter.feed(data)
            self._absorb(pieces)
        except BaseException:
            self.abort()  # a failed upload never publishes: its writer lets go now
            raise

    def finish(self) -> StoredManifest:
        try:
            self._absorb(self.splitter.finish())
            self._compress_queued()
            self.store.commit()
        except BaseException:
            self.abort()
            raise
        # Every chunk is still there (and pinned again if its pin is old): GC cannot have
        # swept one this upload deduplicated against, nor a failed write dropped one.
        lost = self._vanished()
        if lost:
            raise ChunkMissing(f"{lost} chunks of this upload vanished before it finished")
        self._write(None)
        digest = self.hasher.digest()
        body = self.manifest.finish(digest)
        assert self.manifest.size == self.stats.logical_bytes
        return StoredManifest(blake3.blake3(body).digest(), body, self.manifest.size, digest)

    def abort(self) -> None:
        """Forget the upload: chunks not committed yet never become visible."""
        self._queued, self._queued_bytes = {}, 0
        self.store.abort()

    def _absorb(self, pieces: list[SplitPiece]) -> None:
        if not pieces:
            return
        ids = [None if p.meta and len(p.data) <= INLINE_LIMIT else chunk_id(p.data) for p in pieces]
        missing = self.store.missing(i for i in ids if i is not None)
        for piece, cid in zip(pieces, ids, strict=True):
            size = len(piece.data)
            if cid is None:
                self.stats.inline_bytes += size
                last = self._last
                if last and last.inline is not None and last.size + size <= INLINE_LIMIT:
                    merged = last.inline + bytes(piece.data)  # one run between two members
                    self._last = Piece(len(merged), inline=merged)
                else:
                    self._write(Piece(size, inline=bytes(piece.data)))
                continue
            self.stats.chunks += 1
            if cid in missing and cid not in self._queued:
                missing.discard(cid)
                self.stats.new_chunks += 1
                self.stats.new_bytes += size
                if self.defer:  # stored as it is: nothing to batch, nothing to hold
                    frame = defer_chunk(cid, piece.data)
                    self.store.put(cid, frame)
                    self.stats.stored_bytes += len(frame.data)
                else:
                    self._queued[cid] = bytes(piece.data)
                    self._queued_bytes += size
            self._ids += cid
            self._write(Piece(size, chunk_id=cid))
        if self._queued_bytes >= COMPRESS_BATCH:
            self._compress_queued()

    def _vanished(self) -> int:
        """How many of the chunks the manifest names are gone (asked a batch at a time)."""
        ids, lost, step = memoryview(self._ids), 0, CHECK_BATCH * ID_SIZE
        for start in range(0, len(ids), step):
            batch = ids[start : start + step]
            wanted = (batch[i : i + ID_SIZE].tobytes() for i in range(0, len(batch), ID_SIZE))
            lost += len(self.store.missing(wanted))
        return lost

    def _write(self, piece: Piece | None) -> None:
        """Encode the piece held back, and hold ``piece`` (None: the end)."""
        if self._last is not None:
            self.manifest.add(self._last)
        self._last = piece

    def _compress_queued(self) -> None:
        ids = list(self._queued)
        chunks: list[bytes | bytearray | memoryview] = list(self._queued.values())
        self._queued, self._queued_bytes = {}, 0
        for record in compress_chunks(
            self.compressor, self.level, ids, chunks, self.group_level, self.threads
        ):
            frame = record.frame
            if frame.codec == Codec.GROUP:
                self.store.put_group(frame)
            else:
                self.store.put(ids[record.members[0]], frame)
            self.stats.stored_bytes += len(frame.data)
