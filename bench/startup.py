"""Time to first response of ``cachesrv serve`` on a store of a million tiny chunks.

    python -m bench.startup [--chunks 1000000] [--data DIR] [--keep]

Builds the store through the store API (once; reused with --data), then starts the
server five times and reports the time from exec to the first 200 of /-/healthz and
of a HEAD of a stored object, next to the same on an empty store.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.synthetic_store import build

PER_OBJECT = 1000


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _first_ok(url: str, method: str, proc: subprocess.Popen[bytes]) -> None:
    while True:
        if proc.poll() is not None:
            raise RuntimeError("server exited")
        try:
            request = urllib.request.Request(url, method=method)
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.005)


def measure(data: Path, path: str) -> tuple[float, float]:
    port = _port()
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cachesrv", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--data", str(data), "--log-level", "warning"],
    )  # fmt: skip
    try:
        _first_ok(base + "/-/healthz", "GET", proc)
        healthy = time.perf_counter() - started
        _first_ok(f"{base}/{path}", "HEAD", proc)
        head = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait()
    return healthy, head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="cachesrv-startup-"))
    data = args.data or scratch / "big"
    if not (data / "catalog.sqlite").exists():
        seconds = build(data, args.chunks // PER_OBJECT, PER_OBJECT)
        print(f"built {args.chunks} chunks in {args.chunks // PER_OBJECT} objects: {seconds:.1f}s")
    empty = scratch / "empty"
    build(empty, 1, 10)
    try:
        for label, store in (("empty store", empty), (f"{args.chunks} chunks", data)):
            runs = [measure(store, "synthetic/0000000.bin") for _ in range(5)]
            healthy = statistics.median(r[0] for r in runs)
            head = statistics.median(r[1] for r in runs)
            print(f"{label:>18}: first /-/healthz {healthy * 1000:.0f} ms, first HEAD "
                  f"{head * 1000:.0f} ms (median of 5, from exec)")  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
