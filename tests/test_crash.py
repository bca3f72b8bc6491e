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
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import clean_env, free_port, http_request, wait_ready

ROUNDS = 10  # kill -9 and restart this many times
WAIT = 60.0  # seconds: only a safety net for an event that must come
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
        "--ingest-workers", str(workers), "--upload-pin-ttl", "3",
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


@dataclass
class Round:
    """What the test and its writer threads share while one server lives."""

    url: str
    seed: int
    stop: threading.Event = field(default_factory=threading.Event)
    killed: threading.Event = field(default_factory=threading.Event)
    acked: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    failures: list[BaseException] = field(default_factory=list)


def _writer(round_: Round, worker: int, histories: dict[str, History], pool: list[bytes]) -> None:
    """Overwrite and delete this worker's paths until stopped; any failure is recorded for
    the test's thread (an assert in a thread would only warn)."""
    try:
        _write_until_stopped(round_, worker, histories, pool)
    except BaseException as exc:
        round_.failures.append(exc)
        round_.acked.release()  # wake the test: it must not wait for acks that never come


def _write_until_stopped(
    round_: Round, worker: int, histories: dict[str, History], pool: list[bytes]
) -> None:
    wrng = random.Random(round_.seed * 10 + worker)
    paths = [p for p in histories if p.startswith(f"w{worker}/")]
    while not round_.stop.is_set():
        path = wrng.choice(paths)
        history = histories[path]
        body: bytes | None
        if wrng.random() < 0.15:
            op: list[object] = [None, False]
            method, target, body = "DELETE", f"{round_.url}/upload?path={path}", None
            expected: tuple[int, ...] = (202, 404)
        else:
            parts = [wrng.choice(pool)[: wrng.randrange(1, MiB)] for _ in range(2)]
            body = b"".join(parts) + wrng.randbytes(wrng.randrange(1, 100 << 10))
            op = [_digest(body), False]
            method, target, expected = "PUT", f"{round_.url}/{path}", (201,)
        history.ops.append(op)
        try:
            status, _ = _crash_request(method, target, body)
        except (OSError, urllib.error.URLError, http.client.HTTPException):
            if round_.killed.is_set():
                return  # the server died under us: this one is unacknowledged
            raise  # a live server dropped the request
        assert status in expected, (method, path, status)
        op[1] = True
        round_.acked.release()


@pytest.mark.parametrize("workers", [0, 2], ids=["ingest-workers-0", "ingest-workers-2"])
def test_kill_9_at_random_moments_loses_no_acknowledged_write(tmp_path: Path, workers: int) -> None:
    data, log = tmp_path / "data", tmp_path / "server.log"
    pool = [os.urandom(MiB) for _ in range(3)]
    histories: dict[str, History] = {f"w{w}/{i}": History() for w in range(3) for i in range(4)}
    rng = random.Random(7)
    for seed in range(ROUNDS):
        proc, url = _start(data, log, workers)
        for path, history in histories.items():  # what the last crash left
            status, body = _crash_request("GET", f"{url}/{path}")
            state = _digest(body) if status == 200 else None
            assert status in (200, 404), (path, status, body[:200])
            assert state in history.allowed(), (seed, path, status)
        round_ = Round(url, seed)
        threads = [
            threading.Thread(target=_writer, args=(round_, w, histories, pool)) for w in range(3)
        ]
        for thread in threads:
            thread.start()
        # A random moment counted in acknowledged writes, not in seconds: the other
        # workers are then mid-request, so the kill lands on writes in flight.
        for _ in range(rng.randint(1, 12)):
            assert round_.acked.acquire(timeout=WAIT), f"round {seed}: no write acknowledged"
            if round_.failures:
                break
        round_.killed.set()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        round_.stop.set()
        for thread in threads:
            thread.join(timeout=WAIT)
            assert not thread.is_alive()
        if round_.failures:
            raise round_.failures[0]

    ops = [op for history in histories.values() for op in history.ops]
    assert any(acked for _, acked in ops), "no write was ever acknowledged"
    assert not all(acked for _, acked in ops), "no kill ever hit a write in flight"
    proc, url = _start(data, log, workers)
    for path, history in histories.items():
        status, body = _crash_request("GET", f"{url}/{path}")
        assert (_digest(body) if status == 200 else None) in history.allowed(), path
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=WAIT) == 0
    fsck = subprocess.run(
        [sys.executable, "-m", "cachesrv", "fsck", "--data", str(data)],
        capture_output=True,
        text=True,
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    compactions = [line for line in log.read_text().splitlines() if "packs compacted" in line]
    assert any(" 0 packs compacted" not in line for line in compactions), "no compaction ran"
