"""The ingest workers' wire protocol, without sockets: what one side encodes, the
other decodes, however the bytes are cut on the way."""

from __future__ import annotations

import errno
import os

from hypothesis import given
from hypothesis import strategies as st

from cachesrv.catalog import StoredManifest
from cachesrv.ingest import IngestStats, frames
from cachesrv.manifest import Manifest, Piece

KINDS = [frames.BEGIN, frames.DATA, frames.END, frames.ABORT, frames.RESULT, frames.ERROR]


def _decode_all(decoder: frames.FrameDecoder) -> list[tuple[bytes, int, bytes]]:
    out = []
    while (received := decoder.next_frame()) is not None:
        kind, upload, payload = received
        out.append((kind, upload, bytes(payload)))
    return out


@given(
    st.lists(
        st.tuples(
            st.sampled_from(KINDS),
            st.integers(min_value=0, max_value=2**32 - 1),
            st.binary(max_size=3000),
        ),
        max_size=8,
    ),
    st.lists(st.integers(min_value=1, max_value=4000), max_size=20),
)
def test_frames_come_out_whole_and_in_order_however_the_stream_is_cut(
    sent: list[tuple[bytes, int, bytes]], cuts: list[int]
) -> None:
    """Uploads' frames interleave on one socket: each keeps its upload's number."""
    stream = b"".join(frames.frame(kind, payload, upload) for kind, upload, payload in sent)
    decoder = frames.FrameDecoder()
    received: list[tuple[bytes, int, bytes]] = []
    pos = 0
    for cut in [*cuts, len(stream)]:
        decoder.feed(stream[pos : pos + cut])
        pos += cut
        received += _decode_all(decoder)
    assert received == sent
    assert decoder.buffered == 0


def test_a_partial_frame_waits_for_the_rest() -> None:
    data = frames.frame(frames.DATA, b"x" * 100)
    decoder = frames.FrameDecoder()
    decoder.feed(data[:3])
    assert decoder.next_frame() is None  # not even the header yet
    decoder.feed(data[3:50])
    assert decoder.next_frame() is None
    assert decoder.buffered == 50
    decoder.feed(data[50:])
    assert decoder.next_frame() == (frames.DATA, 0, memoryview(b"x" * 100))
    assert decoder.next_frame() is None


def test_the_next_header_is_told_only_once_its_frame_is_whole_and_is_not_taken() -> None:
    data = frames.frame(frames.DATA, b"x" * 100, upload=7) + frames.frame(frames.END, upload=7)
    decoder = frames.FrameDecoder()
    decoder.feed(data[:60])
    assert decoder.next_header() is None  # its payload is not all here
    decoder.feed(data[60:])
    assert decoder.next_header() == (frames.DATA, 7)
    assert decoder.next_header() == (frames.DATA, 7)  # asking takes nothing
    assert decoder.next_frame() == (frames.DATA, 7, memoryview(b"x" * 100))
    assert decoder.next_header() == (frames.END, 7)


def test_a_payload_that_arrived_in_one_piece_is_not_copied() -> None:
    data = frames.frame(frames.DATA, b"y" * 1000) + frames.frame(frames.END)
    decoder = frames.FrameDecoder()
    decoder.feed(data)
    kind, _, payload = decoder.next_frame() or (b"", 0, memoryview(b""))
    assert kind == frames.DATA and payload.obj is data
    assert decoder.next_frame() == (frames.END, 0, memoryview(b""))


def test_scatter_gather_header_matches_a_whole_frame() -> None:
    parts = [b"abc", b"", b"defgh"]
    whole = frames.frame(frames.DATA, b"abcdefgh", 7)
    assert frames.header(frames.DATA, 8, 7) + b"".join(parts) == whole


def test_result_carries_the_manifest_body_unchanged() -> None:
    manifest = Manifest(7, os.urandom(32), (Piece(3, inline=b"abc"), Piece(4, os.urandom(32))))
    stored = StoredManifest.of(manifest)
    stats = IngestStats(logical_bytes=7, chunks=1, new_chunks=1, new_bytes=4, stored_bytes=9)
    decoded_stats, decoded, grown = frames.decode_result(frames.encode_result(stats, stored, True))
    assert decoded_stats == stats and grown
    assert decoded.body == stored.body  # the worker's bytes, not an encoding of a decode
    assert (decoded.manifest_id, decoded.size, decoded.digest) == (
        stored.manifest_id,
        7,
        manifest.digest,
    )
    assert decoded.etag == manifest.etag
    assert decoded.manifest == manifest  # decoded only when asked


def test_errors_keep_their_errno_and_begin_its_options() -> None:
    error = frames.decode_error(frames.encode_error(OSError(errno.ENOSPC, "full")))
    assert error.errno == errno.ENOSPC and "full" in str(error)
    assert frames.decode_error(b'{"message": "odd", "errno": null}').errno == errno.EIO
    assert frames.decode_begin(frames.encode_begin(False)) is False
    assert frames.decode_begin(frames.encode_begin(True)) is True
