"""Manifests: what a stored object is made of.

An object is an ordered list of pieces: content chunks (by id, stored once in
the chunk store) and inline metadata (tar headers and padding, kept here since
they change with every mtime and would never dedup). Concatenating the pieces
gives the uploaded bytes; ``digest`` is the BLAKE3 of all of them, the
object's strong ETag.

Encoding (a manifest's id is the BLAKE3 of it). Written today, ``CSM2``: a plain
header (magic, size, digest, piece count, entries' decoded length) and then one zstd
frame of the entries, compressed as the pieces come (:class:`ManifestWriter`), so that an
upload of 100,000 files never holds its pieces, and with a 128 KiB window, so that each
of many restores reading one as a stream (:class:`PieceStream`) holds 128 KiB of window,
not 2 MiB. ``CSM1``, written before: one zstd frame of the same header and entries.
Both are read everywhere.
"""

from __future__ import annotations

import bisect
import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate

import blake3
import zstandard

_HEADER = struct.Struct("<4sQ32sI")  # CSM1, inside its zstd frame
_MAGIC = b"CSM1"
_HEADER2 = struct.Struct("<4sQ32sIQ")  # CSM2, before its zstd frame
_MAGIC2 = b"CSM2"
_INLINE, _CHUNK = 0, 1
_ENTRY = struct.Struct("<BI")
# On the Go cache's 6.5 MB of entries (24,712 pieces) a 128 KiB window costs 7% more
# bytes than level 3's 2 MiB one; the chunk ids in them do not compress anyway. Every
# upload holds an encoder: level 3's tables for that window (hash 2^17, chain 2^16)
# held 0.82 MB each, 2^14 and 2^14 hold 0.16, and a tar of 44,020 small files
# (site-packages, 86,156 pieces) encodes to 3,092,177 bytes with them, 3,092,925 without.
_PARAMS = zstandard.ZstdCompressionParameters.from_level(
    3, window_log=17, hash_log=14, chain_log=14
)


class ManifestError(Exception):
    pass


@dataclass(frozen=True, slots=True)  # an object has one per tar member or more
class Piece:
    size: int
    chunk_id: bytes | None = None  # content chunk, or
    inline: bytes | None = None  # metadata bytes kept in the manifest


@dataclass(frozen=True)
class Manifest:
    size: int
    digest: bytes
    pieces: tuple[Piece, ...]
    # offsets[i] is where pieces[i] starts in the object
    offsets: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        starts = tuple(accumulate((p.size for p in self.pieces), initial=0))
        if starts[-1] != self.size:
            raise ManifestError(f"pieces add up to {starts[-1]} bytes, not {self.size}")
        object.__setattr__(self, "offsets", starts[:-1])

    @property
    def etag(self) -> str:
        return self.digest[:16].hex()

    def chunk_ids(self) -> set[bytes]:
        return {p.chunk_id for p in self.pieces if p.chunk_id is not None}

    def span(self, start: int, end: int) -> Iterator[tuple[Piece, int, int]]:
        """The pieces covering bytes [start, end), each with the slice of it needed."""
        index = max(bisect.bisect_right(self.offsets, start) - 1, 0)
        while index < len(self.pieces) and self.offsets[index] < end:
            piece, offset = self.pieces[index], self.offsets[index]
            lo, hi = max(start - offset, 0), min(end - offset, piece.size)
            if hi > lo:
                yield piece, lo, hi
            index += 1

    def encode(self) -> bytes:
        writer = ManifestWriter()
        for piece in self.pieces:
            writer.add(piece)
        return writer.finish(self.digest)

    @property
    def manifest_id(self) -> bytes:
        return blake3.blake3(self.encode()).digest()

    @classmethod
    def decode(cls, blob: bytes) -> Manifest:
        stream = PieceStream(blob)
        return cls(stream.size, stream.digest, tuple(piece for _, piece in stream))

    @staticmethod
    def chunk_ids_of(blob: bytes) -> set[bytes]:
        """The chunk ids a manifest references, read from its encoding as a stream: no
        inline byte is kept (GC marks every manifest; one of a tree of 100,000 files
        decodes to over 100 MB of pieces)."""
        return PieceStream(blob).chunk_ids()

    @classmethod
    def decode_stored(cls, manifest_id: bytes, blob: bytes) -> Manifest:
        """Decode a manifest read back from a catalog, checked against its id (the
        BLAKE3 of its encoding): a damaged manifest is an error, never a wrong object."""
        if blake3.blake3(blob).digest() != manifest_id:
            raise ManifestError(f"manifest {manifest_id.hex()} does not match its id")
        return cls.decode(blob)


def decoded_size(blob: bytes) -> int:
    """The bytes a manifest's encoding decodes to, as it declares them (-1: unknown)."""
    if blob[:4] == _MAGIC2:
        return int(_HEADER2.unpack_from(blob)[4]) if len(blob) >= _HEADER2.size else -1
    try:
        return int(zstandard.frame_content_size(blob))
    except zstandard.ZstdError:
        return -1


