"""``cachesrv analyze``: replaying tarballs reports what a store would hold, writing nothing."""

from __future__ import annotations

import io
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
