"""GC and eviction on one replica of two sharing a bucket of a real SeaweedFS."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time

from conftest import Server, StartServer, http_request

from bench.seaweedfs import SeaweedFS

MiB = 1 << 20
OPS = 16  # operations per uploader
DEADLINE = 120.0


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _swept(server: Server) -> int:
    return sum(int(n) for n in re.findall(r"gc: (\d+) chunks", server.log_text()))


def test_gc_on_one_replica_while_the_other_uploads_and_restores(
    start_server: StartServer, seaweedfs: SeaweedFS, s3_url: str
) -> None:
    store = ["--store", s3_url, "--upload-pin-ttl", "4", "--gc-grace", "6"]
    collector = start_server(env=seaweedfs.env, args=[*store, "--gc-interval", "0.2"])
    other = start_server(env=seaweedfs.env, args=[*store, "--gc-interval", "0"])
    replicas = [collector, other]
    pool = [os.urandom(MiB) for _ in range(3)]  # uploads reuse these: dedup across replicas
    published: dict[str, set[str]] = {}
    final: dict[str, str | None] = {}
    errors: list[str] = []
    uploads_done = threading.Event()
    stop = threading.Event()
    lock = threading.Lock()

    def uploader(worker: int) -> None:
        rng = random.Random(worker)
        paths = [f"u{worker}/{i}.tar" for i in range(2)]
        for op in range(OPS):
            server = replicas[op % 2]
            path = rng.choice(paths)
            if rng.random() < 0.2:
                status, _ = http_request("DELETE", f"{server.url}/upload?path={path}")
                if status not in (202, 404):
                    errors.append(f"DELETE {path}: {status}")
                with lock:
                    final[path] = None
                continue
            body = rng.choice(pool)[: rng.randrange(MiB // 4, MiB)] + rng.randbytes(50_000)
            with lock:
                published.setdefault(path, set()).add(_digest(body))
            status, answer = http_request("PUT", f"{server.url}/{path}", body)
            if status != 201:
                errors.append(f"PUT {path} via {op % 2}: {status} {answer[:200]!r}")
                continue
            with lock:
                final[path] = _digest(body)

    def downloader(worker: int) -> None:
        rng = random.Random(100 + worker)
        while not stop.is_set():
            with lock:
                paths = list(published)
            if not paths:
                uploads_done.wait(0.01)  # nothing uploaded yet
                continue
            path = rng.choice(paths)
            server = rng.choice(replicas)
            status, body = http_request("GET", f"{server.url}/{path}")
            if status == 200:
                with lock:
                    if _digest(body) not in published[path]:
                        errors.append(f"GET {path}: bytes of no version ever uploaded")
            elif status != 404:
                errors.append(f"GET {path}: {status} {body[:200]!r}")

    uploaders = [threading.Thread(target=uploader, args=(i,)) for i in range(2)]
    downloaders = [threading.Thread(target=downloader, args=(i,)) for i in range(2)]
    for thread in uploaders + downloaders:
        thread.start()
    for thread in uploaders:
        thread.join()
    uploads_done.set()
    # downloads go on until the collector has swept the overwritten versions' chunks
    deadline = time.monotonic() + DEADLINE
    while _swept(collector) == 0 and time.monotonic() < deadline and not errors:
        stop.wait(0.2)
    stop.set()
    for thread in downloaders:
        thread.join()
    assert not errors, errors[:10]
    assert _swept(collector) > 0, "the collector swept nothing: the test proves nothing"
    for path, digest in final.items():
        for server in replicas:
            status, body = http_request("GET", f"{server.url}/{path}")
            if digest is None:
                assert status == 404, path
            else:
                assert status == 200 and _digest(body) == digest, path


def test_eviction_on_one_bucket_counts_every_replicas_uploads(
    start_server: StartServer, seaweedfs: SeaweedFS, s3_url: str
) -> None:
    store = ["--store", s3_url, "--gc-grace", "0", "--upload-pin-ttl", "1"]
    collector = start_server(
        env=seaweedfs.env,
        args=[*store, "--gc-interval", "0.2", "--max-size", str(3 * MiB), "--hard-limit", "0"],
    )
    other = start_server(env=seaweedfs.env, args=[*store, "--gc-interval", "0"])
    bodies = {f"o{i}": os.urandom(MiB) for i in range(8)}  # random: unique bytes each
    for n, (name, body) in enumerate(bodies.items()):
        server = (collector, other)[n % 2]
        assert http_request("PUT", f"{server.url}/{name}", body)[0] == 201

    def stored() -> int:
        return int(json.loads(http_request("GET", f"{collector.url}/-/stats")[1])["stored_bytes"])

    deadline = time.monotonic() + DEADLINE
    while stored() > 3 * MiB:
        assert time.monotonic() < deadline, f"still {stored()} bytes stored"
        threading.Event().wait(0.2)  # the collector runs every 0.2 s
    kept = [name for name in bodies if http_request("GET", f"{other.url}/{name}")[0] == 200]
    assert 1 <= len(kept) <= 3
    assert kept == list(bodies)[-len(kept) :]  # least recently used went first
    for name in kept:
        assert http_request("GET", f"{other.url}/{name}")[1] == bodies[name]
