"""``cachesrv analyze``: size a volume before buying it.

Replays real tarballs, in order, through the same ingest path an upload takes
(tar-aware splitting, FastCDC, BLAKE3, zstd) into a store that keeps only the
size of each chunk, and reports what each version would add: new bytes after
dedup, compressed bytes stored, and the totals against each file compressed
whole with zstd (what a plain file server with compression would need).
Nothing is written anywhere.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from cachesrv.chunking import ChunkParams
from cachesrv.ingest import IngestSession
from cachesrv.store import Frame, StoreStats

READ_BYTES = 1 << 20


class SizingStore:
    """A chunk writer that remembers ids and sizes, not bytes (enough for ingest)."""

    def __init__(self) -> None:
        self.sizes: dict[bytes, tuple[int, int]] = {}  # id -> (raw, stored)

    def missing(self, ids: Iterable[bytes]) -> set[bytes]:
        return {i for i in ids if i not in self.sizes}

    def put(self, chunk_id: bytes, frame: Frame) -> None:
        self.sizes.setdefault(chunk_id, (frame.raw_size, len(frame.data)))

    def commit(self) -> None:
        return None

    def abort(self) -> None:
        return None

    def stats(self) -> StoreStats:
        raw = sum(r for r, _ in self.sizes.values())
        stored = sum(s for _, s in self.sizes.values())
        return StoreStats(len(self.sizes), stored, raw, stored)


@dataclass
class VersionReport:
    name: str
    size: int
    new_bytes: int
    stored_bytes: int
    whole_zstd_bytes: int | None

    @property
    def dedup(self) -> float:
        return 1 - self.new_bytes / self.size if self.size else 1.0


def _blocks(stream: BinaryIO) -> Iterator[bytes]:
    while block := stream.read(READ_BYTES):
        yield block


def analyze(
    paths: Sequence[str],
    params: ChunkParams,
    level: int,
    tar_aware: bool = True,
    compare_zstd: bool = True,
) -> tuple[list[VersionReport], SizingStore]:
    store = SizingStore()
    reports = []
    for name in paths:
        session = IngestSession(store, params, level, tar_aware=tar_aware)
        whole = zstandard.ZstdCompressor(level=3).compressobj() if compare_zstd else None
        whole_size = 0
        with open(name, "rb") if name != "-" else sys.stdin.buffer as stream:  # type: ignore[attr-defined]
            for block in _blocks(stream):
                session.feed(block)
                if whole is not None:
                    whole_size += len(whole.compress(block))
        if whole is not None:
            whole_size += len(whole.flush())
        manifest = session.finish()
        stats = session.stats
        # tar headers live in the manifest: new bytes every time, stored compressed with it
        inline = sum(p.size for p in manifest.pieces if p.inline is not None)
        reports.append(
            VersionReport(
                name,
                stats.logical_bytes,
                stats.new_bytes + inline,
                stats.stored_bytes + len(manifest.encode()),
                whole_size if compare_zstd else None,
            )
        )
    return reports, store


def render(reports: list[VersionReport], store: SizingStore, params: ChunkParams) -> str:
    mb = 1e6
    lines = [
        f"chunking: tar-aware FastCDC min/avg/max {params.min_size}/{params.avg_size}/"
        f"{params.max_size} bytes",
        f"{'file':<40} {'size MB':>10} {'new MB':>10} {'dedup':>7} {'stored MB':>10} "
        f"{'zstd-3 MB':>10}",
    ]
    for r in reports:
        whole = f"{r.whole_zstd_bytes / mb:10.1f}" if r.whole_zstd_bytes is not None else " " * 10
        lines.append(
            f"{Path(r.name).name[:40]:<40} {r.size / mb:10.1f} {r.new_bytes / mb:10.1f} "
            f"{r.dedup:7.1%} {r.stored_bytes / mb:10.1f} {whole}"
        )
    totals = store.stats()
    logical = sum(r.size for r in reports)
    stored = sum(r.stored_bytes for r in reports)  # chunks + manifests
    lines.append(
        f"total: {logical / mb:.1f} MB logical -> {totals.raw_bytes / mb:.1f} MB unique "
        f"-> {stored / mb:.1f} MB stored ({totals.chunks} chunks + manifests)"
    )
    if totals.raw_bytes and totals.stored_bytes:
        lines.append(
            f"dedup ratio {logical / totals.raw_bytes:.2f}x, compression ratio "
            f"{totals.raw_bytes / totals.stored_bytes:.2f}x"
        )
    wholes = [r.whole_zstd_bytes for r in reports if r.whole_zstd_bytes is not None]
    if wholes and len(wholes) == len(reports) and sum(wholes):
        lines.append(
            f"stored / (each file compressed whole with zstd -3): {stored / sum(wholes):.2f}"
        )
    lines.append(
        "volume: keep the stored bytes of the versions you retain, plus headroom for pack "
        "garbage awaiting compaction (set --max-size below the volume)"
    )
    return "\n".join(lines)
