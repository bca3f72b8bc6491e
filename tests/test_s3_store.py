"""The S3 object store under cachesrv: a real SeaweedFS, started by the suite."""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any

import pytest
import zstandard

from cachesrv.catalog import Conflict, EntryExists, StoredManifest
from cachesrv.catalog.s3 import S3Catalog
from cachesrv.manifest import Manifest, Piece
from cachesrv.store import (
    ChunkCorrupt,
    Codec,
    Frame,
    chunk_id,
    compress_chunks,
    decoded_groups,
    encode_chunk,
)
from cachesrv.store.s3 import S3ChunkStore, open_object_store
from cachesrv.store.s3 import index as index_module
from cachesrv.store.s3.client import (
    ConditionalWritesUnsupported,
    ObjectStore,
    PreconditionFailed,
    StoreUrl,
)
from cachesrv.store.s3.index import ChunkIndex, Location, Op


def test_a_store_url_names_bucket_and_prefix() -> None:
    assert StoreUrl.parse("s3://bucket/a/b/") == StoreUrl("bucket", "a/b/")
    assert StoreUrl.parse("s3://bucket") == StoreUrl("bucket", "")
    with pytest.raises(ValueError):
        StoreUrl.parse("/var/cache")


def test_seaweedfs_honours_conditional_writes(s3_url: str) -> None:
    store = ObjectStore(StoreUrl.parse(s3_url), timeout=10)
    store.check_conditional_writes()
    etag = store.put("ref", b"one", create=True)
    with pytest.raises(PreconditionFailed):
        store.put("ref", b"two", create=True)
    with pytest.raises(PreconditionFailed):
        store.put("ref", b"two", if_match='"0"')
    store.put("ref", b"three", if_match=etag)
    assert store.get("ref")[0] == b"three"
    assert store.get_range("ref", 1, 3) == b"hr"
    assert [k for k, _, _ in store.listing()] == ["ref"]  # the probe left nothing behind


