"""The S3 replica's compact chunk table against a plain dict doing the same thing."""

from __future__ import annotations

import tracemalloc
from typing import Any

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachesrv.store import Codec
from cachesrv.store.s3 import table as table_mod
from cachesrv.store.s3.index import ChunkIndex, IndexBatch, Op, decode
from cachesrv.store.s3.table import ChunkTable, Location

PACKS = ["a.pack", "b.pack", "c.pack"]


def _id(n: int) -> bytes:
    # ids 0-7 share their first 8 bytes with each other (bisect lands among equals)
    if n < 8:
        return b"\x55" * 8 + blake3.blake3(bytes([n])).digest()[:24]
    return blake3.blake3(n.to_bytes(4, "big")).digest()


def _where(pack: int, offset: int, digest: bool = True) -> Location:
    return Location(
        PACKS[pack],
        offset,
        10 + offset % 7,
        20 + offset % 5,
        Codec(offset % 2),
        bytes([offset % 256]) * 16 if digest else None,
    )


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("set"),
            st.integers(0, 40),
            st.integers(0, 2),
            st.integers(0, 1000),
            st.booleans(),
        ),
        st.tuples(st.just("forget"), st.integers(0, 40)),
        st.tuples(st.just("drop"), st.integers(0, 2)),
        st.tuples(
            st.just("merge"),
        ),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_the_table_answers_as_a_dict_would(operations: list[tuple[Any, ...]]) -> None:
    original = table_mod.MERGE_AT
    table_mod.MERGE_AT = 5  # merges all the time, between every kind of change
    try:
        table = ChunkTable()
        model: dict[bytes, Location] = {}
        for op, *args in operations:
            if op == "set":
                n, pack, offset, digest = args
                table.put(_id(n), _where(pack, offset, digest), table.get(_id(n)))
                model[_id(n)] = _where(pack, offset, digest)
            elif op == "forget":
                table.forget(_id(args[0]))
                model.pop(_id(args[0]), None)
            elif op == "drop":
                pack = PACKS[args[0]]
                dropped = table.drop_pack(pack)
                expected = {i for i, w in model.items() if w.pack == pack}
                assert sorted(dropped) == sorted(expected)
                model = {i: w for i, w in model.items() if w.pack != pack}
            else:
                table.merge()
            assert len(table) == len(model)
        for n in range(41):
            assert table.get(_id(n)) == model.get(_id(n))
            assert (_id(n) in table) == (_id(n) in model)
        assert dict(table.items()) == model
        assert dict(table.sizes()) == {i: w.length for i, w in model.items()}
        assert sorted(table) == sorted(model)
        assert table.totals() == (
            len(model),
            sum(w.length for w in model.values()),
            sum(w.raw_size for w in model.values()),
        )
        by_pack = {
            p: (len(ws), sum(w.length for w in ws))
            for p in PACKS
            if (ws := [w for w in model.values() if w.pack == p])
        }
        assert table.by_pack() == by_pack
        for name in PACKS:
            held = sorted(
                ((i, w) for i, w in model.items() if w.pack == name), key=lambda x: x[1].offset
            )
            assert [w.offset for _, w in table.in_pack(name)] == [w.offset for _, w in held]
            assert dict(table.in_pack(name)) == dict(held)
    finally:
        table_mod.MERGE_AT = original


def test_an_iteration_sees_the_table_as_it_was_when_it_started() -> None:
    table = ChunkTable()
    for n in range(100):
        table.put(_id(n), _where(0, n), None)
    items = table.items()
    sizes = table.sizes()
    for n in range(100, 20_000):  # several merges meanwhile
        table.put(_id(n), _where(1, n), None)
    table.forget(_id(3))
    assert len(dict(items)) == 100
    assert len(dict(sizes)) == 100
    assert len(table) == 19_999


def test_packs_gone_are_forgotten_by_number_too() -> None:
    table = ChunkTable()
    for generation in range(200):  # 200 packs come and go, one chunk each
        where = _where(0, generation)._replace(pack=f"{generation}.pack")
        table.put(_id(generation), where, None)
        if generation:
            table.drop_pack(f"{generation - 1}.pack")
        table.merge()
    assert len(table._names) <= 64 + 1
    assert dict(table.items()) == {_id(199): _where(0, 199)._replace(pack="199.pack")}


def test_a_hundred_thousand_chunks_cost_under_a_hundred_bytes_each() -> None:
    """The figure a replica's memory grows with (a dict of Locations was ~315 B)."""
    count = 100_000
    records = IndexBatch()
    for n in range(count):
        records.add(_id(n), _where(n % 3, n), 4 << 20)
    packs, rows = decode(records.encode())
    tracemalloc.start()
    try:
        index = ChunkIndex()
        index.apply(packs, rows)
        index.chunks.merge()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(index.chunks) == count
    assert held / count < 100, f"{held / count:.0f} bytes per chunk"
    assert index.chunks.get(_id(12_345)) == _where(12_345 % 3, 12_345)


@pytest.mark.parametrize("op", [Op.DEL, Op.QUAR])
def test_a_forgotten_copy_stays_forgotten_after_its_table_row_is_merged(op: Op) -> None:
    index = ChunkIndex()
    where = _where(0, 40)
    index.apply({"a.pack": 100}, [(Op.ADD, _id(9), where)])
    index.chunks.merge()
    index.apply({}, [(op, _id(9), where)])
    index.chunks.merge()
    index.apply({}, [(Op.ADD, _id(9), where)])  # a late replay of the first object
    assert index.chunks.get(_id(9)) is None
    assert (_id(9) in index.quarantine) == (op is Op.QUAR)
