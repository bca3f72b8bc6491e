"""kill -9 at random moments during uploads, overwrites, deletes and GC; then restart.

Every acknowledged write survives: a path reads back as its last acknowledged state
(a version, or gone after a delete) or as a write attempted after it (one that was
in flight when the server died may or may not have landed; never a mix). fsck is
clean without --repair: torn pack tails are expected and harmless, fsck notes them.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import clean_env, free_port, http_request, wait_ready

BUDGET = 30.0  # seconds of kill/restart rounds, per ingest-workers setting
MiB = 1 << 20


def _crash_request(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    return http_request(method, url, body, timeout=30)


class History:
    """One path's writes, in order: (digest or None for a delete, acknowledged)."""

    def __init__(self) -> None:
        self.ops: list[list[object]] = []

    def allowed(self) -> set[str | None]:
        acked = [i for i, (_, ok) in enumerate(self.ops) if ok]
        start = acked[-1] if acked else -1
        states: set[str | None] = {None} if start == -1 else set()
        return states | {digest for digest, _ in self.ops[max(start, 0) :]}  # type: ignore[misc]


def _start(data: Path, log: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [
        sys.executable, "-m", "cachesrv", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--data", str(data), "--gc-interval", "0.05", "--gc-grace", "0",
        "--upload-pin-ttl", "3", "--ingest-workers", str(workers),
    ]  # fmt: skip
    with open(log, "ab") as out:
        # its own session: kill -9 takes the ingest workers too, as a node crash would
        proc = subprocess.Popen(
            command, env=clean_env(), stdout=out, stderr=out, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    return proc, url


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("workers", [0, 2], ids=["ingest-workers-0", "ingest-workers-2"])
def test_kill_9_at_random_moments_loses_no_acknowledged_write(tmp_path: Path, workers: int) -> None:
    data, log = tmp_path / "data", tmp_path / "server.log"
    pool = [os.urandom(MiB) for _ in range(3)]
    histories: dict[str, History] = {f"w{w}/{i}": History() for w in range(3) for i in range(4)}
    rng = random.Random(7)
    deadline = time.monotonic() + BUDGET
    rounds = verified = 0
    while time.monotonic() < deadline:
        proc, url = _start(data, log, workers)
        for path, history in histories.items():  # what the last crash left
            status, body = _crash_request("GET", f"{url}/{path}")
            state = _digest(body) if status == 200 else None
            assert status in (200, 404), (path, status, body[:200])
            assert state in history.allowed(), (rounds, path, status)
            verified += 1
        stop = threading.Event()

        def writer(
            worker: int, url: str = url, stop: threading.Event = stop, seed: int = rounds
        ) -> None:
            wrng = random.Random(seed * 10 + worker)
            paths = [p for p in histories if p.startswith(f"w{worker}/")]
            while not stop.is_set():
                path = wrng.choice(paths)
                history = histories[path]
                if wrng.random() < 0.15:
                    op: list[object] = [None, False]
                    history.ops.append(op)
                    try:
                        status, _ = _crash_request("DELETE", f"{url}/upload?path={path}")
                    except (OSError, urllib.error.URLError, http.client.HTTPException):
                        return
                    op[1] = status in (202, 404)
                    continue
                parts = [wrng.choice(pool)[: wrng.randrange(1, MiB)] for _ in range(2)]
                body = b"".join(parts) + wrng.randbytes(wrng.randrange(1, 100 << 10))
                op = [_digest(body), False]
                history.ops.append(op)
                try:
                    status, _ = _crash_request("PUT", f"{url}/{path}", body)
                except (OSError, urllib.error.URLError, http.client.HTTPException):
                    return  # the server died under us: this one is unacknowledged
                op[1] = status == 201
                assert status == 201, status

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(rng.uniform(0.1, 1.5))  # a random moment, not a synchronisation
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
            assert not thread.is_alive()
        rounds += 1
    assert rounds >= 8 and verified > 0

    proc, url = _start(data, log, workers)
    for path, history in histories.items():
        status, body = _crash_request("GET", f"{url}/{path}")
        assert (_digest(body) if status == 200 else None) in history.allowed(), path
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    fsck = subprocess.run(
        [sys.executable, "-m", "cachesrv", "fsck", "--data", str(data)],
        capture_output=True,
        text=True,
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    compactions = [line for line in log.read_text().splitlines() if "packs compacted" in line]
    assert any(" 0 packs compacted" not in line for line in compactions), "no compaction ran"
