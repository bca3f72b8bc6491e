"""``cachesrv analyze``: size a volume before buying it.

Replays real tarballs, in order (oldest first), through the same ingest path an
upload takes (tar-aware splitting, FastCDC, BLAKE3, zstd, and the store's own
choice of codec per chunk: :func:`cachesrv.store.choose_codec` keeps a chunk raw when
zstd saves under 3%) into stores that keep only the size of each chunk, once per
setting (average chunk size x zstd level). Each tarball is read once and fed to
every setting. It reports, per setting, the bytes stored, dedup, chunk count and
speed; the bytes needed to keep the last N versions against keeping each tar whole;
and recommends a setting and a volume. Nothing is written anywhere (but ``--plot``).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import zstandard

from cachesrv.chunking import ChunkParams
from cachesrv.ingest import IngestSession
from cachesrv.manifest import Manifest
from cachesrv.progress import Progress
from cachesrv.store import Frame, StoreStats, group_chunks

READ_BYTES = 1 << 20
KiB = 1024
DEFAULT_CHUNK_AVGS = (16 * KiB, 64 * KiB, 256 * KiB)
# A setting within this much of the smallest store is as good: then the fastest wins.
NEAR_SMALLEST = 1.05
# eviction brings live data down to 0.9 x max-size (lifecycle.gc.LOW_WATER); packs also
# hold garbage until compaction: --max-size leaves room for both
MAX_SIZE_HEADROOM = 1.25
HARD_LIMIT_FACTOR = 1.2  # the server's default hard limit is max-size x 1.2
VOLUME_MARGIN = 1.05  # catalog, index, filesystem


class SizingStore:
    """A chunk writer that remembers ids and sizes, not bytes (enough for ingest)."""

    def __init__(self) -> None:
        self.sizes: dict[bytes, tuple[int, int]] = {}  # id -> (raw, stored)

    def missing(self, ids: Iterable[bytes]) -> set[bytes]:
        return {i for i in ids if i not in self.sizes}

    def put(self, chunk_id: bytes, frame: Frame) -> None:
        self.sizes.setdefault(chunk_id, (frame.raw_size, frame.stored_size))

    def put_group(self, body: Frame) -> None:
        for chunk_id, frame in group_chunks(body):
            self.put(chunk_id, frame)

    def commit(self) -> None:
        return None

    def abort(self) -> None:
        return None

    def stats(self) -> StoreStats:
        raw = sum(r for r, _ in self.sizes.values())
        stored = sum(s for _, s in self.sizes.values())
        return StoreStats(len(self.sizes), stored, raw, stored)


@dataclass(frozen=True)
class Setting:
    chunk_avg: int
    level: int

    @property
    def params(self) -> ChunkParams:
        # the server's default proportions: min = avg / 4, max = avg x 4
        return ChunkParams(max(self.chunk_avg // 4, 64), self.chunk_avg, self.chunk_avg * 4)

    @property
    def label(self) -> str:
        avg = self.chunk_avg
        size = f"{avg // KiB} KiB" if avg % KiB == 0 else f"{avg} B"
        return f"{size} zstd-{self.level}"


@dataclass
class VersionReport:
    name: str
    size: int
    new_bytes: int
    stored_bytes: int
    whole_zstd_bytes: int | None
    retained_bytes: int = 0  # the store holding this version and the N-1 before it

    @property
    def dedup(self) -> float:
        return 1 - self.new_bytes / self.size if self.size else 1.0


@dataclass
class SettingReport:
    setting: Setting
    store: SizingStore = field(default_factory=SizingStore)
    versions: list[VersionReport] = field(default_factory=list)
    seconds: float = 0.0
    peak_retained_bytes: int = 0
    held: list[set[bytes]] = field(default_factory=list)  # each version's content chunks
    manifest_bytes: list[int] = field(default_factory=list)  # each version's manifest

    @property
    def logical_bytes(self) -> int:
        return sum(v.size for v in self.versions)

    @property
    def stored_bytes(self) -> int:  # chunks + manifests, every version kept
        return sum(v.stored_bytes for v in self.versions)

    @property
    def dedup(self) -> float:
        logical = self.logical_bytes
        return 1 - sum(v.new_bytes for v in self.versions) / logical if logical else 1.0

    @property
    def mb_per_s(self) -> float:
        return self.logical_bytes / max(self.seconds, 1e-9) / 1e6

    def as_dict(self) -> dict[str, object]:
        p = self.setting.params
        return {
            "chunk_avg": p.avg_size,
            "chunk_min": p.min_size,
            "chunk_max": p.max_size,
            "level": self.setting.level,
            "label": self.setting.label,
            "logical_bytes": self.logical_bytes,
            "stored_bytes": self.stored_bytes,
            "dedup": round(self.dedup, 4),
            "chunks": len(self.store.sizes),
            "mb_per_s": round(self.mb_per_s, 1),
            "peak_retained_bytes": self.peak_retained_bytes,
            "versions": [
                {
                    "name": v.name,
                    "size": v.size,
                    "new_bytes": v.new_bytes,
                    "stored_bytes": v.stored_bytes,
                    "retained_bytes": v.retained_bytes,
                    "dedup": round(v.dedup, 4),
                }
                for v in self.versions
            ],
        }


@dataclass
class Analysis:
    names: list[str]
    sizes: list[int]
    whole_zstd: list[int] | None
    settings: list[SettingReport]
    retention: int  # versions kept (the window)

    def whole_retained(self, sizes: Sequence[int]) -> list[int]:
        """Bytes to keep each version's tar whole, for the window ending at each one."""
        n = self.retention
        return [sum(sizes[max(0, i - n + 1) : i + 1]) for i in range(len(sizes))]

    def recommended(self) -> SettingReport:
        smallest = min(s.peak_retained_bytes for s in self.settings)
        near = [s for s in self.settings if s.peak_retained_bytes <= smallest * NEAR_SMALLEST]
        return max(near, key=lambda s: s.mb_per_s)

    def volume(self, peak: int) -> dict[str, int]:
        max_size = _round_up(peak * MAX_SIZE_HEADROOM)
        hard = int(max_size * HARD_LIMIT_FACTOR)
        return {"max_size": max_size, "hard_limit": hard, "volume": _round_up(hard * VOLUME_MARGIN)}

    def as_dict(self, max_size: int | None = None) -> dict[str, object]:
        best = self.recommended()
        fits = (
            {"max_size": max_size, "versions_kept": _versions_that_fit(best, max_size)}
            if max_size
            else None
        )
        return {
            "versions": [
                {"name": n, "size": s} for n, s in zip(self.names, self.sizes, strict=True)
            ],
            "retention": self.retention,
            "settings": [s.as_dict() for s in self.settings],
            "whole": {
                "retained_bytes": self.whole_retained(self.sizes),
                "peak_retained_bytes": max(self.whole_retained(self.sizes), default=0),
                "zstd_bytes": self.whole_zstd,
            },
            "recommended": {
                "label": best.setting.label,
                "chunk_avg": best.setting.chunk_avg,
                "level": best.setting.level,
                "peak_retained_bytes": best.peak_retained_bytes,
                **self.volume(best.peak_retained_bytes),
            },
            "with_max_size": fits,
        }


