"""Specification of cachesrv.manifest: an object as an ordered list of pieces, and its blob.

A piece is a content chunk (named by id) or inline metadata bytes. The tests build
manifests over real bytes, so that "the pieces" can be compared with the object they
describe: chunk ids map to their bytes in a dict standing in for the chunk store.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import blake3
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachesrv.manifest import Manifest, ManifestError, Piece, PieceStream

BOUNDED = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def build(parts: list[tuple[bool, bytes]]) -> tuple[Manifest, dict[bytes, bytes], bytes]:
    """A manifest of (inline?, bytes) parts, the chunks it names and the object's bytes."""
    chunks: dict[bytes, bytes] = {}
    pieces = []
    for inline, data in parts:
        if inline:
            pieces.append(Piece(len(data), inline=data))
        else:
            chunk_id = blake3.blake3(data).digest()
            chunks[chunk_id] = data
            pieces.append(Piece(len(data), chunk_id=chunk_id))
    whole = b"".join(data for _, data in parts)
    return Manifest(len(whole), blake3.blake3(whole).digest(), tuple(pieces)), chunks, whole


def piece_bytes(piece: Piece, chunks: dict[bytes, bytes]) -> bytes:
    if piece.chunk_id is not None:
        return chunks[piece.chunk_id]
    assert piece.inline is not None
    return piece.inline


# Both ways of reading a blob refuse what is not a whole manifest.
READERS = pytest.mark.parametrize(
    "read", [Manifest.decode, Manifest.chunk_ids_of], ids=["decode", "chunk_ids_of"]
)

part_lists = st.lists(st.tuples(st.booleans(), st.binary(min_size=1, max_size=300)), max_size=30)


# -- the blob -------------------------------------------------------------------------------


@BOUNDED
@given(part_lists)
def test_encode_then_decode_gives_the_same_manifest(parts: list[tuple[bool, bytes]]) -> None:
    manifest, _, _ = build(parts)
    decoded = Manifest.decode(manifest.encode())
    assert decoded == manifest
    assert decoded.offsets == manifest.offsets
    assert decoded.etag == manifest.etag
    assert decoded.manifest_id == manifest.manifest_id


@BOUNDED
@given(part_lists)
def test_chunk_ids_are_read_from_the_blob_as_decoding_finds_them(
    parts: list[tuple[bool, bytes]],
) -> None:
    manifest, _, _ = build(parts)
    assert Manifest.chunk_ids_of(manifest.encode()) == manifest.chunk_ids()


def test_the_blob_is_stable_so_its_id_names_the_content() -> None:
    manifest, _, whole = build([(True, b"header"), (False, b"content"), (True, b"pad")])
    again, _, _ = build([(True, b"header"), (False, b"content"), (True, b"pad")])
    assert manifest.encode() == again.encode()
    assert manifest.manifest_id == blake3.blake3(manifest.encode()).digest()
    assert manifest.etag == blake3.blake3(whole).digest()[:16].hex()
    assert manifest.chunk_ids() == {blake3.blake3(b"content").digest()}


def test_an_empty_object_round_trips() -> None:
    manifest, _, _ = build([])
    assert manifest.size == 0 and manifest.pieces == ()
    assert Manifest.decode(manifest.encode()) == manifest
    assert list(manifest.span(0, 0)) == []


def test_pieces_that_do_not_add_up_to_the_size_are_refused() -> None:
    with pytest.raises(ManifestError):
        Manifest(5, bytes(32), (Piece(3, inline=b"abc"),))


def _payload(manifest: Manifest) -> bytes:
    return zstandard.ZstdDecompressor().decompress(manifest.encode())


def _blob(payload: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(payload)


SAMPLE, _, _ = build([(True, b"tar header"), (False, b"member data" * 10), (True, b"pad")])
HEADER_SIZE = struct.calcsize("<4sQ32sI")
ENTRY_SIZE = struct.calcsize("<BI")


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"not zstd at all",
        SAMPLE.encode()[:-3],  # a cut frame
        _blob(b""),
        _blob(b"CSM2" + _payload(SAMPLE)[4:]),  # another magic
        _blob(_payload(SAMPLE)[: HEADER_SIZE - 1]),  # cut inside the header
        _blob(_payload(SAMPLE)[: HEADER_SIZE + ENTRY_SIZE - 1]),  # cut inside an entry
        _blob(_payload(SAMPLE)[:HEADER_SIZE]),  # entries announced, none there
        # the header's size no longer matches the pieces
        _blob(_payload(SAMPLE)[:4] + struct.pack("<Q", SAMPLE.size + 1) + _payload(SAMPLE)[12:]),
    ],
    ids=[
        "empty",
        "not-zstd",
        "cut-frame",
        "empty-payload",
        "magic",
        "cut-header",
        "cut-entry",
        "no-entries",
        "size",
    ],
)
@READERS
def test_a_corrupt_blob_is_a_manifest_error(read: Callable[[bytes], object], blob: bytes) -> None:
    with pytest.raises(ManifestError):
        read(blob)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
