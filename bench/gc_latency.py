"""HEAD latency while the server's background GC runs, against the same server idle.

    python -m bench.gc_latency [--objects 2000] [--chunks-per-object 250] [--heads 4000]

Builds a store of objects x chunks tiny chunks through the store API, deletes half of
the objects (garbage to sweep and packs to compact), then measures sequential HEADs
over one keep-alive connection: first with background GC off, then with a
collection running back to back (``--gc-interval 0.05``). Prints p50/p99/max and how
many collections ran during the measurement and how long each took.
"""

from __future__ import annotations

import argparse
import http.client
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.synthetic_store import build
from cachesrv.catalog import Catalog


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(data: Path, log: Path, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _port()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cachesrv", "serve", "--host", "127.0.0.1", "--port",
             str(port), "--data", str(data), *args],
            stdout=out, stderr=out,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/-/healthz", timeout=1)
            return proc, port
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("server did not start")


def _heads(port: int, paths: list[str], count: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    rng = random.Random(1)
    times = []
    for _ in range(count):
        path = rng.choice(paths)
        started = time.perf_counter()
        conn.request("HEAD", "/" + path)
        response = conn.getresponse()
        response.read()
        times.append(time.perf_counter() - started)
        assert response.status == 200, response.status
    conn.close()
    return times


def _summary(label: str, times: list[float]) -> str:
    ordered = sorted(times)
    p99 = ordered[int(len(ordered) * 0.99)]
    return (
        f"{label:>14}: p50 {statistics.median(ordered) * 1000:.2f} ms, "
        f"p99 {p99 * 1000:.2f} ms, max {ordered[-1] * 1000:.1f} ms ({len(times)} HEADs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--chunks-per-object", type=int, default=250)
    parser.add_argument("--heads", type=int, default=4000)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="cachesrv-gc-latency-"))
    data, log = scratch / "data", scratch / "server.log"
    try:
        seconds = build(data, args.objects, args.chunks_per_object)
        catalog = Catalog(data)
        paths = [path for path, _, _ in catalog.children("synthetic")]
        catalog.delete_paths(f"synthetic/{p}" for p in paths[::2])
        catalog.close()
        kept = [f"synthetic/{p}" for p in paths[1::2]]
        total = args.objects * args.chunks_per_object
        print(f"store: {total} chunks in {args.objects} objects ({seconds:.0f}s), half deleted")

        proc, port = _serve(data, log, "--gc-interval", "0")
        _heads(port, kept, 500)  # warm-up
        idle = _heads(port, kept, args.heads)
        proc.terminate()
        proc.wait()

        before = log.read_text().count("cachesrv.gc: gc:")
        proc, port = _serve(
            data, log, "--gc-interval", "0.05", "--gc-grace", "0", "--upload-pin-ttl", "0"
        )
        _heads(port, kept, 500)
        busy = _heads(port, kept, args.heads)
        proc.terminate()
        proc.wait()
        runs = re.findall(r"cachesrv\.gc: gc: .* in ([\d.]+)s", log.read_text())[before:]
        print(_summary("idle", idle))
        print(_summary("during GC", busy))
        if runs:
            print(
                f"{len(runs)} collections during the run, each {min(map(float, runs)):.2f}-"
                f"{max(map(float, runs)):.2f} s (mark of {args.objects // 2} manifests, "
                f"{total // 2} chunks; the first also swept {total // 2} and compacted)"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
