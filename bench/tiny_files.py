"""How to store caches of many tiny files: the storage choices measured on a corpus pair.

Splits v1 and v2 with cachesrv's own tar-aware chunker, keeps each distinct chunk once
(dedup across the versions, as the store does), and prints what each way of compressing
those chunks would store, as a ratio to ``zstd -3`` of the two tars each compressed whole
(the issue's yardstick; lower is better):

- ``shipped``: what the store's background keeps (``cachesrv.store.compress_frames`` at
  the defaults: level 3, runs of up to 4 MiB grouped at level 9 where that saves 2% of
  their raw bytes);
- ``per-chunk lN``: every chunk its own frame at level N (level 1: the request path's,
  with background compression off);
- ``grouped lN``: chunks under 64 KiB packed, in upload order, into shared 1 MiB frames
  (a 300-byte ``package.json`` gets the context of its neighbours), larger ones alone;
- ``trained dictionary``: a zstd dictionary trained from v1's small chunks, used for
  every small chunk;
- ``zstd -3 of v2 alone``: what a store would hold if v1 deduplicated away entirely and
  nothing else were gained (the floor where v2 contains v1, as the maven pair does);
- ``previous version``: v2's files whose content is new, compressed with the v1 file of
  the same path as a raw-content dictionary (a dependency bump changes a package's files
  a little; neither dedup nor grouping sees that), against the same files alone.

Run: ``python -m bench.tiny_files --corpus npm`` (or ``maven``, ``go``); builds the
corpus if needed (``bench.corpus``). Seconds are single-thread compression time here,
for comparison between rows only.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import zstandard

from bench import corpus as corpus_mod
from cachesrv.chunking import Splitter
from cachesrv.ingest.session import INLINE_LIMIT
from cachesrv.store import GROUP_RAW, chunk_id, compress_frames, defer_chunk, pending_step

SMALL = 64 * 1024
GROUP = 1 << 20


def unique_chunks(paths: list[Path]) -> tuple[list[bytes], set[bytes]]:
    """Distinct content chunks of the tars in upload order, and the ids of the first's."""
    seen: set[bytes] = set()
    order: list[bytes] = []
    first: set[bytes] = set()
    for n, path in enumerate(paths):
        splitter = Splitter()
        with path.open("rb") as f:
            pieces = []
            while block := f.read(1 << 20):
                pieces += splitter.feed(block)
            pieces += splitter.finish()
        for piece in pieces:
            if piece.meta and len(piece.data) <= INLINE_LIMIT:
                continue  # inline in the manifest: not a chunk
            data = bytes(piece.data)
            cid = blake3.blake3(data).digest()
            if n == 0:
                first.add(cid)
            if cid not in seen:
                seen.add(cid)
                order.append(data)
    return order, first


def _frame(c: zstandard.ZstdCompressor, data: bytes) -> int:
    return min(len(c.compress(data)), len(data))  # a chunk that does not compress is raw


def per_chunk(chunks: list[bytes], level: int) -> int:
    c = zstandard.ZstdCompressor(level=level)
    return sum(_frame(c, d) for d in chunks)


def grouped(chunks: list[bytes], level: int) -> int:
    c = zstandard.ZstdCompressor(level=level)
    total, group, group_bytes = 0, [], 0
    for data in chunks:
        if len(data) >= SMALL:
            total += _frame(c, data)
            continue
        group.append(data)
        group_bytes += len(data)
        if group_bytes >= GROUP:
            total += _frame(c, b"".join(group))
            group, group_bytes = [], 0
    if group:
        total += _frame(c, b"".join(group))
    return total


def shipped(chunks: list[bytes]) -> int:
    """The background's own choice, a step at a time as it runs (``pending_step``)."""
    total, rest = 0, chunks
    while rest:
        step, _ = pending_step(rest, len, GROUP_RAW)
        rest = rest[len(step) :]
        ids = [chunk_id(d) for d in step]
        frames = [defer_chunk(cid, data) for cid, data in zip(ids, step, strict=True)]
        records, _ = compress_frames(3, ids, frames, 9)
        total += sum(len(r.frame.data) for r in records)
    return total