@READERS
def test_random_bytes_are_a_manifest_error_and_nothing_else(
    read: Callable[[bytes], object], blob: bytes
) -> None:
    with pytest.raises(ManifestError):
        read(blob)


# -- span: which pieces serve bytes [start, end) ---------------------------------------------


@BOUNDED
@given(st.data(), part_lists)
def test_span_is_the_slice_of_the_concatenation(
    data: st.DataObject, parts: list[tuple[bool, bytes]]
) -> None:
    manifest, chunks, whole = build(parts)
    start = data.draw(st.integers(0, manifest.size + 10), label="start")
    end = data.draw(st.integers(0, manifest.size + 10), label="end")
    span = list(manifest.span(start, end))
    assert b"".join(piece_bytes(p, chunks)[lo:hi] for p, lo, hi in span) == whole[start:end]
    for piece, lo, hi in span:
        assert 0 <= lo < hi <= piece.size  # never an empty or out-of-piece slice


@BOUNDED
@given(st.data(), part_lists)
def test_a_piece_stream_spans_as_the_decoded_manifest_does(
    data: st.DataObject, parts: list[tuple[bool, bytes]]
) -> None:
    """Ranges served in order (a restore's spans) or out of order (it starts over)."""
    manifest, _, _ = build(parts)

    class Streamed(PieceStream):
        BLOCK = data.draw(st.integers(1, 64), label="block")  # entries cut across blocks
        WHOLE = -1  # never decoded in one step

    for kind in (PieceStream, Streamed):
        stream = kind.stored(manifest.manifest_id, manifest.encode())
        assert (stream.size, stream.digest) == (manifest.size, manifest.digest)
        assert list(stream) == list(zip(manifest.offsets, manifest.pieces, strict=True))
        bounds = st.integers(0, manifest.size + 10)
        for _ in range(data.draw(st.integers(1, 6), label="ranges")):
            start, end = data.draw(bounds, label="start"), data.draw(bounds, label="end")
            assert list(stream.span(start, end)) == list(manifest.span(start, end))


def test_a_piece_stream_is_checked_against_its_id() -> None:
    blob = _two_pieces().encode()
    with pytest.raises(ManifestError):
        PieceStream.stored(bytes(32), blob)


def test_span_on_piece_boundaries() -> None:
    manifest, _, _ = build([(True, b"aaaa"), (False, b"bbbb"), (True, b"cccc")])
    a, b, c = manifest.pieces
    assert manifest.offsets == (0, 4, 8)
    assert list(manifest.span(0, 12)) == [(a, 0, 4), (b, 0, 4), (c, 0, 4)]
    assert list(manifest.span(4, 8)) == [(b, 0, 4)]
    assert list(manifest.span(3, 5)) == [(a, 3, 4), (b, 0, 1)]
    assert list(manifest.span(11, 12)) == [(c, 3, 4)]
    assert list(manifest.span(12, 20)) == []
    assert list(manifest.span(6, 6)) == []


# -- a damaged encoding is refused, never read as another manifest ------------------------


def _two_pieces() -> Manifest:
    whole = b"chunk" + b"0123456789"
    return Manifest(
        len(whole),
        blake3.blake3(whole).digest(),
        (Piece(5, chunk_id=bytes(32)), Piece(10, inline=b"0123456789")),
    )


def _payload() -> bytes:
    return zstandard.ZstdDecompressor().decompress(_two_pieces().encode())


def _blob(payload: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(payload)


@READERS
def test_a_manifest_cut_inside_its_last_inline_piece_is_refused(
    read: Callable[[bytes], object],
) -> None:
    with pytest.raises(ManifestError):
        read(_blob(_payload()[:-1]))


@READERS
def test_a_manifest_with_bytes_after_its_last_piece_is_refused(
    read: Callable[[bytes], object],
) -> None:
    with pytest.raises(ManifestError):
        read(_blob(_payload() + b"junk"))


@READERS
def test_a_piece_of_an_unknown_kind_is_refused(read: Callable[[bytes], object]) -> None:
    payload = bytearray(_payload())
    header, entry = struct.calcsize("<4sQ32sI"), struct.calcsize("<BI")
    payload[header + entry + 32] = 7  # the inline entry's kind
    with pytest.raises(ManifestError):
        read(_blob(bytes(payload)))


def test_a_stored_manifest_is_checked_against_its_id() -> None:
    body = _two_pieces().encode()
    manifest_id = blake3.blake3(body).digest()
    assert Manifest.decode_stored(manifest_id, body) == _two_pieces()
    flipped = bytearray(body)
    flipped[len(flipped) // 2] ^= 0x10  # one bit: it may still decompress and decode
    with pytest.raises(ManifestError, match="does not match its id"):
        Manifest.decode_stored(manifest_id, bytes(flipped))