class ManifestWriter:
    """A manifest encoded (``CSM2``) as its pieces come, in order: memory holds the
    compressed entries, never the pieces."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        compressor = zstandard.ZstdCompressor(compression_params=_PARAMS)
        self._frame = compressor.stream_writer(self._out, closefd=False)
        self.count = 0
        self.size = 0  # bytes of the object so far
        self._entries = 0  # decoded bytes of the entries so far

    def add(self, piece: Piece) -> None:
        if piece.chunk_id is not None:
            entry = _ENTRY.pack(_CHUNK, piece.size) + piece.chunk_id
        else:
            assert piece.inline is not None
            entry = _ENTRY.pack(_INLINE, piece.size) + piece.inline
        self._frame.write(entry)
        self.count += 1
        self.size += piece.size
        self._entries += len(entry)

    def finish(self, digest: bytes) -> bytes:
        self._frame.flush(zstandard.FLUSH_FRAME)
        header = _HEADER2.pack(_MAGIC2, self.size, digest, self.count, self._entries)
        return header + self._out.getvalue()


class PieceStream:
    """A manifest's pieces read in order from its encoding, a block at a time: memory
    does not grow with the number of pieces (a tree of 100,000 files has 200,000).

    Iterating gives ``(offset, piece)`` from the start; :meth:`span` serves increasing
    ranges without going back (a range before the last one starts over). A damaged
    encoding raises :class:`ManifestError` where the damage is met."""

    BLOCK = 1 << 16
    # Decoded in one step up to this size: a stream's decoder keeps a window of its own
    # (MBs), more than a small manifest's whole text.
    WHOLE = 1 << 20

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self._start()

    @classmethod
    def stored(cls, manifest_id: bytes, blob: bytes) -> PieceStream:
        """As :meth:`Manifest.decode_stored`: checked against its id first."""
        if blake3.blake3(blob).digest() != manifest_id:
            raise ManifestError(f"manifest {manifest_id.hex()} does not match its id")
        return cls(blob)

    def _start(self) -> None:
        self._reader: zstandard.ZstdDecompressionReader | None = None
        self._buf, self._pos = b"", 0
        v2 = self.blob[:4] == _MAGIC2
        if v2 and len(self.blob) < _HEADER2.size:
            raise ManifestError("corrupt manifest: it ends inside its header")
        frame = memoryview(self.blob)[_HEADER2.size :] if v2 else self.blob
        decoded = decoded_size(self.blob)
        self._limit = decoded if decoded >= 0 else None  # what it may decode to, at most
        self._decoded = 0
        try:
            if 0 <= decoded <= self.WHOLE:
                self._buf = zstandard.ZstdDecompressor().decompress(
                    frame, max_output_size=max(decoded, 1)
                )
            else:
                self._reader = zstandard.ZstdDecompressor().stream_reader(frame)
        except zstandard.ZstdError as exc:
            raise ManifestError(f"corrupt manifest: {exc}") from exc
        if v2:
            _, self.size, self.digest, self._left, _ = _HEADER2.unpack_from(self.blob)
        else:
            magic, self.size, self.digest, self._left = _HEADER.unpack(self._take(_HEADER.size))
            if magic != _MAGIC:
                raise ManifestError("not a manifest")
        self._offset = 0  # where the next piece read starts in the object
        self._held: tuple[int, Piece] | None = None  # read by span(), not yet used up

    def _take(self, n: int) -> bytes:
        while len(self._buf) - self._pos < n:
            if self._reader is None:
                raise ManifestError("corrupt manifest: it ends inside a piece")
            try:
                more = self._reader.read(max(self.BLOCK, n))
            except zstandard.ZstdError as exc:
                raise ManifestError(f"corrupt manifest: {exc}") from exc
            if not more:
                raise ManifestError("corrupt manifest: it ends inside a piece")
            self._decoded += len(more)
            if self._limit is not None and self._decoded > self._limit:
                raise ManifestError("corrupt manifest: it decodes to more than it declares")
            self._buf, self._pos = self._buf[self._pos :] + more, 0
        data = self._buf[self._pos : self._pos + n]
        self._pos += n
        return data

    def _read(self) -> tuple[int, Piece] | None:
        if not self._left:
            try:
                trailing = len(self._buf) > self._pos or (
                    self._reader is not None and self._reader.read(1)
                )
            except zstandard.ZstdError as exc:
                raise ManifestError(f"corrupt manifest: {exc}") from exc
            if trailing:
                raise ManifestError("corrupt manifest: bytes after its last piece")
            if self._offset != self.size:
                raise ManifestError(f"pieces add up to {self._offset} bytes, not {self.size}")
            return None
        self._left -= 1
        kind, length = _ENTRY.unpack(self._take(_ENTRY.size))
        if kind == _CHUNK:
            piece = Piece(length, chunk_id=self._take(32))
        elif kind == _INLINE:
            piece = Piece(length, inline=self._take(length))
        else:
            raise ManifestError(f"corrupt manifest: unknown piece kind {kind}")
        at, self._offset = self._offset, self._offset + length
        return at, piece

    def __iter__(self) -> Iterator[tuple[int, Piece]]:
        self._start()
        while (item := self._read()) is not None:
            yield item

    def chunk_ids(self) -> set[bytes]:
        return {p.chunk_id for _, p in self if p.chunk_id is not None}

    def span(self, start: int, end: int) -> Iterator[tuple[Piece, int, int]]:
        """As :meth:`Manifest.span`: the pieces covering bytes [start, end)."""
        if end <= start:
            return
        resume = self._held[0] if self._held is not None else self._offset
        if start < resume:
            self._start()
        while True:
            item, self._held = self._held or self._read(), None
            if item is None:
                return
            at, piece = item
            if at + piece.size <= start:
                continue
            if at >= end:
                self._held = item
                return
            yield piece, max(start - at, 0), min(end - at, piece.size)
            if at + piece.size > end:
                self._held = item
                return
