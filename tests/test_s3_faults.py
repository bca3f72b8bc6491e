"""The object store gone: writes answer 503 with Retry-After (a client retries later),
never a 500 or a hang."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import StartServer, curl

from bench.seaweedfs import SeaweedFS, start_seaweedfs
from cachesrv.store.s3 import ObjectStoreUnavailable
from cachesrv.store.s3.client import ObjectStore, StoreUrl


@pytest.fixture
def own_seaweedfs(tmp_path: Path) -> Iterator[SeaweedFS]:
    """A SeaweedFS this test may stop (the session's one serves the other tests)."""
    server = start_seaweedfs(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("workers", [0, 1], ids=["ingest-in-threads", "ingest-workers"])
def test_writes_answer_503_with_retry_after_while_the_object_store_is_down(
    start_server: StartServer, own_seaweedfs: SeaweedFS, workers: int
) -> None:
    url = own_seaweedfs.new_store_url()
    args = ["--store", url, "--store-timeout", "1", "--ingest-workers", str(workers)]
    server = start_server(env=own_seaweedfs.env, args=args)
    put = ["-o", "/dev/null", "-w", "%{http_code}", "-H", "Expect:", "-T", "-"]
    assert curl(*put, f"{server.url}/kept.tar", input=b"v1").stdout == b"201"
    own_seaweedfs.stop()
    answer = curl(
        "-D", "-", "-o", "/dev/null", "-H", "Expect:", "-T", "-", f"{server.url}/kept.tar",
        input=b"v2",
    )  # fmt: skip
    head = answer.stdout.decode("latin-1").lower()
    assert head.startswith("http/1.1 503"), head
    assert "\r\nretry-after: " in head


def _head(answer: bytes) -> str:
    return answer.decode("latin-1").lower()


@pytest.mark.parametrize("workers", [0, 1], ids=["restore-in-threads", "restore-workers"])
def test_a_name_served_recently_reads_whole_from_the_local_cache_while_the_object_store_is_down(
    start_server: StartServer, own_seaweedfs: SeaweedFS, workers: int
) -> None:
    url = own_seaweedfs.new_store_url()
    args = ["--store", url, "--store-timeout", "1", "--restore-workers", str(workers)]
    server = start_server(env=own_seaweedfs.env, args=args)  # with --data: the hot cache
    body = random.Random(11).randbytes(3 * (1 << 20) + 12345)  # several hot spans
    put = ["-o", "/dev/null", "-w", "%{http_code}", "-H", "Expect:", "-T", "-"]
    assert curl(*put, f"{server.url}/ci/kept.tar", input=body).stdout == b"201"
    assert curl("-sf", f"{server.url}/ci/kept.tar").stdout == body  # served once
    assert curl(*put, f"{server.url}/ci/gone.tar", input=body).stdout == b"201"
    assert curl("-sf", f"{server.url}/ci/gone.tar").stdout == body
    assert curl("-sf", "-X", "DELETE", f"{server.url}/upload?path=ci/gone.tar").returncode == 0
    own_seaweedfs.stop()

    got = curl("-s", "-D", "/dev/stderr", f"{server.url}/ci/kept.tar")
    assert _head(got.stderr).startswith("http/1.1 200"), got.stderr
    assert got.stdout == body
    head = curl("-s", "-I", f"{server.url}/ci/kept.tar").stdout
    assert _head(head).startswith("http/1.1 200"), head
    assert f"\r\ncontent-length: {len(body)}\r\n" in _head(head)

    write = curl("-s", "-D", "-", "-o", "/dev/null", "-H", "Expect:", "-T", "-",
                 f"{server.url}/ci/kept.tar", input=b"v2")  # fmt: skip
    assert _head(write.stdout).startswith("http/1.1 503"), write.stdout
    assert "\r\nretry-after: " in _head(write.stdout)
    unknown = curl("-s", "-D", "-", "-o", "/dev/null", f"{server.url}/ci/never-seen.tar")
    assert _head(unknown.stdout).startswith("http/1.1 503"), unknown.stdout  # not 404
    assert "\r\nretry-after: " in _head(unknown.stdout)
    # the hot cache holds it decoded: a client that accepts zstd gets the identity body
    zstd = curl("-s", "-D", "/dev/stderr", "-H", "Accept-Encoding: zstd",
                f"{server.url}/ci/kept.tar")  # fmt: skip
    assert _head(zstd.stderr).startswith("http/1.1 200"), zstd.stderr
    assert "content-encoding" not in _head(zstd.stderr)
    assert zstd.stdout == body
    gone = curl("-s", "-D", "-", "-o", "/dev/null", f"{server.url}/ci/gone.tar")
    assert _head(gone.stdout).startswith("http/1.1 503"), gone.stdout  # deleted here: not held
    assert curl("-sf", f"{server.url}/ci/kept.tar").stdout == body  # and still whole


def test_a_store_found_down_is_tried_again_every_recheck_not_by_every_request(
    own_seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in own_seaweedfs.env.items():
        monkeypatch.setenv(name, value)
    store = ObjectStore(StoreUrl.parse(own_seaweedfs.new_store_url()), timeout=1)
    sent: list[str] = []  # every HTTP attempt this client makes, retries included
    store.client.meta.events.register("before-send.s3", lambda **kw: sent.append(kw["request"].url))
    store.put("a", b"1")
    assert store.get("a")[0] == b"1" and not store.reachability.down
    own_seaweedfs.stop()
    store.reachability.recheck = 3600.0
    with pytest.raises(ObjectStoreUnavailable):
        store.get("a")  # waits out botocore's retries, then marks the store down
    assert store.reachability.down and len(sent) > 2
    sent.clear()
    for _ in range(20):  # while it is down: no request reaches the store, none waits
        with pytest.raises(ObjectStoreUnavailable, match="has not answered for"):
            store.child("catalog/").get("a")
    assert sent == []
    store.reachability.recheck = 0.0  # the next request tries the store again
    with pytest.raises(ObjectStoreUnavailable, match="does not answer"):
        store.get("a")
    assert sent
