"""What the server does with chunks and manifests a client built (``cachesrv push``).

Blocking; :class:`cachesrv.service.CacheService` runs these in threads. Nothing the
client says is trusted: each chunk is checked against its id before it is stored, a
manifest's chunks must all be stored (and are pinned by the check, as an upload's are),
each piece's size must be its chunk's, and the whole-object hash (the ETag) is computed
here from the stored chunks. The result is a :class:`StoredManifest` like any upload's,
published by the same code.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import blake3

from cachesrv.catalog import StoredManifest
from cachesrv.ingest.session import INLINE_LIMIT
from cachesrv.manifest import Manifest, ManifestError, decoded_size
from cachesrv.store import (
    RAW_BELOW,
    ChunkCorrupt,
    ChunkStore,
    Codec,
    Frame,
    decode_frame,
    frame_digest,
)

# An encoded manifest of a 1 GB Go cache is well under a MiB; these bound what one
# publish may make the server decode.
MAX_MANIFEST_BYTES = 64 << 20
MAX_MANIFEST_DECODED = 256 << 20
READ_BATCH = 256  # chunks read together while hashing a manifest


class BadPush(Exception):
    """A chunk batch or manifest the server refuses (the message says why)."""


class ChunksMissing(Exception):
    """A manifest names chunks that are not stored (send them first)."""

    def __init__(self, missing: set[bytes]) -> None:
        super().__init__(f"{len(missing)} chunks of the manifest are not stored")
        self.missing = missing


def store_batch(store: ChunkStore, records: Iterable[tuple[bytes, Frame]]) -> tuple[int, int]:
    """Check every chunk against its id, then store the new ones, durably; all or
    nothing. Returns (chunks, raw bytes) newly stored."""
    checked: dict[bytes, Frame] = {}
    for cid, frame in records:
        try:
            raw = decode_frame(cid, frame)
        except ChunkCorrupt as exc:
            raise BadPush(str(exc)) from exc
        if frame.codec == Codec.ZSTD and len(frame.data) > frame.raw_size * (1 - RAW_BELOW):
            frame = Frame(raw, frame.raw_size, Codec.RAW)  # the store's rule: zstd must pay
        checked[cid] = Frame(frame.data, frame.raw_size, frame.codec, frame_digest(frame.data))
    writer = store.writer()
    try:
        new = writer.missing(checked)  # pins them all, as an upload's lookups do
        for cid in new:
            writer.put(cid, checked[cid])
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return len(new), sum(checked[cid].raw_size for cid in new)


def decode_pushed(blob: bytes, max_size: int | None) -> Manifest:
    """A client's manifest, decoded within bounds and checked for shape."""
    if len(blob) > MAX_MANIFEST_BYTES:
        raise BadPush(f"a manifest is at most {MAX_MANIFEST_BYTES} bytes")
    declared = decoded_size(blob)  # and decoding stops there (PieceStream)
    if declared < 0 or declared > MAX_MANIFEST_DECODED:
        raise BadPush("a manifest must declare its decoded size, at most 256 MiB")
    try:
        manifest = Manifest.decode(blob)
    except ManifestError as exc:
        raise BadPush(str(exc)) from exc
    if max_size is not None and manifest.size > max_size:
        raise BadPush(f"Payload Too Large: uploads are limited to {max_size} bytes")
    for piece in manifest.pieces:
        if piece.inline is not None and piece.size > INLINE_LIMIT:
            raise BadPush(f"an inline piece is at most {INLINE_LIMIT} bytes")
    return manifest


def seal_pushed(store: ChunkStore, manifest: Manifest) -> StoredManifest:
    """The version to publish: every chunk stored (pinned now), sizes right, the digest
    ours. :class:`ChunksMissing` or :class:`BadPush` otherwise."""
    writer = store.writer()
    try:
        missing = writer.missing(manifest.chunk_ids())
    finally:
        writer.abort()  # nothing was put: this only settles the writer
    if missing:
        raise ChunksMissing(missing)
    hasher = blake3.blake3()
    for data in _object_bytes(store, manifest):
        hasher.update(data)
    digest = hasher.digest()
    if digest != manifest.digest:
        raise BadPush("the manifest's digest is not the hash of its pieces")
    return StoredManifest.of(Manifest(manifest.size, digest, manifest.pieces))


def _object_bytes(store: ChunkStore, manifest: Manifest) -> Iterator[bytes]:
    pieces = manifest.pieces
    for start in range(0, len(pieces), READ_BATCH):
        group = pieces[start : start + READ_BATCH]
        ids = [p.chunk_id for p in group if p.chunk_id is not None]
        frames = dict(zip(ids, store.read_frames(ids), strict=True))
        for piece in group:
            if piece.inline is not None:
                yield piece.inline
                continue
            assert piece.chunk_id is not None
            frame = frames[piece.chunk_id]
            if frame.raw_size != piece.size:
                raise BadPush(
                    f"piece of {piece.size} bytes names chunk {piece.chunk_id.hex()} "
                    f"of {frame.raw_size}"
                )
            yield decode_frame(piece.chunk_id, frame)
