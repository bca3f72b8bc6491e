"""Limits: eviction frees what it claims, TTL, the hard limit's 507, per-object stats."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

from conftest import StartServer, curl

from cachesrv.catalog import StoredManifest
from cachesrv.catalog.sqlite import SqliteCatalog
from cachesrv.config import Config
from cachesrv.repository import Repository

KiB = 1024


def _repo(data: Path, **settings: object) -> Repository:
    # no upload is in flight in these tests: their pins need not outlive them
    settings.setdefault("upload_pin_ttl", 0.0)
    return Repository.open(Config(data=data, **settings))  # type: ignore[arg-type]


def _store(repo: Repository, path: str, content: bytes) -> None:
    session = repo.ingest_session(tar_aware=False)
    session.feed(content)
    repo.catalog.publish([(path, session.finish())])


def _live_bytes(repo: Repository) -> int:
    return sum(size for _, size in repo.store.iter_sizes())  # records: header (44) + frame


def test_eviction_removes_least_recently_used_and_frees_exactly_what_it_claims(
    tmp_path: Path,
) -> None:
    repo = _repo(tmp_path, max_size=10**12, ttl=None, gc_grace=0.0)
    # seeded: where CDC cuts near the end of ``shared`` decides each object's unique bytes
    rng = random.Random(8)
    shared = rng.randbytes(600 * KiB)  # every object holds it: no eviction may count it
    for i in range(8):
        _store(repo, f"obj/{i}", shared + rng.randbytes(300 * KiB))
        time.sleep(0.01)
    _store(repo, "copy/of-3", b"")  # a name sharing nothing
    repo.catalog.publish([("alias/5", StoredManifest.of(_manifest_of(repo, "obj/5")))])
    repo.access.touch("object", "obj/0")  # read recently: kept although oldest
    repo.access.flush(repo.catalog)

    before = _live_bytes(repo)
    max_size = before - 900 * KiB  # down to 90% of that: four objects' unique bytes
    repo.config = Config(data=tmp_path, max_size=max_size, ttl=None, gc_grace=0.0)
    report = repo.collector().run()
    evicted = [e["name"] for e in report.evicted]
    # LRU: obj/0 was read; obj/5 has an alias, so evicting it alone frees nothing
    # (three or four: where CDC cut the shared prefix decides a few KiB either way)
    assert len(evicted) in (3, 4)
    assert evicted == ["obj/1", "obj/2", "obj/3", "obj/4"][: len(evicted)]
    assert report.evicted_claimed_bytes >= before - int(0.9 * max_size)

    # grace 0: the next collection sweeps what they alone held, to the byte
    swept = repo.collector().run()
    assert (
        before - _live_bytes(repo)
        == report.evicted_claimed_bytes
        == swept.swept_bytes + (44 * swept.swept_chunks)
    )
    for i in (0, 5, 6, 7):
        assert repo.catalog.get(f"obj/{i}") is not None
        ref = repo.catalog.get(f"obj/{i}")
        assert ref is not None
        for cid in repo.catalog.manifest(ref.manifest_id).chunk_ids():
            repo.store.read(cid)
    repo.close()


def _manifest_of(repo: Repository, path: str):  # type: ignore[no-untyped-def]
    ref = repo.catalog.get(path)
    assert ref is not None
    return repo.catalog.manifest(ref.manifest_id)


def test_ttl_expires_names_not_read_since(tmp_path: Path) -> None:
    repo = _repo(tmp_path, ttl=3600.0, gc_grace=0.0)
    _store(repo, "old", os.urandom(50 * KiB))
    _store(repo, "read", os.urandom(50 * KiB))
    _store(repo, "new", os.urandom(50 * KiB))
    assert isinstance(repo.catalog, SqliteCatalog)
    conn = repo.catalog.db.conn
    two_hours_ago = time.time() - 7200
    conn.execute("UPDATE objects SET atime = ? WHERE path IN ('old', 'read')", (two_hours_ago,))
    repo.access.touch("object", "read")
    repo.access.flush(repo.catalog)
    report = repo.collector().run()
    assert report.expired_names == 1
    assert repo.catalog.get("old") is None
    assert repo.catalog.get("read") is not None and repo.catalog.get("new") is not None
    repo.close()


def test_hard_limit_refuses_with_507_and_keeps_the_previous_version(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(args=["--hard-limit", "3M", "--gc-interval", "0"])
    first = os.urandom(1024 * KiB)
    (tmp_path / "first").write_bytes(first)
    assert curl("-f", "-T", str(tmp_path / "first"), f"{server.url}/a/b.bin").returncode == 0

    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 * 1024 * KiB))
    # Content-Length known: refused before the body is read
    result = curl("-o", "/dev/null", "-w", "%{http_code}", "-T", str(big), f"{server.url}/a/b.bin")
    assert result.stdout == b"507"
    # chunked, no length: refused when the store hits the limit; nothing visible changes
    result = curl(
        "-o", "/dev/null", "-w", "%{http_code}", "-H", "Transfer-Encoding: chunked",
        "-T", str(big), f"{server.url}/a/b.bin",
    )  # fmt: skip
    assert result.stdout == b"507"
    assert curl("-f", f"{server.url}/a/b.bin").stdout == first
    # a small upload still fits
    assert curl("-f", "-T", str(tmp_path / "first"), f"{server.url}/c").returncode == 0


def test_targz_upload_into_a_store_at_its_hard_limit_is_507_and_changes_nothing(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(args=["--hard-limit", "3M", "--gc-interval", "0"])
    first = os.urandom(1024 * KiB)
    (tmp_path / "first").write_bytes(first)
    assert curl("-f", "-T", str(tmp_path / "first"), f"{server.url}/site/old.bin").returncode == 0
    # the archive fits (incompressible: it stores ~1.2 MiB); its members, as many new
    # bytes again, do not
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ("a.bin", "b.bin"):
            content = os.urandom(600 * KiB)
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    (tmp_path / "site.tar.gz").write_bytes(buffer.getvalue())
    before = json.loads(curl(f"{server.url}/-/stats").stdout)
    result = curl(
        "-w", "\n%{http_code}", "-F", "path=site", "-F", f"file=@{tmp_path / 'site.tar.gz'}",
        "-F", "targz=1", f"{server.url}/upload",
    )  # fmt: skip
    body, _, code = result.stdout.rpartition(b"\n")
    assert code == b"507", result.stdout
    assert json.loads(body) == {"message": "Insufficient Storage: the disk is full"}
    after = json.loads(curl(f"{server.url}/-/stats").stdout)
    for field in ("objects", "logical_bytes"):
        assert after[field] == before[field]
    for name in ("site/a.bin", "site/b.bin"):
        missing = curl("-o", "/dev/null", "-w", "%{http_code}", f"{server.url}/{name}")
        assert missing.stdout == b"404"
    assert curl("-f", f"{server.url}/site/old.bin").stdout == first


def test_stats_objects_show_unique_and_shared_bytes(start_server: StartServer) -> None:
    server = start_server(args=["--gc-interval", "0", "--max-size", "700K", "--hard-limit", "0"])
    # seeded: with os.urandom a CDC cut fell ~200 KiB past the shared prefix now and then
    rng = random.Random(5)
    shared = rng.randbytes(400 * KiB)
    for name in ("x", "y"):
        body = shared + rng.randbytes(200 * KiB)
        assert curl("-f", "-T", "-", f"{server.url}/{name}", input=body).returncode == 0
    with urllib.request.urlopen(f"{server.url}/-/stats?objects=1") as response:
        lifecycle = json.load(response)["lifecycle"]
    rows = {row["name"]: row for row in lifecycle["objects"]}
    assert set(rows) == {"x", "y"}
    for row in rows.values():
        # incompressible; the chunk straddling the shared prefix's end is each one's own
        assert 200 * KiB <= row["unique_bytes"] <= 330 * KiB
        assert 600 * KiB <= row["unique_bytes"] + row["shared_bytes"] <= 610 * KiB
        assert row["last_access"] > 0
    assert [row["name"] for row in lifecycle["next_eviction"]] == ["x"]

    out = subprocess.run(
        [sys.executable, "-m", "cachesrv", "stats", "--objects", "--data", str(server.data)],
        capture_output=True,
        check=True,
    )
    assert {row["name"] for row in json.loads(out.stdout)["lifecycle"]["objects"]} == {"x", "y"}
