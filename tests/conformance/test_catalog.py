"""What every catalog promises (cachesrv.catalog.CatalogBackend), checked on each backend."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachesrv.catalog import CatalogBackend, Conflict, EntryExists, SqliteCatalog, StoredManifest
from cachesrv.catalog.memory import MemoryCatalog
from cachesrv.catalog.remembered import RememberedRefs
from cachesrv.catalog.s3 import S3Catalog
from cachesrv.manifest import Manifest, Piece
from cachesrv.store.s3 import open_object_store


@pytest.fixture(params=["sqlite", "memory", "s3"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CatalogBackend]:
    backend: CatalogBackend
    if request.param == "sqlite":
        backend = SqliteCatalog(tmp_path)
    elif request.param == "s3":  # a fresh prefix of the suite's SeaweedFS, as a replica
        objects = open_object_store(request.getfixturevalue("s3_url"), timeout=10)
        # with --data: it remembers what it read, which must change no answer
        backend = S3Catalog(objects.child("catalog/"), remembered=RememberedRefs(tmp_path))
    else:
        backend = MemoryCatalog()
    yield backend
    backend.close()


def _version(content: bytes = b"", chunks: int = 1) -> StoredManifest:
    content = content or os.urandom(16)
    pieces = [Piece(len(content), inline=content)]
    pieces += [Piece(10, chunk_id=os.urandom(32)) for _ in range(chunks)]
    size = sum(p.size for p in pieces)
    return StoredManifest.of(Manifest(size, os.urandom(32), tuple(pieces)))


def test_publish_makes_every_name_visible_at_once_or_none(catalog: CatalogBackend) -> None:
    a, b = _version(), _version()
    mtime = catalog.publish([("x/a", a), ("x/b", b)])
    ref = catalog.get("x/a")
    assert ref is not None and ref.manifest_id == a.manifest_id and ref.mtime == mtime
    assert ref.size == a.manifest.size and ref.digest == a.manifest.digest
    assert catalog.manifest(a.manifest_id) == a.manifest
    assert catalog.manifest_body(b.manifest_id) == b.body
    with pytest.raises(Conflict):  # the second item conflicts: the first is not published
        catalog.publish([("y", _version()), ("x/a/under-a-file", _version())])
    assert catalog.get("y") is None
    with pytest.raises(KeyError):
        catalog.manifest(b"\1" * 32)
    assert catalog.manifest_body(b"\1" * 32) is None


def test_a_path_is_a_file_or_a_directory_never_both(catalog: CatalogBackend) -> None:
    catalog.publish([("d/f", _version())])
    with pytest.raises(Conflict):
        catalog.publish([("d", _version())])
    with pytest.raises(Conflict):
        catalog.publish([("d/f/g", _version())])
    catalog.publish([("d/f", _version()), ("d/g/h", _version()), ("dx", _version())])
    assert catalog.is_directory("d") and catalog.is_directory("")
    assert not catalog.is_directory("d/f") and not catalog.is_directory("dx")
    assert [(n, d) for n, d, _ in catalog.children("d")] == [("f", False), ("g", True)]
    assert [n for n, _, _ in catalog.children("")] == ["d", "dx"]
    assert catalog.delete_tree("d") == 3 - 1  # d/f and d/g/h; dx is not below d
    assert catalog.get("dx") is not None and not catalog.is_directory("d")
    assert catalog.delete_paths(["dx", "nothing"]) == 1


def test_overwrite_points_the_name_at_the_new_version(catalog: CatalogBackend) -> None:
    old, new = _version(), _version()
    catalog.publish([("p", old)])
    catalog.publish([("p", new)])
    ref = catalog.get("p")
    assert ref is not None and ref.manifest_id == new.manifest_id
    assert catalog.totals() == {
        "objects": 1,
        "cache_entries": 0,
        "logical_bytes": new.manifest.size,
    }


def test_entries_keep_the_first_save_unless_replaced_or_old(catalog: CatalogBackend) -> None:
    first, second = _version(), _version()
    catalog.save_entry("k", first)
    with pytest.raises(EntryExists):
        catalog.save_entry("k", second)
    with pytest.raises(EntryExists):
        catalog.save_entry("k", second, max_age=3600)
    catalog.save_entry("k", second, max_age=0.0)
    ref = catalog.find_entry("k")
    assert ref is not None and ref.manifest_id == second.manifest_id
    catalog.save_entry("k", first, replace=True)
    ref = catalog.find_entry("k")
    assert ref is not None and ref.manifest_id == first.manifest_id
    assert catalog.delete_entry("k") and not catalog.delete_entry("k")
    assert catalog.find_entry("k") is None


def test_restore_keys_find_the_newest_entry_by_prefix(catalog: CatalogBackend) -> None:
    for key in ("go-linux-1", "go-linux-2", "npm-1"):
        catalog.save_entry(key, _version())
        time.sleep(0.01)
    assert catalog.find_entry("go-linux-1", exact=True) is not None
    assert catalog.find_entry("go-linux-", exact=True) is None
    ref = catalog.find_entry("go-linux-")
    assert ref is not None and ref.name == "go-linux-2"
    ref = catalog.find_entry("go-darwin-9", ["nothing-", "npm-", "go-"])
    assert ref is not None and ref.name == "npm-1"
    assert catalog.find_entry("zzz", ["yyy"]) is None
    # entries are not objects
    assert catalog.get("npm-1") is None
    assert {(ns, n) for ns, n, _ in catalog.names()} == {
        ("entry", "go-linux-1"),
        ("entry", "go-linux-2"),
        ("entry", "npm-1"),
    }


def test_touch_moves_access_times_forward_and_orders_eviction(catalog: CatalogBackend) -> None:
    catalog.publish([("a", _version())])
    catalog.save_entry("b", _version())
    catalog.publish([("c", _version())])
    now = time.time()
    catalog.touch({("object", "a"): now + 10, ("entry", "b"): now + 5, ("object", "gone"): now})
    catalog.touch({("object", "a"): now})  # never backwards
    order = [(ns, n) for ns, n, _, _, _ in catalog.names_by_access()]
    assert order == [("object", "c"), ("entry", "b"), ("object", "a")]
    atime = {n: t for _, n, _, _, t in catalog.names_by_access()}
    assert atime["a"] == now + 10


def test_expire_removes_names_not_read_since(catalog: CatalogBackend) -> None:
    catalog.publish([("old", _version()), ("read", _version())])
    catalog.save_entry("entry", _version())
    cutoff = time.time() + 1
    catalog.touch({("object", "read"): cutoff + 1})
    assert catalog.expire(cutoff) == 2
    assert catalog.get("read") is not None and catalog.get("old") is None


def test_remove_if_unchanged_spares_names_read_or_overwritten_since(
    catalog: CatalogBackend,
) -> None:
    catalog.publish([("a", _version()), ("b", _version()), ("c", _version())])
    plan = [(ns, n, m, t) for ns, n, m, _, t in catalog.names_by_access()]
    catalog.touch({("object", "a"): time.time() + 10})
    catalog.publish([("b", _version())])
    assert catalog.remove_if_unchanged(plan) == 1
    assert catalog.get("a") is not None and catalog.get("b") is not None
    assert catalog.get("c") is None


def test_unreferenced_manifests_stay_roots_for_the_grace_then_drop(
    catalog: CatalogBackend,
) -> None:
    old, kept = _version(), _version()
    catalog.publish([("p", old), ("q", kept)])
    catalog.publish([("p", _version())])  # old is no name's any more
    doomed_at = time.time()
    catalog.doom_unreferenced(doomed_at)
    assert old.manifest_id not in catalog.live_manifest_ids()
    roots = {m: live for m, _, live in catalog.root_manifests(doomed_at - 1)}
    assert old.manifest_id in roots and not roots[old.manifest_id]  # within its grace
    assert roots[kept.manifest_id]
    assert old.manifest_id not in {m for m, _, _ in catalog.root_manifests(doomed_at + 1)}
    assert catalog.drop_doomed(doomed_at - 1) == 0
    assert catalog.drop_doomed(doomed_at + 1) == 1
    assert catalog.manifest_body(old.manifest_id) is None
    assert catalog.manifest_body(kept.manifest_id) == kept.body


def test_a_revived_manifest_is_not_dropped(catalog: CatalogBackend) -> None:
    version = _version()
    catalog.publish([("p", version)])
    catalog.delete_paths(["p"])
    catalog.doom_unreferenced(time.time() - 100)
    catalog.publish([("again", version)])  # the same content uploaded again
    catalog.doom_unreferenced(time.time())
    assert catalog.drop_doomed(time.time()) == 0
    assert catalog.manifest(version.manifest_id) == version.manifest


def test_root_manifests_pages_by_id(catalog: CatalogBackend) -> None:
    versions = [_version() for _ in range(7)]
    catalog.publish([(f"n{i}", v) for i, v in enumerate(versions)])
    seen, after = [], b""
    while page := catalog.root_manifests(0.0, after, limit=3):
        assert len(page) <= 3
        seen += [m for m, _, _ in page]
        after = page[-1][0]
    assert seen == sorted(v.manifest_id for v in versions)
    bodies = {m: body for m, body, _ in catalog.root_manifests(0.0, b"", 100)}
    assert all(bodies[v.manifest_id] == v.body for v in versions)


def test_ping_answers_when_readable(catalog: CatalogBackend) -> None:
    catalog.ping()


def test_publish_with_an_mtime_keeps_it_as_last_modified_and_now_as_access(
    catalog: CatalogBackend,
) -> None:
    old = time.time() - 30 * 86400  # an imported file, a month old
    before = time.time()
    assert catalog.publish([("imported/a.tar", _version())], mtime=old) == old
    ref = catalog.get("imported/a.tar")
    assert ref is not None and ref.mtime == old
    (atime,) = [t for _, n, _, _, t in catalog.names_by_access() if n == "imported/a.tar"]
    assert atime >= before  # TTL counts from the import, not from the file's age
    assert catalog.expire(before - 86400) == 0 and catalog.get("imported/a.tar") is not None
    # the directory listing (DELETE /delete?days=) sees the file's age
    assert catalog.children("imported") == [("a.tar", False, old)]


def test_history_keeps_every_replicas_points_since_a_time_oldest_first(
    catalog: CatalogBackend,
) -> None:
    assert catalog.samples(0.0) == []
    for i in range(5):
        catalog.record_sample("a", 1000.0 + i, {"stored_bytes": i * 10, "hits": i}, since=1002.0)
    assert catalog.samples(0.0) == [
        (1002.0, {"stored_bytes": 20, "hits": 2}),
        (1003.0, {"stored_bytes": 30, "hits": 3}),
        (1004.0, {"stored_bytes": 40, "hits": 4}),
    ]
    assert [at for at, _ in catalog.samples(1003.0)] == [1003.0, 1004.0]
    # another replica's points come back among them, in time order
    catalog.record_sample("b", 1003.5, {"stored_bytes": 35, "hits": 7}, since=1002.0)
    assert [at for at, _ in catalog.samples(1003.0)] == [1003.0, 1003.5, 1004.0]
    assert [v["hits"] for _, v in catalog.samples(1003.0)] == [3, 7, 4]


def test_s3_history_is_shared_by_replicas_and_outlives_a_restart(s3_url: str) -> None:
    objects = open_object_store(s3_url, timeout=10).child("catalog/")
    first, second = S3Catalog(objects), S3Catalog(objects)
    try:
        first.record_sample("pod-a-1", 1000.0, {"hits": 1}, since=0.0)
        second.record_sample("pod-b-1", 1001.0, {"hits": 2}, since=0.0)
        assert [v["hits"] for _, v in first.samples(0.0)] == [1, 2]
        # pod-a's container restarts: same host name, same pid, a new process
        restarted = S3Catalog(objects)
        restarted.record_sample("pod-a-1", 1002.0, {"hits": 3}, since=0.0)
        assert [v["hits"] for _, v in restarted.samples(0.0)] == [1, 2, 3]
        # a replica gone for longer than the history is kept has its object deleted
        restarted.record_sample("pod-a-1", 9e9, {"hits": 4}, since=time.time() + 1)
        assert [key for key, _, _ in objects.listing("history/")] == ["history/pod-a-1"]
        restarted.close()
    finally:
        first.close()
        second.close()