def size_flag(n: int) -> str:
    """A size as the server's flags take it (binary units), rounded up."""
    if n >= 10 << 30:
        return f"{math.ceil(n / (1 << 30))}G"
    return f"{math.ceil(n / (1 << 20))}M"


def _round_up(n: float) -> int:
    """Up to two significant digits (a size one can order)."""
    if n <= 0:
        return 0
    step = 10 ** max(int(math.log10(n)) - 1, 0)
    return int(math.ceil(n / step) * step)


def _blocks(stream: BinaryIO) -> Iterator[bytes]:
    while block := stream.read(READ_BYTES):
        yield block


def _total_size(paths: Sequence[str]) -> int:
    total = 0
    for name in paths:
        try:
            total += os.stat(name).st_size if name != "-" else 0
        except OSError:
            pass
    return total


def run(
    paths: Sequence[str],
    settings: Sequence[Setting],
    retention: int | None = None,
    tar_aware: bool = True,
    compare_zstd: bool = True,
    progress: Progress | None = None,
) -> Analysis:
    reports = [SettingReport(s) for s in settings]
    window = retention or len(paths)
    progress = progress or Progress(_total_size(paths), enabled=False)
    names, sizes, wholes = [], [], []
    for name in paths:
        sessions = [
            IngestSession(r.store, r.setting.params, r.setting.level, tar_aware=tar_aware)
            for r in reports
        ]
        whole = zstandard.ZstdCompressor(level=3).compressobj() if compare_zstd else None
        whole_size = 0
        label = Path(name).name
        with open(name, "rb") if name != "-" else sys.stdin.buffer as stream:  # type: ignore[attr-defined]
            for block in _blocks(stream):
                for report, session in zip(reports, sessions, strict=True):
                    started = time.perf_counter()
                    session.feed(block)
                    report.seconds += time.perf_counter() - started
                if whole is not None:
                    whole_size += len(whole.compress(block))
                progress.advance(len(block), label)
        if whole is not None:
            whole_size += len(whole.flush())
        names.append(name)
        wholes.append(whole_size)
        for report, session in zip(reports, sessions, strict=True):
            started = time.perf_counter()
            manifest = session.finish()
            report.seconds += time.perf_counter() - started
            stats = session.stats
            # tar headers live in the manifest: new bytes every time, stored compressed with it
            inline = stats.inline_bytes
            manifest_bytes = len(manifest.body)
            report.held.append(Manifest.chunk_ids_of(manifest.body))
            report.manifest_bytes.append(manifest_bytes)
            report.versions.append(
                VersionReport(
                    name,
                    stats.logical_bytes,
                    stats.new_bytes + inline,
                    stats.stored_bytes + manifest_bytes,
                    whole_size if compare_zstd else None,
                )
            )
        sizes.append(reports[0].versions[-1].size if reports else 0)
    progress.close()
    for report in reports:
        _retained(report, window)
    return Analysis(names, sizes, wholes if compare_zstd else None, reports, window)


