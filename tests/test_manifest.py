"""Specification of cachesrv.manifest: an object as an ordered list of pieces, and its blob.

A piece is a content chunk (named by id) or inline metadata bytes. The tests build
manifests over real bytes, so that "the pieces" can be compared with the object they
describe: chunk ids map to their bytes in a dict standing in for the chunk store.
"""

from __future__ import annotations

import itertools
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


class _Streamed(PieceStream):
    BLOCK = 16  # entries cut across blocks
    WHOLE = -1  # never decoded in one step: a large manifest's way


def _read_streamed(blob: bytes) -> list[tuple[int, Piece]]:
    return list(_Streamed(blob))


# Every way of reading a blob refuses what is not a whole manifest.
READERS = pytest.mark.parametrize(
    "read",
    [Manifest.decode, Manifest.chunk_ids_of, _read_streamed],
    ids=["decode", "chunk_ids_of", "streamed"],
)

part_lists = st.lists(st.tuples(st.booleans(), st.binary(min_size=1, max_size=300)), max_size=30)


# -- the blob -------------------------------------------------------------------------------


@BOUNDED
@given(part_lists)
def test_encode_then_decode_gives_the_same_manifest(parts: list[tuple[bool, bytes]]) -> None:
    manifest, _, _ = build(parts)
    decoded = Manifest.decode(manifest.encode())
    assert decoded == manifest == Manifest.decode(_v1(manifest))
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


# -- the two encodings, built here as their writers build them ---------------------------

V1_HEADER = struct.Struct("<4sQ32sI")  # CSM1 (before): in one zstd frame with the entries
V2_HEADER = struct.Struct("<4sQ32sIQ")  # CSM2: plain, then one zstd frame of the entries
ENTRY_SIZE = struct.calcsize("<BI")


def _entries(manifest: Manifest) -> bytes:
    """The entries of a manifest's encoding, decoded."""
    blob = manifest.encode()
    assert blob[:4] == b"CSM2"
    return zstandard.ZstdDecompressor().decompress(blob[V2_HEADER.size :], max_output_size=1 << 20)


def _v1(
    manifest: Manifest,
    entries: bytes | None = None,
    *,
    size: int | None = None,
    magic: bytes = b"CSM1",
) -> bytes:
    """``manifest`` as cachesrv wrote it before CSM2 (or with ``entries``, ``size``, magic)."""
    entries = _entries(manifest) if entries is None else entries
    size = manifest.size if size is None else size
    header = V1_HEADER.pack(magic, size, manifest.digest, len(manifest.pieces))
    return zstandard.ZstdCompressor(level=3).compress(header + entries)


def _v2(
    manifest: Manifest,
    entries: bytes | None = None,
    *,
    size: int | None = None,
    declared: int | None = None,
) -> bytes:
    """``manifest`` in CSM2 (with ``entries``, ``size``, declared entries' length)."""
    entries = _entries(manifest) if entries is None else entries
    size = manifest.size if size is None else size
    declared = len(entries) if declared is None else declared
    header = V2_HEADER.pack(b"CSM2", size, manifest.digest, len(manifest.pieces), declared)
    return header + zstandard.ZstdCompressor(write_content_size=False).compress(entries)


Encode = Callable[..., bytes]
ENCODINGS = pytest.mark.parametrize("encode", [_v1, _v2], ids=["CSM1", "CSM2"])
SAMPLE = build([(True, b"tar header"), (False, b"member data" * 10), (True, b"pad")])[0]


def test_csm2_is_written_with_a_small_window_and_csm1_still_reads() -> None:
    big, _, _ = build([(i % 2 == 0, bytes([i % 251]) * 40) for i in range(20_000)])
    blob = big.encode()
    assert blob[:4] == b"CSM2"
    frame = zstandard.get_frame_parameters(blob[V2_HEADER.size :])
    assert frame.window_size <= 128 << 10  # what each restore reading it as a stream holds
    assert Manifest.decode(_v1(big)) == big and Manifest.decode(_v1(SAMPLE)) == SAMPLE
    assert Manifest.chunk_ids_of(_v1(big)) == big.chunk_ids()


def _unknown_kind(entries: bytes) -> bytes:
    damaged = bytearray(entries)
    damaged[0] = 7  # the first entry's kind
    return bytes(damaged)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"not zstd at all",
        b"CSM2",
        zstandard.ZstdCompressor().compress(b""),
        _v1(SAMPLE, magic=b"CSM3"),
        zstandard.ZstdCompressor().compress(V1_HEADER.pack(b"CSM1", 0, bytes(32), 0)[:-1]),
        _v2(SAMPLE)[: V2_HEADER.size - 1],
        _v2(SAMPLE, declared=10),  # the entries are longer than the header says
        _v2(SAMPLE)[: V2_HEADER.size] + b"not zstd",
    ],
    ids=["empty", "not-zstd", "magic-only", "empty-frame", "v1-magic", "v1-cut-header",
         "v2-cut-header", "v2-declared", "v2-not-zstd"],
)  # fmt: skip
@READERS
def test_a_blob_that_is_no_manifest_is_a_manifest_error(
    read: Callable[[bytes], object], blob: bytes
) -> None:
    with pytest.raises(ManifestError):
        read(blob)


DAMAGE: dict[str, Callable[[Encode], bytes]] = {
    "cut-frame": lambda encode: encode(SAMPLE)[:-3],
    "no-entries": lambda encode: encode(SAMPLE, b""),  # entries announced, none there
    "cut-entry": lambda encode: encode(SAMPLE, _entries(SAMPLE)[: ENTRY_SIZE - 1]),
    "cut-inline": lambda encode: encode(SAMPLE, _entries(SAMPLE)[:-1]),
    "size": lambda encode: encode(SAMPLE, size=SAMPLE.size + 1),  # pieces do not add up
    "after-last": lambda encode: encode(SAMPLE, _entries(SAMPLE) + b"junk"),
    "unknown-kind": lambda encode: encode(SAMPLE, _unknown_kind(_entries(SAMPLE))),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
@ENCODINGS
@READERS
def test_a_damaged_encoding_is_a_manifest_error(
    read: Callable[[bytes], object], encode: Encode, damage: str
) -> None:
    with pytest.raises(ManifestError):
        read(DAMAGE[damage](encode))


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

    for kind, blob in itertools.product(
        (PieceStream, Streamed), (manifest.encode(), _v1(manifest))
    ):
        stream = kind.stored(blake3.blake3(blob).digest(), blob)
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


def test_a_stored_manifest_is_checked_against_its_id() -> None:
    body = _two_pieces().encode()
    manifest_id = blake3.blake3(body).digest()
    assert Manifest.decode_stored(manifest_id, body) == _two_pieces()
    flipped = bytearray(body)
    flipped[len(flipped) // 2] ^= 0x10  # one bit: it may still decompress and decode
    with pytest.raises(ManifestError, match="does not match its id"):
        Manifest.decode_stored(manifest_id, bytes(flipped))
