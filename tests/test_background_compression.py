"""Compression off the upload's path: the local store keeps new chunks raw (pending) and
the server compresses them in the background (``--background-level``). A pending chunk
is served as it is; every restore, plain, ranged or ``--compressed``, is byte-identical
before, during and after its compression; the raw copies do not stay on disk.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import Server, StartServer, curl, server_stats, settled

from cachesrv.ingest.session import DEFER_HEADROOM
from cachesrv.store import Codec

NO_HOT = ["--hot-cache-bytes", "0", "--gc-interval", "0"]  # restores read the chunk store
MB = 1 << 20


def _object(size: int) -> bytes:
    """Half compressible text, half noise, in 1 MiB runs."""
    runs = []
    for n in range(size // MB):
        runs.append(os.urandom(MB // 2).hex().encode() if n % 2 else os.urandom(MB))
    return b"".join(runs)


def _codecs(data: Path) -> dict[int, int]:
    index = sqlite3.connect(data / "chunks" / "index.sqlite")
    found = dict(index.execute("SELECT codec, count(*) FROM chunks GROUP BY codec").fetchall())
    index.close()
    return found


def _restores_match(server: Server, data: bytes) -> None:
    url = f"{server.url}/obj.bin"
    assert curl("-f", url).stdout == data
    assert curl("-f", "--compressed", url).stdout == data
    assert curl("-f", "-r", "1000-2999999", url).stdout == data[1000:3000000]
    tail = len(data) - 1_500_000
    assert curl("-f", "-r", f"{tail}-", url).stdout == data[tail:]


def _fsck(data: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "cachesrv", "fsck", "--data", str(data)]
    return subprocess.run(command, capture_output=True, text=True)


@pytest.mark.parametrize("workers", ["1", "0"], ids=["ingest-process", "ingest-thread"])
def test_uploads_store_raw_the_background_compresses_and_restores_match_throughout(
    start_server: StartServer, workers: str
) -> None:
    server = start_server(args=[*NO_HOT, "--ingest-workers", workers])
    data = _object(24 * MB)
    assert curl("-f", "-T", "-", f"{server.url}/obj.bin", input=data).returncode == 0
    first = server_stats(server)
    # what the upload wrote is raw or already compressed: never more than the upload
    assert int(first["compression_pending_bytes"]) <= len(data)  # type: ignore[call-overload]
    for _ in range(3):  # while the background works (restores slow it down, never stop it)
        _restores_match(server, data)
    done = settled(server)
    assert done["compression_pending_bytes"] == 0
    raw = int(done["chunk_raw_bytes"])  # type: ignore[call-overload]
    assert int(done["stored_bytes"]) < 0.8 * raw  # type: ignore[call-overload]
    # the raw copies went with their pack: the disk holds the compressed store only
    assert int(done["disk_bytes"]) < 0.85 * raw  # type: ignore[call-overload]
    _restores_match(server, data)
    server.stop()
    assert Codec.PENDING not in _codecs(server.data)
    assert _fsck(server.data).returncode == 0


def _held_dropped_packs(server: Server) -> list[str]:
    """Descriptors the server's processes hold on pack files that were unlinked."""
    held = []
    root = psutil.Process(server.proc.pid)
    for proc in [root, *root.children(recursive=True)]:
        fds = Path(f"/proc/{proc.pid}/fd")
        with contextlib.suppress(OSError):
            for fd in fds.iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.endswith(".pack (deleted)"):
                        held.append(target)
    return held


