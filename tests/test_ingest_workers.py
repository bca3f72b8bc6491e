"""Ingest worker processes under several uploads at once: one worker runs them all,
interleaved, and a worker lost mid-upload fails those uploads and nothing else; an idle
worker exits and the next upload starts one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import pytest
from conftest import Server, StartServer, curl

OPEN_UPLOADS = 4
MANY_UPLOADS = 12
HEAD_BYTES = 600_000  # past the server's forwarding batch: the worker has begun each upload


def ingest_pool(server: Server) -> dict[str, int]:
    return json.loads(curl(f"{server.url}/-/stats").stdout)["workers"]["ingest"]


def wait_for_pool(server: Server, ready: object, timeout: float = 30) -> dict[str, int]:
    """Poll the pool's numbers until ``ready(pool)`` holds; the last numbers either way."""
    deadline = time.monotonic() + timeout
    pool = ingest_pool(server)
    while not ready(pool) and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.05)
        pool = ingest_pool(server)
    return pool


@contextmanager
def open_uploads(
    server: Server, bodies: dict[str, bytes]
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """A ``curl -T -`` per body, each sent its first HEAD_BYTES and held open."""
    uploads = {}
    try:
        for name, body in bodies.items():
            proc = subprocess.Popen(
                ["curl", "-sS", "-f", "-o", "/dev/null", "-T", "-", f"{server.url}/{name}"],
                stdin=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            assert proc.stdin is not None
            proc.stdin.write(body[:HEAD_BYTES])
            proc.stdin.flush()
            uploads[name] = proc
        yield uploads
    finally:
        for proc in uploads.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def send_rest(
    uploads: dict[str, subprocess.Popen[bytes]], bodies: dict[str, bytes]
) -> dict[str, int]:
    """Each upload's remaining bytes, then its end; curl's exit code per name."""
    for name, proc in uploads.items():
        assert proc.stdin is not None
        try:
            proc.stdin.write(bodies[name][HEAD_BYTES:])
            proc.stdin.close()
        except BrokenPipeError:
            pass  # curl gave up already: the server answered the upload with an error
    return {name: proc.wait(timeout=60) for name, proc in uploads.items()}


def ingest_worker_pids(server: Server) -> list[int]:
    children = psutil.Process(server.proc.pid).children(recursive=True)
    return [p.pid for p in children if "cachesrv.ingest.process" in " ".join(p.cmdline())]


@pytest.fixture
def server(start_server: StartServer) -> Server:
    return start_server(args=["--ingest-workers", "1"])


def _bodies(prefix: str, count: int = OPEN_UPLOADS) -> dict[str, bytes]:
    return {f"{prefix}{i}.bin": os.urandom(1_500_000) for i in range(count)}


def test_one_worker_runs_many_uploads_at_once_and_each_is_stored_whole(server: Server) -> None:
    # more than the 8 a worker once took: the rest ran in threads of the server, holding
    # their buffers in its memory and convoying with the event loop
    bodies = _bodies("several", MANY_UPLOADS)
    with open_uploads(server, bodies) as uploads:
        pool = wait_for_pool(server, lambda p: p["uploads"] == MANY_UPLOADS)
        # all are in the one worker process, none in a thread of the server
        assert pool == {"size": 1, "processes": 1, "idle": 0, "uploads": MANY_UPLOADS}, pool
        assert send_rest(uploads, bodies) == dict.fromkeys(bodies, 0)
    for name, body in bodies.items():
        assert curl("-f", f"{server.url}/{name}").stdout == body
    pool = wait_for_pool(server, lambda p: p["uploads"] == 0)
    assert pool == {"size": 1, "processes": 1, "idle": 1, "uploads": 0}, pool


def test_a_worker_killed_mid_upload_fails_its_uploads_and_loses_nothing(server: Server) -> None:
    bodies = _bodies("killed")
    previous = {name: os.urandom(1000) for name in bodies}
    for name, body in previous.items():
        assert curl("-f", "-T", "-", f"{server.url}/{name}", input=body).returncode == 0
    (worker,) = ingest_worker_pids(server)
    with open_uploads(server, bodies) as uploads:
        assert (
            wait_for_pool(server, lambda p: p["uploads"] == OPEN_UPLOADS)["uploads"] == OPEN_UPLOADS
        )
        os.kill(worker, signal.SIGKILL)
        codes = send_rest(uploads, bodies)
    assert all(code != 0 for code in codes.values()), codes  # each upload failed, loudly
    for name, body in previous.items():  # and the versions before them are whole
        assert curl("-f", f"{server.url}/{name}").stdout == body
    # a new worker took the dead one's place, and takes uploads
    pool = wait_for_pool(server, lambda p: p["idle"] == 1)
    assert pool == {"size": 1, "processes": 1, "idle": 1, "uploads": 0}, pool
    assert ingest_worker_pids(server) != [worker]
    metrics = curl(f"{server.url}/-/metrics").stdout.decode()
    assert 'cachesrv_ingest_worker_restarts_total{reason="broken"} 1.0' in metrics
    after = os.urandom(2_000_000)
    assert curl("-f", "-T", "-", f"{server.url}/after.bin", input=after).returncode == 0
    assert curl("-f", f"{server.url}/after.bin").stdout == after
    assert "ingest worker lost with 4 uploads open" in server.log.read_text()


def test_an_idle_worker_exits_and_the_next_upload_starts_one(start_server: StartServer) -> None:
    server = start_server(args=["--ingest-workers", "1", "--ingest-idle-exit", "1"])
    first = os.urandom(1_000_000)
    assert curl("-f", "-T", "-", f"{server.url}/first.bin", input=first).returncode == 0
    (worker,) = ingest_worker_pids(server)
    # a second without an upload: the process is gone, and counted as an idle exit
    psutil.Process(worker).wait(timeout=30)
    pool = wait_for_pool(server, lambda p: p["processes"] == 0)
    assert pool == {"size": 1, "processes": 0, "idle": 1, "uploads": 0}, pool
    assert ingest_worker_pids(server) == []
    metrics = curl(f"{server.url}/-/metrics").stdout.decode()
    assert "cachesrv_ingest_worker_idle_exits_total 1.0" in metrics
    assert 'cachesrv_ingest_worker_restarts_total{reason="broken"} 0.0' in metrics
    # the next upload starts a worker and runs in it, not in a thread of the server
    bodies = _bodies("after-idle")
    with open_uploads(server, bodies) as uploads:
        pool = wait_for_pool(server, lambda p: p["uploads"] == OPEN_UPLOADS)
        assert pool == {"size": 1, "processes": 1, "idle": 0, "uploads": OPEN_UPLOADS}, pool
        assert len(ingest_worker_pids(server)) == 1
        assert send_rest(uploads, bodies) == dict.fromkeys(bodies, 0)
    for name, body in {"first.bin": first, **bodies}.items():
        assert curl("-f", f"{server.url}/{name}").stdout == body
    assert "ingest worker lost" not in server.log.read_text()
    assert "ingest worker exited" not in server.log.read_text()
