"""Two cachesrv replicas on one bucket of a real SeaweedFS, spoken to with real curl."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import Server, StartServer, clean_env, curl, free_port, status

from bench.seaweedfs import SeaweedFS
from cachesrv.store.s3 import open_object_store

DEADLINE = 60.0


@pytest.fixture
def replicas(start_server: StartServer, seaweedfs: SeaweedFS, s3_url: str) -> list[Server]:
    """Two servers sharing ``s3_url``, each with its own (throwaway) --data."""
    args = ["--store", s3_url]
    return [start_server(env=seaweedfs.env, args=args) for _ in range(2)]


def put(server: Server, path: str, data: bytes) -> int:
    result = curl(
        "-w", "%{http_code}", "-o", "/dev/null", "-T", "-", f"{server.url}/{path}", input=data
    )
    return int(result.stdout)


def get(server: Server, path: str) -> tuple[int, bytes]:
    result = curl("-w", "\n%{http_code}", f"{server.url}/{path}")
    body, _, code = result.stdout.rpartition(b"\n")
    return int(code), body


def save(server: Server, key: str, data: bytes) -> int:
    return status("-T", "-", f"{server.url}/-/cache/{key}", input=data)


def test_an_upload_through_one_replica_reads_back_whole_through_the_other(
    replicas: list[Server],
) -> None:
    first, second = replicas
    data = os.urandom(3 << 20) + b"x" * (2 << 20)
    assert put(first, "builds/app.tar", data) == 201
    assert get(second, "builds/app.tar") == (200, data)
    # the same bytes again through the other replica: stored once (dedup from the index)
    assert put(second, "builds/copy.tar", data) == 201
    assert get(first, "builds/copy.tar") == (200, data)
    head = [curl("-sI", f"{s.url}/builds/app.tar").stdout for s in replicas]
    etags = [
        line for h in head for line in h.decode().split("\r\n") if line.lower().startswith("etag")
    ]
    assert len(etags) == 2 and etags[0] == etags[1]


def test_overwrites_through_both_replicas_at_once_stay_whole(replicas: list[Server]) -> None:
    versions = [bytes([n]) * (1 << 20) + os.urandom(1 << 18) for n in range(6)]
    barrier = threading.Barrier(len(versions))
    codes: list[int] = []

    def overwrite(n: int) -> None:
        barrier.wait()
        codes.append(put(replicas[n % 2], "shared/state.tar", versions[n]))

    threads = [threading.Thread(target=overwrite, args=(n,)) for n in range(len(versions))]
    for t in threads:
        t.start()
    reads: list[tuple[int, bytes]] = []
    while any(t.is_alive() for t in threads):
        reads.append(get(replicas[len(reads) % 2], "shared/state.tar"))
    for t in threads:
        t.join()
    assert codes == [201] * len(versions)
    for code, body in reads:
        assert code == 404 or body in versions  # never a mix of two uploads
    final = [get(r, "shared/state.tar") for r in replicas]
    assert final[0] == final[1] and final[0][1] in versions


def test_a_keyed_save_raced_through_both_replicas_has_one_winner(replicas: list[Server]) -> None:
    barrier = threading.Barrier(2)
    codes: dict[int, int] = {}

    def race(n: int) -> None:
        barrier.wait()
        codes[n] = save(replicas[n], "go-linux-amd64", f"cache from replica {n}".encode())

    threads = [threading.Thread(target=race, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes.values()) == [201, 409]
    winner = next(n for n, code in codes.items() if code == 201)
    for server in replicas:
        code, body = get(server, "-/cache/go-linux-amd64")
        assert (code, body) == (200, f"cache from replica {winner}".encode())


def test_restores_read_ahead_from_the_bucket_and_never_serve_damage(
    replicas: list[Server], s3_url: str
) -> None:
    """The reader holds nothing of the object hot: each span's frames come from the
    bucket, several ranged GETs in flight."""
    writer, reader = replicas
    data = os.urandom(6 << 20).hex().encode()  # 12 MB that compresses: a dozen spans
    assert put(writer, "builds/app.tar", data) == 201
    compressed = ["-s", "--compressed", "-H", "Accept-Encoding: zstd"]
    answer = curl(*compressed, "-D", "/dev/stderr", f"{reader.url}/builds/app.tar")
    assert "content-encoding: zstd" in answer.stderr.decode().lower()
    assert answer.returncode == 0 and answer.stdout == data
    head = curl("-sf", "-r", "0-3145727", f"{reader.url}/builds/app.tar")  # 3 spans, cold
    assert head.returncode == 0 and head.stdout == data[: 3 << 20]

    packs = open_object_store(s3_url, timeout=10).child("chunks/")
    name, size, _ = max(packs.listing("packs/"), key=lambda item: item[1])
    body = bytearray(packs.get(name)[0])
    body[size * 3 // 4] ^= 0x40  # inside a stored frame, past the spans read above
    packs.put(name, bytes(body))
    for extra in (compressed, ["-s"]):
        damaged = curl(*extra, "-f", f"{reader.url}/builds/app.tar")
        assert damaged.returncode != 0, extra  # a failed transfer (or a clean 500)
        assert len(damaged.stdout) < len(data) and data.startswith(damaged.stdout)  # no wrong byte


def test_a_replica_killed_mid_upload_leaves_nothing_visible(
    replicas: list[Server], s3_url: str
) -> None:
    survivor, victim = replicas
    packs = open_object_store(s3_url, timeout=10).child("chunks/")
    upload = subprocess.Popen(
        ["curl", "-sS", "-o", "/dev/null", "-T", "-", f"{victim.url}/half/written.tar"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert upload.stdin is not None
    try:
        deadline = time.monotonic() + DEADLINE
        # random bytes are stored raw: past the pack target a pack is in the bucket
        while not list(packs.listing("packs/")):
            assert time.monotonic() < deadline, "no pack reached the bucket"
            upload.stdin.write(os.urandom(1 << 20))
            upload.stdin.flush()
        victim.kill()
    finally:
        upload.kill()
        upload.wait()
    assert get(survivor, "half/written.tar")[0] == 404
    assert get(survivor, "half/")[0] == 404
    assert json.loads(curl(f"{survivor.url}/-/stats").stdout)["objects"] == 0
    # and the name is free for a whole upload
    assert put(survivor, "half/written.tar", b"whole") == 201
    assert get(survivor, "half/written.tar") == (200, b"whole")


def test_a_store_that_does_not_answer_is_refused_at_start_saying_why(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    env = clean_env({**seaweedfs.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"})
    command = [sys.executable, "-m", "cachesrv", "serve", "--port", str(free_port())]
    command += ["--data", str(tmp_path), "--store", "s3://nowhere/cache", "--store-timeout", "1"]
    result = subprocess.run(command, env=env, capture_output=True, timeout=120)
    assert result.returncode != 0
    assert b"refusing to start" in result.stderr and b"s3://nowhere/cache" in result.stderr


def test_fsck_checks_the_bucket(replicas: list[Server], seaweedfs: SeaweedFS, s3_url: str) -> None:
    assert put(replicas[0], "checked/a.tar", os.urandom(300_000)) == 201
    assert save(replicas[1], "checked-key", os.urandom(200_000)) == 201
    env = clean_env(seaweedfs.env)
    result = subprocess.run(
        [sys.executable, "-m", "cachesrv", "fsck", "--data", str(replicas[0].data)]
        + ["--store", s3_url],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert json.loads(result.stdout)["chunks_checked"] > 0


def test_a_replica_given_no_data_directory_serves_and_writes_no_file(
    start_server: StartServer, seaweedfs: SeaweedFS, s3_url: str, tmp_path: Path
) -> None:
    cwd = tmp_path / "cwd"  # where the local store's ./pub would go
    cwd.mkdir()
    env = {**seaweedfs.env, "HOME": str(cwd), "TMPDIR": str(cwd)}
    args = ["--store", s3_url]
    server = start_server(env=env, args=args, pass_data=False, cwd=cwd)
    data = os.urandom(5 << 20)
    assert put(server, "builds/app.tar", data) == 201
    assert get(server, "builds/app.tar") == (200, data)
    assert get(server, "builds/app.tar") == (200, data)  # no hot cache: from the bucket again
    assert save(server, "go-1", b"tar bytes") == 201
    stats = json.loads(curl(f"{server.url}/-/stats").stdout)
    assert stats["hot_bytes"] == 0
    assert stats["workers"]["ingest"]["size"] == 0  # the default on an object store
    assert stats["workers"]["restore"]["size"] == 0  # the same
    server.stop(timeout=10)
    assert sorted(cwd.rglob("*")) == []
    again = start_server(env=env, args=args, pass_data=False, cwd=cwd)
    assert get(again, "builds/app.tar") == (200, data)  # everything was in the bucket


def test_the_status_page_history_counts_every_replicas_uploads_and_reads(
    start_server: StartServer, seaweedfs: SeaweedFS, s3_url: str
) -> None:
    args = ["--store", s3_url, "--history-interval", "1s"]
    first, second = (start_server(env=seaweedfs.env, args=args) for _ in range(2))
    data = os.urandom(1 << 20)
    assert put(first, "builds/app.tar", data) == 201
    for _ in range(3):
        assert get(second, "builds/app.tar") == (200, data)
    deadline = time.monotonic() + DEADLINE
    while True:  # each replica writes its points to the bucket at its next interval
        totals = []
        for server in (first, second):
            history = json.loads(curl(f"{server.url}/-/stats").stdout)["history"]
            totals.append((sum(p["uploads"] for p in history), sum(p["hits"] for p in history)))
        if totals == [(1, 3), (1, 3)]:
            break
        assert all(u <= 1 and h <= 3 for u, h in totals), totals  # never counted twice
        assert time.monotonic() < deadline, totals
        time.sleep(0.2)
    # a level is the store's, whichever replica read it
    assert history[-1]["logical_bytes"] == len(data)