class _IgnoresConditions:
    """A client for a store that accepts every PUT, conditional or not (as some
    S3-compatible stores do)."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def put_object(self, **kwargs: Any) -> Any:
        kwargs.pop("IfNoneMatch", None)
        kwargs.pop("IfMatch", None)
        return self._real.put_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_a_store_that_ignores_conditional_writes_is_refused_with_the_reason(
    s3_url: str,
) -> None:
    real = ObjectStore(StoreUrl.parse(s3_url), timeout=10)
    store = ObjectStore(real.url, 10, _IgnoresConditions(real.client))
    with pytest.raises(ConditionalWritesUnsupported, match="If-None-Match"):
        store.check_conditional_writes()


def _chunks(count: int, size: int = 175) -> list[tuple[bytes, bytes, Frame]]:
    compressor = zstandard.ZstdCompressor(level=1)
    result = []
    for _ in range(count):
        data = os.urandom(size // 2) * 2
        cid = chunk_id(data)
        result.append((cid, data, encode_chunk(compressor, cid, data)))
    return result


def test_replicas_share_chunks_packed_many_per_object(s3_url: str) -> None:
    objects = open_object_store(s3_url, timeout=10).child("chunks/")
    first, second = S3ChunkStore(objects), S3ChunkStore(objects)
    chunks = _chunks(300)
    writer = first.writer()
    assert writer.missing(c[0] for c in chunks) == {c[0] for c in chunks}
    for cid, _, frame in chunks:
        writer.put(cid, frame)
    writer.commit()
    # the other replica knows them from the index objects, without a request per chunk
    assert second.writer().missing(c[0] for c in chunks) == set()
    assert second.contains(c[0] for c in chunks) == {c[0] for c in chunks}
    frames = second.read_frames([c[0] for c in chunks[::-1]])
    assert [f.data for f in frames] == [c[2].data for c in chunks[::-1]]
    assert all(second.read(cid) == data for cid, data, _ in chunks[:5])
    packs = [k for k, _, _ in objects.listing("packs/")]
    assert len(packs) == 1  # never one object per chunk


def test_a_writer_that_dies_before_commit_leaves_nothing_visible(s3_url: str) -> None:
    objects = open_object_store(s3_url, timeout=10).child("chunks/")
    store = S3ChunkStore(objects)
    chunks = _chunks(3, size=4 << 20)  # past the pack target: packs upload before commit
    writer = store.writer()
    for cid, _, frame in chunks:
        writer.put(cid, frame)
    assert [k for k, _, _ in objects.listing("packs/")]  # uploaded, not indexed
    del writer  # the process is gone: no commit, no abort
    assert S3ChunkStore(objects).contains(c[0] for c in chunks) == set()
    assert S3ChunkStore(objects).stats().chunks == 0


def test_the_gc_lease_is_held_by_one_replica_at_a_time(s3_url: str) -> None:
    objects = open_object_store(s3_url, timeout=10).child("chunks/")
    first, second = S3ChunkStore(objects), S3ChunkStore(objects)
    lease = first.lease("gc")
    assert lease is not None and second.lease("gc") is None
    lease.release()
    taken = second.lease("gc")
    assert taken is not None and first.lease("gc") is None
    taken.release()


def _version() -> StoredManifest:
    content = os.urandom(16)
    return StoredManifest.of(Manifest(16, os.urandom(32), (Piece(16, inline=content),)))


def test_a_keyed_save_raced_from_two_replicas_has_one_winner(s3_url: str) -> None:
    objects = open_object_store(s3_url, timeout=10).child("catalog/")
    replicas = [S3Catalog(objects) for _ in range(2)]
    versions = [_version() for _ in range(8)]
    barrier = threading.Barrier(len(versions))
    outcomes: list[str] = []

    def save(n: int) -> None:
        barrier.wait()
        try:
            replicas[n % 2].save_entry("go-linux", versions[n])
            outcomes.append("saved")
        except EntryExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=save, args=(n,)) for n in range(len(versions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["exists"] * 7 + ["saved"]
    found = [r.find_entry("go-linux") for r in replicas]
    assert found[0] is not None and found[0] == found[1]
    for r in replicas:
        r.close()


def _race_file_and_directory(replicas: list[S3Catalog], paths: list[str]) -> list[str]:
    barrier = threading.Barrier(2)
    won: list[str] = []

    def publish(n: int, path: str) -> None:
        barrier.wait()
        try:
            replicas[n].publish([(path, _version())])
            won.append(path)
        except Conflict:
            pass

    threads = [threading.Thread(target=publish, args=(n, p)) for n, p in enumerate(paths)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won


def test_a_file_and_a_directory_raced_from_two_replicas_never_both_exist(s3_url: str) -> None:
    objects = open_object_store(s3_url, timeout=10).child("catalog/")
    replicas = [S3Catalog(objects) for _ in range(2)]
    for round_ in range(5):
        paths = [f"r{round_}", f"r{round_}/below"]
        won = _race_file_and_directory(replicas, paths)
        assert len(won) == 1
        assert {p for p in paths if replicas[0].get(p) is not None} == set(won)
    for r in replicas:
        r.close()


def test_replicas_that_read_the_index_in_another_order_read_the_same_copy() -> None:
    """Two uploads stored one chunk twice; a DEL forgets one copy. Every order of
    replay gives the same answer."""
    cid = chunk_id(b"twice")
    first = Location("a.pack", 40, 10, 10, Codec.RAW, None)
    second = Location("b.pack", 40, 10, 10, Codec.RAW, None)
    records = [
        ({"a.pack": 50}, [(Op.ADD, cid, first)]),
        ({"b.pack": 50}, [(Op.ADD, cid, second)]),
        ({"a.pack": 0}, [(Op.DEL, cid, first)]),
    ]
    views = []
    for order in itertools.permutations(records):
        index = ChunkIndex()
        for packs, recs in order:
            index.apply(packs, recs)
        views.append(dict(index.chunks.items()))
    assert all(v == {cid: second} for v in views)


def test_merging_old_index_objects_keeps_what_every_replica_reads(s3_url: str) -> None:
    objects = open_object_store(s3_url, timeout=10).child("chunks/")
    old_replica = S3ChunkStore(objects)
    chunks = _chunks(30)
    for cid, _, frame in chunks:  # a commit each: an index object each
        writer = old_replica.writer()
        writer.put(cid, frame)
        writer.commit()
    old_replica.delete([chunks[0][0]])
    assert old_replica.merge_index(older_than=0, at_least=2) == 31
    assert len(list(objects.listing("index/"))) == 1
    new_replica = S3ChunkStore(objects)
    wanted = {c[0] for c in chunks[1:]}
    for store in (old_replica, new_replica):
        store.refresh()
        assert store.contains(c[0] for c in chunks) == wanted
        assert store.read(chunks[5][0]) == chunks[5][1]


# -- grouped frames: an upload to the object store groups small chunks as they come ----

_WORDS = [os.urandom(3).hex() for _ in range(300)]


def _small_files(count: int) -> list[tuple[bytes, bytes]]:
    """package.json-sized pieces sharing most of their words: (id, bytes)."""
    import random

    files = []
    for n in range(count):
        rng = random.Random(n)
        fields = ", ".join(f'"{rng.choice(_WORDS)}": "{rng.choice(_WORDS)}"' for _ in range(20))
        data = f'{{"name": "pkg-{n}", {fields}}}'.encode()
        files.append((chunk_id(data), data))
    return files


def _put_grouped(store: S3ChunkStore, files: list[tuple[bytes, bytes]]) -> list[Frame]:
    """Stored as an upload does (compress_chunks on batches of new chunks), committed;
    returns the grouped frames."""
    writer = store.writer()
    writer.missing(i for i, _ in files)
    bodies = []
    for start in range(0, len(files), 150):
        batch = files[start : start + 150]
        (record,) = compress_chunks(
            zstandard.ZstdCompressor(level=1), 1, [i for i, _ in batch], [d for _, d in batch], 9
        )
        assert record.frame.codec == Codec.GROUP
        writer.put_group(record.frame)
        bodies.append(record.frame)
    writer.commit()
    return bodies


def test_compaction_compresses_the_live_members_of_a_partly_dead_group_again(
    s3_url: str,
) -> None:
    objects = open_object_store(s3_url, timeout=10).child("chunks/")
    store = S3ChunkStore(objects, group_level=9)
    files = _small_files(300)
    _put_grouped(store, files)
    before = store.usage_bytes()
    dead = {i for i, _ in files[::2]}
    assert store.delete(dead) == 150
    report = _drain(store.maintenance(None, 0.9))
    assert report.compacted == 1
    live = files[1::2]
    for replica in (store, S3ChunkStore(objects)):
        assert replica.stats().chunks == 150
        assert replica.usage_bytes() < 0.7 * before
        assert {f.codec for f in replica.read_frames([i for i, _ in live])} == {Codec.GROUP}
        assert [replica.read(i) for i, _ in live] == [d for _, d in live]
        assert replica.contains(dead) == set()
        assert replica.verify().problems == []


def test_a_damaged_grouped_frame_in_the_bucket_fails_every_member_and_fsck_finds_them(
    s3_url: str,
) -> None:
    objects = open_object_store(s3_url, timeout=10).child("chunks/")
    store = S3ChunkStore(objects)
    files = _small_files(300)
    first, _ = _put_grouped(store, files)
    members = {i for i, _ in files[:150]}
    (key,) = [k for k, _, _ in objects.listing("packs/")]
    pack, _ = objects.get(key)
    at = pack.index(first.data) + len(first.data) // 3
    objects.put(key, pack[:at] + bytes([pack[at] ^ 0x40]) + pack[at + 1 :])
    decoded_groups.clear()  # a copy decoded before the damage would still be right
    replica = S3ChunkStore(objects)
    for cid in members:
        with pytest.raises(ChunkCorrupt):
            replica.read(cid)
    report = replica.verify(repair=True)
    assert report.corrupt == members
    assert replica.quarantined(members) == members
    assert [replica.read(i) for i, _ in files[150:]] == [d for _, d in files[150:]]
    assert replica.verify().problems == []


def test_index_objects_written_before_grouped_frames_are_still_read(s3_url: str) -> None:
    objects = open_object_store(s3_url, timeout=10).child("chunks/")
    chunks = _chunks(3)
    writer = S3ChunkStore(objects).writer()
    for cid, _, frame in chunks:
        writer.put(cid, frame)
    writer.commit()
    (key,) = [k for k, _, _ in objects.listing("index/")]
    body, _ = objects.get(key)
    packs, records = index_module.decode(body)
    # the same records as the previous format wrote them: CSX1, no inner nor span
    start = len(body) - 3 * index_module.RECORD.size
    old = [
        index_module.RECORD_V1.pack(*fields[:8])
        for fields in index_module.RECORD.iter_unpack(body[start:])
    ]
    objects.put(key, index_module.MAGIC_V1 + body[4:start] + b"".join(old))
    replica = S3ChunkStore(objects)
    assert [replica.read(c[0]) for c in chunks] == [c[1] for c in chunks]
    assert replica.verify().problems == []


def _drain(steps: Any) -> Any:
    try:
        while True:
            next(steps)
    except StopIteration as done:
        return done.value