def _retained(report: SettingReport, n: int) -> None:
    """Stored bytes of the store holding versions i-n+1..i, for each i (a sliding window
    of reference counts: a chunk counts while some version in the window holds it)."""
    held, manifests = report.held, report.manifest_bytes
    counts: dict[bytes, int] = {}
    chunk_bytes = 0
    sizes = report.store.sizes
    for i, ids in enumerate(held):
        for cid in ids:
            counts[cid] = counts.get(cid, 0) + 1
            if counts[cid] == 1:
                chunk_bytes += sizes[cid][1]
        if i >= n:
            for cid in held[i - n]:
                counts[cid] -= 1
                if counts[cid] == 0:
                    del counts[cid]
                    chunk_bytes -= sizes[cid][1]
        window_manifests = sum(manifests[max(0, i - n + 1) : i + 1])
        report.versions[i].retained_bytes = chunk_bytes + window_manifests
    report.peak_retained_bytes = max((v.retained_bytes for v in report.versions), default=0)


# -- output ----------------------------------------------------------------------------


def render(analysis: Analysis, max_size: int | None = None) -> str:
    mb = 1e6
    best = analysis.recommended()
    params = best.setting.params
    lines = [
        f"per version at the recommended setting: tar-aware FastCDC min/avg/max "
        f"{params.min_size}/{params.avg_size}/{params.max_size} bytes, zstd {best.setting.level}",
        f"{'file':<40} {'size MB':>10} {'new MB':>10} {'dedup':>7} {'stored MB':>10} "
        f"{'zstd-3 MB':>10} {'kept MB':>10}",
    ]
    for r in best.versions:
        whole = f"{r.whole_zstd_bytes / mb:10.1f}" if r.whole_zstd_bytes is not None else " " * 10
        lines.append(
            f"{Path(r.name).name[:40]:<40} {r.size / mb:10.1f} {r.new_bytes / mb:10.1f} "
            f"{r.dedup:7.1%} {r.stored_bytes / mb:10.1f} {whole} {r.retained_bytes / mb:10.1f}"
        )
    totals = best.store.stats()
    logical = best.logical_bytes
    lines.append(
        f"total: {logical / mb:.1f} MB logical -> {totals.raw_bytes / mb:.1f} MB unique "
        f"-> {best.stored_bytes / mb:.1f} MB stored ({totals.chunks} chunks + manifests)"
    )
    if totals.raw_bytes and totals.stored_bytes:
        lines.append(
            f"dedup ratio {logical / totals.raw_bytes:.2f}x, compression ratio "
            f"{totals.raw_bytes / totals.stored_bytes:.2f}x"
        )
    wholes = analysis.whole_zstd
    if wholes and sum(wholes):
        lines.append(
            f"stored / (each file compressed whole with zstd -3): "
            f"{best.stored_bytes / sum(wholes):.2f}"
        )
    n = analysis.retention
    lines += [
        "",
        f"settings (keeping the last {n} version{'s' if n > 1 else ''}):",
        f"{'setting':<18} {'stored MB':>10} {'dedup':>7} {'chunks':>9} {'MB/s':>8} "
        f"{'peak kept MB':>13}",
    ]
    for s in analysis.settings:
        mark = " *" if s is best else ""
        lines.append(
            f"{s.setting.label:<18} {s.stored_bytes / mb:10.1f} {s.dedup:7.1%} "
            f"{len(s.store.sizes):9d} {s.mb_per_s:8.1f} {s.peak_retained_bytes / mb:13.1f}{mark}"
        )
    whole_peak = max(analysis.whole_retained(analysis.sizes), default=0)
    lines.append(f"{'whole tars':<18} {'':>10} {'':>7} {'':>9} {'':>8} {whole_peak / mb:13.1f}")
    volume = analysis.volume(best.peak_retained_bytes)
    lines += [
        "",
        f"recommended: --chunk-avg {best.setting.chunk_avg} --compression-level "
        f"{best.setting.level} ({best.setting.label}: within {NEAR_SMALLEST - 1:.0%} of the "
        "smallest store, the fastest)",
        f"volume to keep {n} version{'s' if n > 1 else ''}: {best.peak_retained_bytes / mb:.1f} MB "
        f"of data -> --max-size {size_flag(volume['max_size'])} (room for pack garbage and "
        f"eviction's low water), hard limit {size_flag(volume['hard_limit'])}, "
        f"a volume of at least {size_flag(volume['volume'])}",
    ]
    if max_size:
        fits = _versions_that_fit(best, max_size)
        lines.append(
            f"with --max-size {size_flag(max_size)}: about {fits} version"
            f"{'s' if fits != 1 else ''} of this sequence stay stored"
        )
    return "\n".join(lines)


