"""``cachesrv analyze``: replaying tarballs reports what a store would hold, writing nothing."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path


def _tar(path: Path, files: dict[str, bytes], mtime: int) -> None:
    with tarfile.open(path, "w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(content), mtime
            tar.addfile(info, io.BytesIO(content))


def test_analyze_reports_dedup_of_the_next_days_tar(tmp_path: Path) -> None:
    files = {f"f{i}": os.urandom(200_000) for i in range(20)}
    _tar(tmp_path / "day1.tar", files, 1_700_000_000)
    files["f0"] = os.urandom(200_000)  # one file of twenty changed, every mtime too
    _tar(tmp_path / "day2.tar", files, 1_700_086_400)
    before = set(tmp_path.iterdir())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cachesrv",
            "analyze",
            str(tmp_path / "day1.tar"),
            str(tmp_path / "day2.tar"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = {
        line.split()[0]: line.split()
        for line in result.stdout.splitlines()
        if line.startswith("day")
    }
    assert rows["day1.tar"][3] == "0.0%"
    dedup_day2 = float(rows["day2.tar"][3].rstrip("%"))
    assert 90 <= dedup_day2 < 100  # 19 of 20 files reused despite the new mtimes
    assert "dedup ratio" in result.stdout
    assert set(tmp_path.iterdir()) == before  # nothing written


def test_analyze_plots_compares_settings_and_recommends_a_volume(tmp_path: Path) -> None:
    files = {f"f{i}": os.urandom(100_000) for i in range(10)}
    tars = []
    for day in range(1, 4):
        files[f"f{day}"] = os.urandom(100_000)
        tars.append(tmp_path / f"day{day}.tar")
        _tar(tars[-1], files, 1_700_000_000 + day * 86400)
    plot = tmp_path / "sizes.png"
    command = [sys.executable, "-m", "cachesrv", "analyze", *map(str, tars)]
    settings = ["--chunk-avg", "16K", "--chunk-avg", "64K", "--level", "1", "--level", "3"]
    result = subprocess.run(
        [*command, *settings, "--retention", "2", "--json", "--plot", str(plot)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "\r[" not in result.stderr  # no progress bar when stderr is not a terminal
    report = json.loads(result.stdout)
    assert {(s["chunk_avg"], s["level"]) for s in report["settings"]} == {
        (16384, 1),
        (16384, 3),
        (65536, 1),
        (65536, 3),
    }
    for setting in report["settings"]:
        assert setting["chunks"] > 0 and setting["mb_per_s"] > 0
        assert 0.5 < setting["dedup"] < 1
        kept = [v["retained_bytes"] for v in setting["versions"]]
        # two versions kept: far less than two whole tars, more than one version's new bytes
        assert kept[2] < 1.3 * setting["versions"][2]["size"]
        assert setting["peak_retained_bytes"] == max(kept)
    assert report["whole"]["peak_retained_bytes"] == sum(v["size"] for v in report["versions"][1:])
    recommended = report["recommended"]
    assert (recommended["chunk_avg"], recommended["level"]) in {
        (16384, 1),
        (16384, 3),
        (65536, 1),
        (65536, 3),
    }
    assert recommended["max_size"] >= recommended["peak_retained_bytes"]
    assert recommended["volume"] >= recommended["hard_limit"] >= recommended["max_size"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000

    text = subprocess.run(
        [*command, "--retention", "2", "--max-size", "10M"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert text.returncode == 0, text.stderr
    for label in ("16 KiB zstd-1", "64 KiB zstd-1", "256 KiB zstd-1", "whole tars"):
        assert label in text.stdout  # the default chunk sizes
    assert "recommended: --chunk-avg" in text.stdout and "--max-size" in text.stdout
    assert "with --max-size 10M: about 3 versions" in text.stdout
