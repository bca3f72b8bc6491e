"""The object store gone: writes answer 503 with Retry-After (a client retries later),
never a 500 or a hang."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import StartServer, curl

from bench.seaweedfs import SeaweedFS, start_seaweedfs


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
    url = f"s3://{own_seaweedfs.new_bucket()}/cache"
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