def trained(chunks: list[bytes], v1_small: list[bytes], level: int) -> int:
    dictionary = zstandard.train_dictionary(112_640, v1_small, level=level)
    small = zstandard.ZstdCompressor(level=level, dict_data=dictionary)
    big = zstandard.ZstdCompressor(level=level)
    body = sum(_frame(small if len(d) < SMALL else big, d) for d in chunks)
    return len(dictionary.as_bytes()) + body


def _files(path: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with tarfile.open(path) as tf:
        for member in tf:
            f = tf.extractfile(member) if member.isfile() else None
            if f is not None:
                out[member.name] = f.read()
    return out


def previous_version(v1: Path, v2: Path, level: int) -> tuple[int, int, int, int]:
    """(new-content files of v2, their bytes, stored alone, stored against v1's twin)."""
    old, new = _files(v1), _files(v2)
    old_contents = set(old.values())
    changed = [(name, data) for name, data in new.items() if data not in old_contents]
    plain = zstandard.ZstdCompressor(level=level)
    alone = against = 0
    for name, data in changed:
        alone += _frame(plain, data)
        twin = old.get(name)
        if twin is not None and len(twin) >= 64:
            raw = zstandard.ZstdCompressionDict(twin, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
            against += _frame(zstandard.ZstdCompressor(level=level, dict_data=raw), data)
        else:
            against += _frame(plain, data)
    return len(changed), sum(len(d) for _, d in changed), alone, against


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.tiny_files", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--corpus", choices=corpus_mod.KINDS, default="npm")
    args = ap.parse_args(argv)
    c = corpus_mod.build(args.corpus)
    z3_v1, z3_v2 = (
        len(zstandard.ZstdCompressor(level=3).compress(p.read_bytes())) for p in (c.v1, c.v2)
    )
    z3 = z3_v1 + z3_v2
    chunks, first = unique_chunks([c.v1, c.v2])
    small = sum(1 for d in chunks if len(d) < SMALL)
    print(
        f"corpus {c.kind}: v1 {c.v1_bytes / 1e6:.1f} MB ({c.v1_members} members), "
        f"v2 {c.v2_bytes / 1e6:.1f} MB ({c.v2_members}); zstd -3 of both tars {z3 / 1e6:.1f} MB; "
        f"{len(chunks)} distinct chunks, {sum(map(len, chunks)) / 1e6:.1f} MB, {small} under 64 KiB"
    )
    print(f"  zstd -3 of v2 alone      {z3_v2 / z3:6.3f}   (v1 deduplicated away, no more)")
    v1_small = [d for d in chunks if len(d) < SMALL and blake3.blake3(d).digest() in first]
    rows: list[tuple[str, Callable[[], int]]] = [
        ("shipped (grouped l9)", lambda: shipped(chunks)),
        ("per-chunk l1", lambda: per_chunk(chunks, 1)),
        ("per-chunk l3", lambda: per_chunk(chunks, 3)),
        ("per-chunk l9", lambda: per_chunk(chunks, 9)),
        ("grouped l3", lambda: grouped(chunks, 3)),
        ("grouped l9", lambda: grouped(chunks, 9)),
        ("trained dictionary l3", lambda: trained(chunks, v1_small, 3)),
    ]
    results: dict[str, int] = {}
    for name, fn in rows:
        t0 = time.perf_counter()
        results[name] = fn()
        print(f"  {name:<24} {results[name] / z3:6.3f}   {time.perf_counter() - t0:5.1f} s")
    files, raw, alone, against = previous_version(c.v1, c.v2, 9)
    print(
        f"  previous version l9: {files} v2 files with new content ({raw / 1e6:.1f} MB): "
        f"{alone / 1e6:.2f} MB alone, {against / 1e6:.2f} MB against v1's file of the same path"
    )
    estimate = (results["grouped l9"] - (alone - against)) / z3
    print(f"  grouped l9 + previous version (estimate) {estimate:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
