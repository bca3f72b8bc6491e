"""Faults under a running server: EIO, a read-only store, a locked catalog, a truncated pack.

Disk errors are injected at the store's system-call boundary (the ``os`` the pack
writer calls, as tests/test_store_faults.py does), in a server whose uploads run
in its own process (``--ingest-workers 0``), switched on and off by a file.
Each fault must give a clear answer, lose nothing acknowledged, and go away
without a restart once the fault does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server, StartServer, clean_env, curl, free_port, wait_ready

FAULTY_SERVER = """
import errno, os, sys
from pathlib import Path
import cachesrv.store.local.writer as writer
trigger = Path(sys.argv[1])

def fault():
    if trigger.exists():
        code = getattr(errno, trigger.read_text().strip())
        raise OSError(code, os.strerror(code))

class FaultyOs:
    def __getattr__(self, name):
        return getattr(os, name)
    def write(self, fd, data):
        fault()
        return os.write(fd, data)
    def open(self, *args, **kwargs):
        fault()
        return os.open(*args, **kwargs)
    def fsync(self, fd):
        fault()
        return os.fsync(fd)

writer.os = FaultyOs()
from cachesrv.cli import main
sys.exit(main(sys.argv[2:]))
"""


def put(url: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    result = curl("-D", "-", "-T", "-", url, input=data)
    head, _, body = result.stdout.rpartition(b"\r\n\r\n")
    head = head.rsplit(b"HTTP/1.1 ", 1)[-1]  # after a 100 Continue
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0][:3]), headers, body


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    script = tmp_path / "faulty_server.py"
    script.write_text(FAULTY_SERVER)
    trigger = tmp_path / "fault"
    port = free_port()
    data, log = tmp_path / "data", tmp_path / "server.log"
    command = [sys.executable, str(script), str(trigger), "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--data", str(data), "--ingest-workers", "0"]
    command += ["--gc-interval", "0", "--hot-cache-bytes", "0"]
    env = clean_env()
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=out)
    server = Server(f"http://127.0.0.1:{port}", port, data, log, proc, env)
    wait_ready(server.url, proc)
    yield server, trigger
    server.stop(timeout=10)


@pytest.mark.parametrize(
    ("fault", "status", "words"),
    [("EIO", 500, "I/O error"), ("EROFS", 503, "not writable"), ("EACCES", 503, "not writable")],
)
def test_a_disk_fault_is_a_clear_error_and_keeps_the_previous_version(
    faulty: tuple[Server, Path], fault: str, status: int, words: str
) -> None:
    server, trigger = faulty
    url = f"{server.url}/cache.tar"
    assert put(url, b"version one" * 1000)[0] == 201
    trigger.write_text(fault)
    got, _, body = put(url, b"version two" * 5000)
    assert got == status, body
    assert words in json.loads(body)["message"]
    # reads go on during the fault, and serve what was acknowledged
    assert curl("-f", url).stdout == b"version one" * 1000
    trigger.unlink()
    assert put(url, b"version three" * 5000)[0] == 201  # no restart needed
    assert curl("-f", url).stdout == b"version three" * 5000


def test_a_catalog_locked_by_another_process_is_503_with_retry_after(
    start_server: StartServer,
) -> None:
    server = start_server(args=["--gc-interval", "0"])
    assert put(f"{server.url}/kept", b"kept")[0] == 201
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(60)",
            str(server.data / "catalog.sqlite"),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        started = time.monotonic()
        status, headers, body = put(f"{server.url}/new", b"new")
        waited = time.monotonic() - started
        assert status == 503, body
        assert headers["retry-after"].isdigit()
        assert "locked" in json.loads(body)["message"]
        assert waited < 30  # the catalog's busy timeout (5 s), not SQLite's 60 s
        assert curl("-f", f"{server.url}/kept").stdout == b"kept"  # WAL: reads go on
    finally:
        holder.kill()
        holder.wait()
    assert put(f"{server.url}/new", b"new")[0] == 201
    assert curl("-f", f"{server.url}/new").stdout == b"new"


def _packs(data: Path) -> list[Path]:
    return sorted(p for p in (data / "chunks").rglob("*") if p.is_file() and p.stat().st_size)


def test_a_pack_truncated_under_the_server(start_server: StartServer) -> None:
    server = start_server(args=["--gc-interval", "0", "--hot-cache-bytes", "0"])
    first = os.urandom(1 << 20)  # several chunks
    assert put(f"{server.url}/first.bin", first)[0] == 201
    (pack,) = [p for p in _packs(server.data) if p.stat().st_size > 500_000]
    with open(pack, "r+b") as f:
        f.truncate(pack.stat().st_size // 2)

    # the damaged object is a clear 500 naming it, not a short 200
    got = curl("-s", "-w", "\n%{http_code}", f"{server.url}/first.bin")
    body, _, status = got.stdout.rpartition(b"\n")
    assert status == b"500"
    assert "first.bin" in json.loads(body)["message"]

    # an upload into the truncated pack is never acknowledged with wrong offsets:
    # either refused, or stored whole
    second = os.urandom(1 << 20)
    status_second, _, _ = put(f"{server.url}/second.bin", second)
    assert status_second in (201, 500), status_second
    if status_second == 201:
        assert curl("-f", f"{server.url}/second.bin").stdout == second
    third = os.urandom(1 << 20)
    assert put(f"{server.url}/third.bin", third)[0] == 201
    assert curl("-f", f"{server.url}/third.bin").stdout == third

    # recovery beside the running server: fsck --repair, then the same bytes again
    repair = subprocess.run(
        [sys.executable, "-m", "cachesrv", "fsck", "--repair", "--data", str(server.data)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "first.bin" in repair.stderr
    assert put(f"{server.url}/first.bin", first)[0] == 201
    assert curl("-f", f"{server.url}/first.bin").stdout == first
    assert curl("-f", f"{server.url}/third.bin").stdout == third
