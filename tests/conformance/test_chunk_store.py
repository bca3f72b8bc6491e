"""What every chunk store promises (cachesrv.store.ChunkStore), checked on each backend.

A new backend (S3, ...) joins the ``store`` fixture's params and must pass unchanged.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
import zstandard

from cachesrv.store import (
    COMMIT_ROWS,
    ChunkCorrupt,
    ChunkMissing,
    ChunkStore,
    Codec,
    Frame,
    MaintenanceReport,
    check_frame,
    chunk_id,
    compress_chunks,
    decoded_groups,
    defer_chunk,
    encode_chunk,
)
from cachesrv.store.local import LocalChunkStore
from cachesrv.store.memory import MemoryChunkStore
from cachesrv.store.s3 import S3ChunkStore, open_object_store

PIN_TTL = 60.0
Open = Callable[..., ChunkStore]


@pytest.fixture(params=["local", "memory", "s3"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Open]:
    opened: list[ChunkStore] = []

    def open_(hard_limit: int | None = None, pin_ttl: float = PIN_TTL) -> ChunkStore:
        store: ChunkStore
        if request.param == "local":
            store = LocalChunkStore(tmp_path, hard_limit=hard_limit, pin_ttl=pin_ttl)
        elif request.param == "s3":  # a fresh prefix of the suite's SeaweedFS
            objects = open_object_store(request.getfixturevalue("s3_url"), timeout=10)
            store = S3ChunkStore(objects.child("chunks/"), hard_limit=hard_limit, pin_ttl=pin_ttl)
        else:
            store = MemoryChunkStore(hard_limit=hard_limit, pin_ttl=pin_ttl)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Open) -> ChunkStore:
    return open_store()


def _encoded(data: bytes) -> tuple[bytes, bytes, Frame]:
    """A new chunk as an upload compressing at level 1 stores it: id, bytes, frame."""
    cid = chunk_id(data)
    return cid, data, encode_chunk(zstandard.ZstdCompressor(level=1), cid, data)


def _chunk(n: int, size: int = 2000) -> tuple[bytes, bytes, Frame]:
    return _encoded((n.to_bytes(8, "little") * (size // 8 + 1))[:size])  # compressible


def _random_chunk(size: int = 2000) -> tuple[bytes, bytes, Frame]:
    return _encoded(os.urandom(size))  # stored raw


def _store_chunks(store: ChunkStore, chunks: list[tuple[bytes, bytes, Frame]]) -> None:
    writer = store.writer()
    writer.missing(c[0] for c in chunks)
    for cid, _, frame in chunks:
        writer.put(cid, frame)
    writer.commit()


# -- writing and reading ---------------------------------------------------------


def test_a_put_is_invisible_until_its_writer_commits(store: ChunkStore) -> None:
    cid, data, frame = _chunk(1)
    writer = store.writer()
    assert writer.missing([cid]) == {cid}
    writer.put(cid, frame)
    assert store.contains([cid]) == set()
    assert store.writer().missing([cid]) == {cid}
    with pytest.raises(ChunkMissing):
        store.read(cid)
    writer.commit()
    assert store.contains([cid]) == {cid}
    assert store.read(cid) == data
    assert not store.writer().missing([cid])


def test_writers_commit_and_abort_only_their_own_chunks(store: ChunkStore) -> None:
    (a, _, fa), (b, data_b, fb) = _chunk(1), _chunk(2)
    first, second = store.writer(), store.writer()
    first.put(a, fa)
    second.put(b, fb)
    second.commit()
    assert store.contains([a, b]) == {b}
    first.abort()
    first.commit()  # nothing left to commit
    assert store.contains([a, b]) == {b}
    assert store.read(b) == data_b
    # an aborted writer can start again
    first.put(a, fa)
    first.commit()
    assert store.contains([a]) == {a}


def test_a_writer_commits_by_itself_every_commit_rows_and_abort_forgets_only_the_rest(
    store: ChunkStore,
) -> None:
    chunks = [_chunk(i) for i in range(COMMIT_ROWS + 3)]
    writer = store.writer()
    writer.missing([cid for cid, _, _ in chunks])  # pinned, as an upload asks first
    for cid, _, frame in chunks:
        writer.put(cid, frame)
    writer.abort()
    ids = [cid for cid, _, _ in chunks]
    assert store.contains(ids) == set(ids[:COMMIT_ROWS])
    assert store.read(ids[0]) == chunks[0][1]


def test_missing_answers_for_a_batch_and_skips_what_the_writer_already_holds(
    store: ChunkStore,
) -> None:
    chunks = [_chunk(i) for i in range(5)]
    _store_chunks(store, chunks[:3])
    writer = store.writer()
    ids = [c[0] for c in chunks]
    assert writer.missing(ids) == set(ids[3:])
    writer.put(ids[3], chunks[3][2])
    assert writer.missing(ids) == {ids[4]}  # put, not committed yet: not asked for again


def test_reads_return_the_stored_frame_and_verified_bytes(store: ChunkStore) -> None:
    chunks = [_chunk(1), _random_chunk(), _chunk(3)]
    _store_chunks(store, chunks)
    frames = store.read_frames([c[0] for c in chunks] + [chunks[0][0]])
    assert [f.data for f in frames] == [c[2].data for c in chunks] + [chunks[0][2].data]
    for (cid, data, frame), got in zip(chunks, frames, strict=False):
        assert got.raw_size == len(data) and got.codec == frame.codec
        assert got.digest == frame.digest
        assert store.read_frame(cid).data == frame.data
        assert store.read(cid) == data


def test_a_chunk_that_does_not_match_its_id_is_never_returned_by_read(store: ChunkStore) -> None:
    _, _, frame = _chunk(1)
    wrong = chunk_id(b"something else")
    writer = store.writer()
    writer.put(wrong, frame)
    writer.commit()
    with pytest.raises(ChunkCorrupt):
        store.read(wrong)
    report = store.verify()
    assert wrong in report.corrupt and report.problems


def test_verify_repair_quarantines_and_a_new_put_heals(store: ChunkStore) -> None:
    cid, _, frame = _chunk(1)
    other, _, other_frame = _chunk(2)
    writer = store.writer()
    writer.put(cid, other_frame)  # the wrong bytes under this id
    writer.put(other, other_frame)
    writer.commit()
    report = store.verify(repair=True)
    assert report.corrupt == {cid} and report.repaired
    assert store.contains([cid, other]) == {other}
    assert store.quarantined([cid, other]) == {cid}
    assert store.stats().quarantined == 1
    with pytest.raises(ChunkCorrupt):
        store.read(cid)
    assert store.verify().problems == []
    writer = store.writer()
    assert writer.missing([cid]) == {cid}  # reported missing: a re-upload stores it anew
    writer.put(cid, frame)
    writer.commit()
    assert store.quarantined([cid]) == set()
    assert chunk_id(store.read(cid)) == cid


def test_stats_and_sizes_count_committed_chunks(store: ChunkStore) -> None:
    assert store.stats().chunks == 0
    chunks = [_chunk(i) for i in range(4)]
    _store_chunks(store, chunks)
    stats = store.stats()
    assert stats.chunks == 4
    assert stats.raw_bytes == sum(len(c[1]) for c in chunks)
    assert stats.stored_bytes == sum(len(c[2].data) for c in chunks)
    assert stats.disk_bytes >= stats.stored_bytes
    sizes = dict(store.iter_sizes())
    assert set(sizes) == set(store.iter_ids()) == {c[0] for c in chunks}
    assert all(sizes[c[0]] >= len(c[2].data) for c in chunks)
    assert store.usage_bytes() >= sum(sizes.values())


def test_the_hard_limit_refuses_puts_with_enospc(open_store: Open) -> None:
    chunks = [_random_chunk(4000) for _ in range(3)]
    store = open_store(hard_limit=6000)
    writer = store.writer()
    writer.put(chunks[0][0], chunks[0][2])
    writer.commit()
    assert store.admits(1000) and not store.admits(4000)
    with pytest.raises(OSError) as refused:
        writer.put(chunks[1][0], chunks[1][2])
        writer.commit()
    assert refused.value.errno == errno.ENOSPC
    assert store.contains(c[0] for c in chunks) == {chunks[0][0]}


def test_delete_forgets_chunks(store: ChunkStore) -> None:
    chunks = [_chunk(i) for i in range(3)]
    _store_chunks(store, chunks)
    assert store.delete([chunks[0][0], chunks[1][0], chunk_id(b"never stored")]) == 2
    assert store.contains(c[0] for c in chunks) == {chunks[2][0]}
    assert store.stats().chunks == 1


# -- pins and GC's side ------------------------------------------------------------


def test_a_pin_protects_from_the_sweep_until_it_expires(store: ChunkStore) -> None:
    pinned, loose = _chunk(1), _chunk(2)
    _store_chunks(store, [loose])
    store.prune_pins(time.time() + 2 * PIN_TTL)  # the writer above pinned it: forget that
    before = time.time()
    writer = store.writer()
    assert writer.missing([pinned[0]]) == {pinned[0]}  # the lookup pins, stored or not
    writer.put(pinned[0], pinned[2])
    writer.commit()
    assert pinned[0] in store.pinned_ids(before)
    assert loose[0] not in store.pinned_ids(before)
    # a sweep now keeps it, and takes the unpinned one
    assert store.delete_unpinned([pinned[0], loose[0]], time.time()) == (1, len(loose[2].data))
    assert store.contains([pinned[0], loose[0]]) == {pinned[0]}
    # past the pin's expiry it goes too
    later = before + PIN_TTL + 1
    assert store.pinned_ids(later) == set()
    assert store.delete_unpinned([pinned[0]], later)[0] == 1
    assert store.contains([pinned[0]]) == set()


def test_a_pin_carries_the_expiry_of_the_store_that_wrote_it(open_store: Open) -> None:
    short = open_store(pin_ttl=0.0)
    cid, _, frame = _chunk(1)
    writer = short.writer()
    writer.missing([cid])
    writer.put(cid, frame)
    writer.commit()
    time.sleep(0.01)
    assert short.delete_unpinned([cid], time.time()) == (1, len(frame.data))


def test_prune_pins_forgets_only_expired_ones(store: ChunkStore) -> None:
    cid = _chunk(1)[0]
    store.writer().missing([cid])
    assert store.prune_pins(time.time()) == 0
    assert store.pinned_ids(time.time()) == {cid}
    assert store.prune_pins(time.time() + PIN_TTL + 1) == 1
    assert store.pinned_ids(0.0) == set()


def test_a_mark_finds_garbage_and_each_manifests_own_bytes(store: ChunkStore) -> None:
    a, b, shared, loose, held = (_chunk(i) for i in range(5))
    _store_chunks(store, [a, b, shared, loose, held])
    size = dict(store.iter_sizes())
    marks = store.mark()
    try:
        marks.add(b"m1" * 16, [a[0], shared[0]], True)
        marks.add(b"m2" * 16, [b[0], shared[0], _chunk(9)[0]], True)  # one not stored
        marks.add(b"m3" * 16, [held[0]], False)  # a doomed root still in its grace
        assert marks.seal() == 5
        usage = marks.usage_by_manifest()
        assert usage[b"m1" * 16] == (size[a[0]], size[shared[0]])
        assert usage[b"m2" * 16] == (size[b[0]], size[shared[0]])
        assert b"m3" * 16 not in usage
        total, pending, unmarked = marks.footprint()
        assert (total, pending, unmarked) == (sum(size.values()), size[held[0]], size[loose[0]])
        held_by = {c: (n, s) for c, n, s in marks.held_by(b"m1" * 16)}
        assert held_by == {a[0]: (1, size[a[0]]), shared[0]: (2, size[shared[0]])}
        assert [c for batch in marks.garbage(2) for c in batch] == [loose[0]]
    finally:
        marks.close()


def test_maintenance_runs_in_increments_and_reports_usage(store: ChunkStore) -> None:
    _store_chunks(store, [_chunk(i) for i in range(3)])
    work = store.maintenance(None, 0.5)
    while True:
        try:
            next(work)
        except StopIteration as done:
            report = done.value
            break
    assert report.usage_bytes == store.usage_bytes()
    store.release_unused()
    assert store.stats().chunks == 3


def test_a_lease_is_held_once(store: ChunkStore) -> None:
    lease = store.lease("gc")
    assert lease is not None
    assert store.lease("gc") is None
    other = store.lease("other")
    assert other is not None
    other.release()
    lease.release()
    again = store.lease("gc")
    assert again is not None
    again.release()


# -- background compression (Codec.PENDING) ----------------------------------------


@pytest.fixture(params=["local", "memory"])
def deferring_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Open]:
    """The backends that keep new chunks pending for compress_pending (S3 does not:
    tests/test_s3_store.py)."""
    opened: list[ChunkStore] = []

    def open_(hard_limit: int | None = None) -> ChunkStore:
        store: ChunkStore
        if request.param == "local":
            store = LocalChunkStore(tmp_path, hard_limit=hard_limit, pin_ttl=PIN_TTL)
        else:
            store = MemoryChunkStore(hard_limit=hard_limit, pin_ttl=PIN_TTL)
        assert store.defers_compression
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def _deferred(data: bytes) -> tuple[bytes, bytes, Frame]:
    """A new chunk as an upload stores it when compression is deferred: id, bytes, frame."""
    cid = chunk_id(data)
    return cid, data, defer_chunk(cid, data)


def _pending(n: int, size: int = 20_000) -> tuple[bytes, bytes, Frame]:
    return _deferred((n.to_bytes(8, "little") * (size // 8 + 1))[:size])


def _compress_all(store: ChunkStore, budget: int = 1 << 30) -> int:
    total = 0
    while done := store.compress_pending(3, budget):
        total += done
    return total


def test_pending_chunks_read_as_they_are_until_compressed_in_place(
    deferring_store: Open,
) -> None:
    store = deferring_store()
    noise = os.urandom(20_000)
    chunks = [_pending(1), _pending(2), _deferred(noise)]
    _store_chunks(store, chunks)
    raw = sum(len(c[1]) for c in chunks)
    before = store.stats()
    assert before.pending_bytes == raw and before.stored_bytes == raw
    for cid, data, _ in chunks:
        assert store.read_frame(cid).codec == Codec.PENDING
        assert store.read(cid) == data
    assert _compress_all(store) == raw
    after = store.stats()
    assert after.pending_bytes == 0 and after.chunks == 3
    assert after.stored_bytes < raw - 30_000  # the two compressible ones shrank
    assert after.disk_bytes < raw  # and the raw copies are gone, not garbage on disk
    assert [store.read_frame(c[0]).codec for c in chunks] == [Codec.ZSTD, Codec.ZSTD, Codec.RAW]
    for cid, data, _ in chunks:
        assert store.read(cid) == data
        frame = store.read_frame(cid)
        check_frame(cid, frame)  # its digest is the compressed copy's
    assert store.verify().problems == []


def test_compress_pending_takes_about_its_budget_per_call(deferring_store: Open) -> None:
    store = deferring_store()
    chunks = [_pending(i) for i in range(5)]
    _store_chunks(store, chunks)
    assert [store.compress_pending(3, 1) for _ in range(6)] == [20_000] * 5 + [0]
    assert store.stats().pending_bytes == 0


def test_a_pending_chunk_that_does_not_match_its_digest_is_quarantined(
    deferring_store: Open,
) -> None:
    store = deferring_store()
    good = _pending(1)
    cid, data, frame = _pending(2)
    damaged = Frame(b"\0" + frame.data[1:], frame.raw_size, Codec.PENDING, frame.digest)
    _store_chunks(store, [good, (cid, data, damaged)])
    assert store.verify().corrupt == {cid}  # fsck finds it before the background does
    with pytest.raises(ChunkCorrupt):
        store.read(cid)
    assert _compress_all(store) == len(good[1])
    assert store.contains([good[0], cid]) == {good[0]}  # never served
    assert store.quarantined([cid]) == {cid}
    assert store.stats().pending_bytes == 0
    assert store.read(good[0]) == good[1]
    assert store.verify().problems == []
    writer = store.writer()
    assert writer.missing([cid]) == {cid}  # a re-upload stores it anew
    writer.put(cid, frame)
    writer.commit()
    assert store.read(cid) == data


def test_a_store_full_of_pending_chunks_can_still_compress_them(deferring_store: Open) -> None:
    store = deferring_store(hard_limit=300_000)
    chunks = [_pending(i) for i in range(12)]  # 240 KB raw, a few KB compressed
    _store_chunks(store, chunks)
    assert not store.admits(100_000)
    assert _compress_all(store) == 12 * 20_000
    assert store.admits(100_000)
    assert all(store.read(c[0]) == c[1] for c in chunks)


def test_a_reader_of_a_dropped_pack_reads_the_packs_after_it_right(tmp_path: Path) -> None:
    """Local: packs of pending chunks come and go; another process's read handles are
    kept by pack id, so an id is never given to a second pack."""
    compressor, writer, reader = (LocalChunkStore(tmp_path, pin_ttl=PIN_TTL) for _ in range(3))
    _store_chunks(writer, [_pending(1)])
    assert _compress_all(compressor) == 20_000  # its own pack is opened first
    chunks = [_pending(2), _pending(3)]
    _store_chunks(writer, chunks)  # a pack after it, the newest
    assert reader.read(chunks[0][0]) == chunks[0][1]  # the reader holds it open
    assert _compress_all(compressor) == 40_000  # and it is dropped
    later = [_pending(4), _pending(5)]
    _store_chunks(writer, later)
    reader.release_unused()
    for cid, data, _ in [*chunks, *later]:
        assert reader.read(cid) == data
    for store in (compressor, writer, reader):
        store.close()


# -- grouped frames (Codec.GROUP) ----------------------------------------------------

_WORDS = [os.urandom(3).hex() for _ in range(300)]  # one vocabulary: files of one tree


def _small_file(n: int) -> tuple[bytes, bytes, Frame]:
    """A package.json-sized piece that shares most of its words with its neighbours."""
    rng = __import__("random").Random(n)
    fields = ", ".join(f'"{rng.choice(_WORDS)}": "{rng.choice(_WORDS)}"' for _ in range(20))
    return _deferred(f'{{"name": "pkg-{n}", "version": "1.{n}.0", {fields}}}'.encode())


def _grouped(store: ChunkStore, group_level: int = 9) -> int:
    total = 0
    while done := store.compress_pending(3, 4 << 20, group_level):
        total += done
    return total


def test_small_chunks_that_gain_together_share_a_frame_and_read_back_identical(
    deferring_store: Open,
) -> None:
    store = deferring_store()
    files = [_small_file(n) for n in range(300)]
    noise = os.urandom(5000)
    chunks = [*files[:150], _deferred(noise), *files[150:]]
    _store_chunks(store, chunks)
    raw = sum(len(c[1]) for c in chunks)
    assert _grouped(store) == raw
    codecs = [store.read_frame(c[0]).codec for c in chunks]
    # the noise, raw alone, is in its neighbours' run, which gains as a whole
    assert codecs == [Codec.GROUP] * 301
    level3 = zstandard.ZstdCompressor(level=3)
    alone = sum(len(encode_chunk(level3, c, d).data) for c, d, _ in files)
    stats = store.stats()
    assert stats.pending_bytes == 0 and stats.chunks == 301
    assert stats.stored_bytes < 0.6 * alone + len(noise)  # far less than apart
    assert sum(size for _, size in store.iter_sizes()) >= stats.stored_bytes
    ids = [c[0] for c in chunks]
    assert [store.read(i) for i in ids] == [c[1] for c in chunks]
    frames = store.read_frames(ids[::-1])  # in any order, one body per group
    assert [f.raw_size for f in frames] == [len(c[1]) for c in chunks[::-1]]
    for cid, frame in zip(ids[::-1], frames, strict=True):
        check_frame(cid, frame)
    assert store.verify().problems == []


def test_group_level_0_and_chunks_that_gain_nothing_together_keep_their_own_frames(
    deferring_store: Open,
) -> None:
    store = deferring_store()
    files = [_small_file(n) for n in range(100)]
    _store_chunks(store, files)
    _grouped(store, group_level=0)
    assert {store.read_frame(c[0]).codec for c in files} == {Codec.ZSTD}
    hexes = [os.urandom(4000).hex().encode() for _ in range(10)]  # no word in common
    texts = [_deferred(d) for d in hexes]
    _store_chunks(store, texts)
    _grouped(store)
    assert {store.read_frame(c[0]).codec for c in texts} == {Codec.ZSTD}
    noise = [os.urandom(5000) for _ in range(10)]  # raw alone, and no better together
    pieces = [_deferred(d) for d in noise]
    _store_chunks(store, pieces)
    _grouped(store)
    assert {store.read_frame(c[0]).codec for c in pieces} == {Codec.RAW}
    assert [store.read(c[0]) for c in pieces] == noise


def _group_extent(store: LocalChunkStore, cid: bytes) -> tuple[Path, int, int]:
    pack, offset, span = store.db.conn.execute(
        "SELECT pack, offset, span FROM chunks WHERE id = ?", (cid,)
    ).fetchone()
    name = store.db.conn.execute("SELECT name FROM packs WHERE id = ?", (pack,)).fetchone()[0]
    return store.pack_dir / name, offset, span


def test_a_damaged_grouped_frame_fails_every_member_and_fsck_quarantines_them(
    tmp_path: Path,
) -> None:
    store = LocalChunkStore(tmp_path, pin_ttl=PIN_TTL)
    files = [_small_file(n) for n in range(200)]
    _store_chunks(store, files)
    _grouped(store)
    path, offset, span = _group_extent(store, files[0][0])
    members = {c[0] for c in files if _group_extent(store, c[0])[1:] == (offset, span)}
    assert len(members) > 100
    decoded_groups.clear()  # a copy decoded before the damage would still be right
    with open(path, "r+b") as f:
        f.seek(offset + span // 3)
        byte = f.read(1)
        f.seek(offset + span // 3)
        f.write(bytes([byte[0] ^ 0x40]))
    for cid in members:
        with pytest.raises(ChunkCorrupt):
            store.read(cid)
        with pytest.raises(ChunkCorrupt):
            check_frame(cid, store.read_frame(cid))
    report = store.verify(repair=True)
    assert report.corrupt == members
    assert store.contains(members) == set() and store.quarantined(members) == members
    for cid, data, _ in files:
        if cid not in members:
            assert store.read(cid) == data
    assert store.verify().problems == []
    store.close()


def test_compaction_regroups_the_live_members_of_a_partly_dead_group(tmp_path: Path) -> None:
    compressor = LocalChunkStore(tmp_path, pin_ttl=PIN_TTL)
    files = [_small_file(n) for n in range(400)]
    _store_chunks(compressor, files)
    _grouped(compressor)
    compressor.close()  # its pack is finished: compaction leaves an active one alone
    store = LocalChunkStore(tmp_path, pin_ttl=PIN_TTL)
    dead = {c[0] for c in files[::2]}
    assert store.delete(dead) == 200
    before = store.stats()
    report = _drain(store.maintenance(None, 0.9))
    assert report.compacted >= 1
    assert store.stats().pending_bytes > 0  # the live members, raw, for the background
    _grouped(store)
    after = store.stats()
    assert after.pending_bytes == 0 and after.chunks == 200
    assert after.disk_bytes < before.disk_bytes
    assert {store.read_frame(c[0]).codec for c in files[1::2]} == {Codec.GROUP}
    for cid, data, _ in files[1::2]:
        assert store.read(cid) == data
    assert store.verify().problems == []
    store.close()


def _drain(steps: Generator[None, None, MaintenanceReport]) -> MaintenanceReport:
    try:
        while True:
            next(steps)
    except StopIteration as done:
        return done.value


def _group_of(chunks: list[tuple[bytes, bytes, Frame]]) -> Frame:
    """The grouped frame an upload that compresses as it goes makes of ``chunks``."""
    (record,) = compress_chunks(
        zstandard.ZstdCompressor(level=1), 1, [c[0] for c in chunks], [c[1] for c in chunks], 9
    )
    assert record.frame.codec == Codec.GROUP and record.members == list(range(len(chunks)))
    return record.frame


def test_a_grouped_frame_put_by_a_writer_is_one_record_and_every_member_reads_back(
    open_store: Open,
) -> None:
    store = open_store()
    files = [_small_file(n) for n in range(200)]
    body = _group_of(files)
    loner = _chunk(7)
    writer = store.writer()
    assert writer.missing(c[0] for c in [*files, loner]) == {c[0] for c in [*files, loner]}
    writer.put_group(body)
    writer.put(loner[0], loner[2])
    assert writer.missing(c[0] for c in files) == set()  # the writer holds them
    assert store.contains(c[0] for c in files) == set()  # invisible until the commit
    writer.commit()
    # a store opened anew reads them from what was written (memory: the same store)
    for reader in (store, store if isinstance(store, MemoryChunkStore) else open_store()):
        ids = [c[0] for c in files]
        assert reader.contains(ids) == set(ids)
        assert [reader.read(i) for i in ids] == [c[1] for c in files]
        frames = reader.read_frames(ids[::-1])  # in any order, with the loner between
        assert {(f.codec, f.digest) for f in frames} == {(Codec.GROUP, body.digest)}
        for cid, frame in zip(ids[::-1], frames, strict=True):
            check_frame(cid, frame)
        assert reader.read(loner[0]) == loner[1]
        stats = reader.stats()
        assert stats.chunks == 201
        # the body is counted once, shared out among its members
        assert stats.stored_bytes == len(body.data) + len(loner[2].data)
        assert stats.stored_bytes < 0.6 * sum(len(c[2].data) for c in files)
        assert reader.verify().problems == []
    # a member deleted alone leaves the others readable
    assert store.delete([files[0][0]]) == 1
    assert store.read(files[1][0]) == files[1][1]
    assert store.contains([files[0][0]]) == set()
