"""Throughput of cachesrv.chunking.Splitter alone, against pyfastcdc's cut_buf.

Builds a ~200 MB synthetic tar in memory (incompressible content; many small
members like a Go build cache's index files plus large build outputs), then
times, on one core:

- baseline: pyfastcdc `cut_buf` over the whole tar in one call, copying each
  chunk to bytes (what any consumer needs to hash/compress/keep it);
- Splitter, tar-aware and not, fed in 1 MiB and 64 KiB slices (a server's
  receive sizes).

Usage: python bench/bench_chunking.py [size_mb] [repeats]
"""

from __future__ import annotations

import io
import os
import random
import sys
import tarfile
import time

from pyfastcdc import FastCDC

from cachesrv.chunking import ChunkParams, Splitter


def synthetic_tar(total: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    pool = os.urandom(64 * 1024 * 1024)  # slices of it: incompressible, cheap to make
    buf = io.BytesIO()
    written = 0
    i = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        while written < total:
            r = rng.random()
            if r < 0.6:
                size = rng.randint(100, 300)  # index-file-like
            elif r < 0.9:
                size = rng.randint(1024, 64 * 1024)
            else:
                size = rng.randint(256 * 1024, 4 * 1024 * 1024)
            start = rng.randrange(0, len(pool) - size)
            info = tarfile.TarInfo(f"cache/{i % 256:02x}/{i:08d}-d")
            info.size = size
            info.mtime = 1_700_000_000 + i
            tar.addfile(info, io.BytesIO(pool[start : start + size]))
            written += size + 512
            i += 1
    return buf.getvalue()


def best_of(repeats: int, fn) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    params = ChunkParams()
    data = synthetic_tar(size_mb * 1024 * 1024)
    members = sum(1 for _ in tarfile.open(fileobj=io.BytesIO(data)))
    mb = len(data) / 1e6
    print(f"synthetic tar: {mb:.0f} MB, {members} members; params {params}")

    cdc = FastCDC(params.avg_size, min_size=params.min_size, max_size=params.max_size)

    def baseline() -> None:
        for c in cdc.cut_buf(data):
            c.data.tobytes()

    def splitter(tar_aware: bool, step: int) -> None:
        s = Splitter(params, tar_aware=tar_aware)
        mv = memoryview(data)
        for i in range(0, len(mv), step):
            s.feed(mv[i : i + step])
        s.finish()

    base = best_of(repeats, baseline)
    print(f"{'pyfastcdc cut_buf (one call, chunks to bytes)':48s} {mb / base:7.0f} MB/s  1.00")
    for tar_aware in (True, False):
        for step in (1024 * 1024, 64 * 1024):
            t = best_of(repeats, lambda a=tar_aware, n=step: splitter(a, n))
            label = f"Splitter tar_aware={tar_aware}, {step // 1024} KiB feeds"
            print(f"{label:48s} {mb / t:7.0f} MB/s  {base / t:.2f}")


if __name__ == "__main__":
    main()