def _versions_that_fit(report: SettingReport, max_size: int) -> int:
    """How many of the newest versions fit under max-size (after the headroom)."""
    budget = max_size / MAX_SIZE_HEADROOM
    sizes = report.store.sizes
    kept: set[bytes] = set()
    count, total = 0, 0
    # grow the window from the newest version backwards while it fits
    for ids, manifest_bytes in zip(
        reversed(report.held), reversed(report.manifest_bytes), strict=True
    ):
        add = sum(sizes[c][1] for c in ids - kept) + manifest_bytes
        if total + add > budget:
            break
        kept |= ids
        total += add
        count += 1
    return count


def plot(analysis: Analysis, path: str) -> None:
    """A PNG of the bytes kept over the sequence, per setting, against whole tars."""
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font cache notes
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(1, len(analysis.names) + 1))
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    ax.plot(
        x,
        [b / 1e6 for b in analysis.whole_retained(analysis.sizes)],
        "k--",
        label="whole tars (as the old uploader keeps them)",
    )
    if analysis.whole_zstd:
        ax.plot(
            x,
            [b / 1e6 for b in analysis.whole_retained(analysis.whole_zstd)],
            ":",
            color="grey",
            label="whole tars, zstd -3",
        )
    best = analysis.recommended()
    for s in analysis.settings:
        ax.plot(
            x,
            [v.retained_bytes / 1e6 for v in s.versions],
            marker="o",
            markersize=3,
            linewidth=2.5 if s is best else 1.5,
            label=s.setting.label + (" (recommended)" if s is best else ""),
        )
    n = analysis.retention
    ax.set_title(f"cachesrv analyze: bytes stored keeping the last {n} version(s)")
    ax.set_xlabel("version (tarballs in the order given)")
    ax.set_ylabel("MB stored")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if len(x) <= 12:
        ax.set_xticks(x, [Path(n).name[:14] for n in analysis.names], rotation=30, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