def test_the_raw_packs_compression_drops_go_from_disk_not_at_the_next_collection(
    start_server: StartServer,
) -> None:
    """Each upload's raw records are dropped with their pack once compressed; a read
    handle on that pack (the background's, a restore worker's) kept its disk and a
    descriptor until the next collection, here never (--gc-interval 0)."""
    server = start_server(args=NO_HOT)
    objects = [_object(4 * MB) for _ in range(3)]
    for n, data in enumerate(objects):
        url = f"{server.url}/obj{n}.bin"
        assert curl("-f", "-T", "-", url, input=data).returncode == 0
        assert curl("-f", url).stdout == data  # read while pending: the worker opens the pack
    settled(server)
    deadline = time.monotonic() + 30  # two release rounds (RELEASE_INTERVAL) and margin
    while (held := _held_dropped_packs(server)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert held == []
    for n, data in enumerate(objects):
        assert curl("-f", f"{server.url}/obj{n}.bin").stdout == data


def test_background_level_0_compresses_during_the_upload(start_server: StartServer) -> None:
    server = start_server(args=[*NO_HOT, "--background-level", "0"])
    data = _object(8 * MB)
    assert curl("-f", "-T", "-", f"{server.url}/obj.bin", input=data).returncode == 0
    numbers = server_stats(server)  # at once: nothing was left for later
    assert numbers["compression_pending_bytes"] == 0
    assert int(numbers["stored_bytes"]) < 0.8 * len(data)  # type: ignore[call-overload]
    server.stop()
    assert _codecs(server.data).keys() <= {Codec.ZSTD, Codec.RAW}


def test_a_kill_mid_compression_loses_nothing_and_a_restart_finishes_it(
    start_server: StartServer,
) -> None:
    server = start_server(args=NO_HOT)
    data = _object(48 * MB)
    assert curl("-f", "-T", "-", f"{server.url}/obj.bin", input=data).returncode == 0
    os.kill(server.proc.pid, signal.SIGKILL)  # whatever step it was in
    server.proc.wait(timeout=10)
    assert _fsck(server.data).returncode == 0
    server = start_server(args=NO_HOT, data=server.data)
    _restores_match(server, data)
    assert settled(server)["compression_pending_bytes"] == 0
    _restores_match(server, data)
    server.stop()
    assert Codec.PENDING not in _codecs(server.data)
    assert _fsck(server.data).returncode == 0


def _written(server: Server) -> tuple[int, int]:
    """New raw bytes uploads brought, and bytes they wrote for them, since start."""
    counts = server_stats(server)["since_start"]
    return counts["upload_new_bytes"], counts["upload_stored_bytes"]  # type: ignore[index]


@pytest.mark.parametrize("workers", ["1", "0"], ids=["ingest-process", "ingest-thread"])
def test_a_store_near_its_hard_limit_compresses_during_the_upload(
    start_server: StartServer, workers: str
) -> None:
    """Raw chunks would fill it faster than compressed ones: an upload defers only while
    the store has DEFER_HEADROOM (1 GiB) left below its hard limit."""
    limit = DEFER_HEADROOM + 4 * MB
    server = start_server(args=[*NO_HOT, "--hard-limit", str(limit), "--ingest-workers", workers])
    assert curl("-f", "-T", "-", f"{server.url}/a.bin", input=_object(8 * MB)).returncode == 0
    new, written = _written(server)
    assert new > 7 * MB and written == new  # room enough: stored raw, for later
    assert int(settled(server)["stored_bytes"]) > 4 * MB  # type: ignore[call-overload]
    second = _object(8 * MB)  # the store is now within 1 GiB of its limit
    assert curl("-f", "-T", "-", f"{server.url}/b.bin", input=second).returncode == 0
    more_new, more_written = _written(server)
    assert more_written - written < 0.8 * (more_new - new)  # compressed as it came
    assert curl("-f", f"{server.url}/b.bin").stdout == second


def test_compression_waits_while_a_restore_streams(
    start_server: StartServer, tmp_path: Path
) -> None:
    """A restore's cores and memory come first: with less than BUSY_BACKLOG pending, the
    background takes no step while one streams (nor while an upload runs), and catches
    up once it ends."""
    server = start_server(args=NO_HOT)
    first = _object(24 * MB)
    assert curl("-f", "-T", "-", f"{server.url}/a.bin", input=first).returncode == 0
    settled(server)
    out = tmp_path / "a.out"
    slow = subprocess.Popen(  # ~12 s at 2 MB/s
        ["curl", "-sSf", "--limit-rate", "2000000", "-o", str(out), f"{server.url}/a.bin"]
    )
    try:
        while not (out.exists() and out.stat().st_size > 0):  # the restore is streaming
            assert slow.poll() is None
            time.sleep(0.01)
        second = _object(4 * MB)
        assert curl("-f", "-T", "-", f"{server.url}/b.bin", input=second).returncode == 0
        waiting = []
        # while the server still streams: it logs the GET once it sent the last byte, which
        # TCP's buffers (up to 4 MB sent, 32 MB received here) may hold for seconds more
        while slow.poll() is None and '"GET /a.bin"' not in server.log_text():
            waiting.append(server_stats(server)["compression_pending_bytes"])
            time.sleep(0.05)
        assert len(waiting) > 20, "the restore ended too soon to tell: make it slower"
        assert len(set(waiting)) == 1 and int(waiting[0]) > 0  # type: ignore[call-overload]
    finally:
        assert slow.wait(timeout=60) == 0
    assert out.read_bytes() == first
    assert settled(server)["compression_pending_bytes"] == 0
    assert curl("-f", f"{server.url}/b.bin").stdout == second
