"""The push/pull wire format, sans-I/O: chunk batches read back the same whatever the
slices they arrive in, and refuse what is not a batch."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachesrv import wire
from cachesrv.store import Codec, Frame, chunk_id

records = st.lists(
    st.tuples(st.binary(max_size=3000), st.sampled_from([Codec.ZSTD, Codec.RAW])), max_size=8
)


@given(records, st.lists(st.integers(min_value=1, max_value=5000), max_size=20))
def test_a_batch_reads_back_whatever_the_slices(
    items: list[tuple[bytes, Codec]], cuts: list[int]
) -> None:
    sent = [(chunk_id(data), Frame(data, len(data) + 7, codec)) for data, codec in items]
    body = b"".join(wire.encode_record(cid, frame) for cid, frame in sent)
    reader, got, pos = wire.BatchReader(), [], 0
    for cut in [*cuts, len(body)]:
        got += list(reader.feed(body[pos : pos + cut]))
        pos += cut
    reader.finish()
    assert got == sent


def test_what_is_not_a_batch_or_an_id_list_is_refused() -> None:
    record = wire.encode_record(bytes(32), Frame(b"abc", 3, Codec.RAW))
    reader = wire.BatchReader()
    list(reader.feed(record[:-1]))
    with pytest.raises(wire.WireError):
        reader.finish()
    with pytest.raises(wire.WireError):
        list(wire.BatchReader().feed(wire.RECORD.pack(bytes(32), 7, 3, 3) + b"abc"))
    with pytest.raises(wire.WireError):
        list(wire.BatchReader(max_raw=100).feed(wire.RECORD.pack(bytes(32), 0, 101, 3)))
    with pytest.raises(wire.WireError):
        wire.decode_ids(bytes(33))
    with pytest.raises(wire.WireError):
        wire.decode_ids(bytes(32 * 3), limit=2)
    assert wire.decode_ids(bytes(64)) == [bytes(32), bytes(32)]
