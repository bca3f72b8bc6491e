"""Manifests: what a stored object is made of.

An object is an ordered list of pieces: content chunks (by id, stored once in
the chunk store) and inline metadata (tar headers and padding, kept here since
they change with every mtime and would never dedup). Concatenating the pieces
gives the uploaded bytes; ``digest`` is the BLAKE3 of all of them, the
object's strong ETag.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate

import blake3
import zstandard

_HEADER = struct.Struct("<4sQ32sI")
_MAGIC = b"CSM1"
_INLINE, _CHUNK = 0, 1
_ENTRY = struct.Struct("<BI")


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
        parts = [_HEADER.pack(_MAGIC, self.size, self.digest, len(self.pieces))]
        for piece in self.pieces:
            if piece.chunk_id is not None:
                parts += (_ENTRY.pack(_CHUNK, piece.size), piece.chunk_id)
            else:
                assert piece.inline is not None
                parts += (_ENTRY.pack(_INLINE, piece.size), piece.inline)
        return zstandard.ZstdCompressor(level=3).compress(b"".join(parts))

    @property
    def manifest_id(self) -> bytes:
        return blake3.blake3(self.encode()).digest()

    @classmethod
    def decode(cls, blob: bytes) -> Manifest:
        try:
            data = zstandard.ZstdDecompressor().decompress(blob)
            magic, size, digest, count = _HEADER.unpack_from(data)
            if magic != _MAGIC:
                raise ManifestError("not a manifest")
            pos, pieces = _HEADER.size, []
            for _ in range(count):
                kind, length = _ENTRY.unpack_from(data, pos)
                pos += _ENTRY.size
                if kind == _CHUNK:
                    value, pos = data[pos : pos + 32], pos + 32
                    pieces.append(Piece(length, chunk_id=value))
                elif kind == _INLINE:
                    value, pos = data[pos : pos + length], pos + length
                    pieces.append(Piece(length, inline=value))
                else:
                    raise ManifestError(f"corrupt manifest: unknown piece kind {kind}")
                if pos > len(data):
                    raise ManifestError("corrupt manifest: it ends inside a piece")
            if pos != len(data):
                raise ManifestError("corrupt manifest: bytes after its last piece")
        except (zstandard.ZstdError, struct.error) as exc:
            raise ManifestError(f"corrupt manifest: {exc}") from exc
        return cls(size, digest, tuple(pieces))

    @classmethod
    def decode_stored(cls, manifest_id: bytes, blob: bytes) -> Manifest:
        """Decode a manifest read back from a catalog, checked against its id (the
        BLAKE3 of its encoding): a damaged manifest is an error, never a wrong object."""
        if blake3.blake3(blob).digest() != manifest_id:
            raise ManifestError(f"manifest {manifest_id.hex()} does not match its id")
        return cls.decode(blob)
