"""GC never removes a chunk that a live name, an in-flight upload or a download can reach.

The server collects in a loop (every 50 ms) while another process runs
``cachesrv gc`` in a loop too, and clients upload (deduplicating against what is
stored and what was just deleted), overwrite, delete and download concurrently.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

from conftest import Server, StartServer, http_request

from cachesrv.config import Config
from cachesrv.lifecycle.gc import Limits
from cachesrv.repository import Repository
from cachesrv.store import COMMIT_ROWS
from cachesrv.store.local import LocalChunkStore

MiB = 1 << 20
DURATION = 12.0


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_gc_loop_during_uploads_overwrites_deletes_and_downloads(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(
        args=["--gc-interval", "0.05", "--gc-grace", "1", "--upload-pin-ttl", "4"]
    )
    pool = [os.urandom(MiB) for _ in range(4)]  # uploads reuse these: dedup hits galore
    published: dict[str, set[str]] = {}  # every version ever sent for a path
    final: dict[str, str | None] = {}  # the last acknowledged state of a path
    errors: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def content(rng: random.Random) -> bytes:
        parts = [rng.choice(pool)[: rng.randrange(64 << 10, MiB)] for _ in range(rng.randint(1, 3))]
        return b"".join(parts) + rng.randbytes(rng.randrange(1, 200 << 10))

    def uploader(worker: int) -> None:
        rng = random.Random(worker)
        paths = [f"u{worker}/{i}.tar" for i in range(3)]
        while not stop.is_set():
            path = rng.choice(paths)
            if rng.random() < 0.2:
                status, _ = http_request("DELETE", f"{server.url}/upload?path={path}")
                if status in (202, 404):
                    with lock:
                        final[path] = None
                else:
                    errors.append(f"DELETE {path}: {status}")
                continue
            body = content(rng)
            with lock:
                published.setdefault(path, set()).add(_digest(body))
            status, answer = http_request("PUT", f"{server.url}/{path}", body)
            if status != 201:
                errors.append(f"PUT {path}: {status} {answer[:200]!r}")
                continue
            with lock:
                final[path] = _digest(body)

    def downloader(worker: int) -> None:
        rng = random.Random(100 + worker)
        while not stop.is_set():
            with lock:
                paths = list(published)
            if not paths:
                time.sleep(0.01)
                continue
            path = rng.choice(paths)
            status, body = http_request("GET", f"{server.url}/{path}")
            if status == 200:
                with lock:
                    known = _digest(body) in published[path]
                if not known:
                    errors.append(f"GET {path}: bytes of no version ever uploaded")
            elif status != 404:
                errors.append(f"GET {path}: {status} {body[:200]!r}")

    def offline_gc() -> None:  # another process collecting the same store
        while not stop.is_set():
            subprocess.run(
                [sys.executable, "-m", "cachesrv", "gc", "--data", str(server.data)],
                capture_output=True,
                check=True,
                env={**server.env, "CACHESRV_GC_GRACE": "1"},
            )

    threads = [threading.Thread(target=uploader, args=(i,)) for i in range(3)]
    threads += [threading.Thread(target=downloader, args=(i,)) for i in range(3)]
    threads.append(threading.Thread(target=offline_gc))
    for thread in threads:
        thread.start()
    time.sleep(DURATION)  # the workload's length, not a synchronisation
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[:10]

    for path, digest in final.items():
        status, body = http_request("GET", f"{server.url}/{path}")
        if digest is None:
            assert status == 404, path
        else:
            assert status == 200 and _digest(body) == digest, path
    stats = json.loads(http_request("GET", f"{server.url}/-/stats")[1])
    assert stats["lifecycle"]["last_gc"] is not None
    swept = [int(n) for n in re.findall(r"gc: (\d+) chunks", server.log_text())]
    assert sum(swept) > 0, "the server's collections swept nothing: the test proves nothing"
    server.stop()
    _assert_fsck_clean(server)


def _assert_fsck_clean(server: Server) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cachesrv", "fsck", "--data", str(server.data)],
        capture_output=True,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_sweep_and_compaction_reclaim_space_and_keep_every_live_object(tmp_path: Path) -> None:
    # compressed as they come: the twelve uploads share one pack, which GC compacts
    config = Config(data=tmp_path, ttl=None, gc_grace=0.0, upload_pin_ttl=0.0, background_level=0)
    repo = Repository.open(config)
    kept: dict[str, bytes] = {}
    for i in range(12):
        data = os.urandom(300 << 10)
        session = repo.ingest_session(tar_aware=False)
        session.feed(data)
        repo.catalog.publish([(f"o{i}", session.finish())])
        kept[f"o{i}"] = data
    repo.store.close()  # its writer lets go of the pack, as a restart would
    repo.close()

    repo = Repository.open(Config(data=tmp_path, ttl=None, gc_grace=0.0))
    for name in [f"o{i}" for i in range(0, 12, 3)] + ["o1", "o2", "o4", "o5"]:
        repo.catalog.delete_paths([name])
        kept.pop(name)
    assert isinstance(repo.store, LocalChunkStore)
    before = sum(p.file_bytes for p in repo.store.pack_usage())
    repo.collector().run()  # dooms the manifests
    report = repo.collector().run()  # grace 0: sweeps and compacts
    after = sum(p.file_bytes for p in repo.store.pack_usage())
    assert report.compacted_packs == 1 and report.swept_chunks > 0
    assert after < before * 0.4
    for name, data in kept.items():
        ref = repo.catalog.get(name)
        assert ref is not None
        manifest = repo.catalog.manifest(ref.manifest_id)
        assert b"".join(repo.store.read(p.chunk_id) for p in manifest.pieces if p.chunk_id) == data
    assert Limits().grace > 0  # the default keeps deleted versions readable a while
    repo.close()


def _tree(files: int) -> bytes:
    """A tar of ``files`` distinct 1 KiB files: one chunk each."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for n in range(files):
            body = f"{n:08d}".encode() * 128
            info = tarfile.TarInfo(f"node_modules/p{n // 100}/f{n % 100}.js")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def test_an_upload_of_many_chunks_commits_as_it_goes_and_a_failed_one_is_garbage(
    tmp_path: Path,
) -> None:
    files = 2 * COMMIT_ROWS  # 16 MiB of chunks: more than the compression queue holds
    tree = _tree(files)
    repo = Repository.open(Config(data=tmp_path, ttl=None, gc_grace=0.0, upload_pin_ttl=0.0))
    try:
        session = repo.ingest_session()
        session.feed(tree[: len(tree) * 9 // 10])
        # a writer holds at most COMMIT_ROWS uncommitted rows: the rest is in the index
        assert repo.store.stats().chunks >= COMMIT_ROWS
        session.abort()  # the client went away: nothing was published
        assert repo.catalog.totals()["objects"] == 0
        repo.collector().run()
        assert repo.store.stats().chunks == 0  # unreferenced, its pins lapsed: swept

        session = repo.ingest_session()
        session.feed(tree)
        repo.catalog.publish([("tree.tar", session.finish())])
        assert repo.store.stats().chunks >= files
        ref = repo.catalog.get("tree.tar")
        assert ref is not None
        manifest = repo.catalog.manifest(ref.manifest_id)
        read = b"".join(
            repo.store.read(p.chunk_id) if p.chunk_id is not None else p.inline or b""
            for p in manifest.pieces
        )
        assert read == tree
        repo.collector().run()
        repo.collector().run()
        assert repo.store.stats().chunks >= files  # a live name's chunks all stay
    finally:
        repo.close()
