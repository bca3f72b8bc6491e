"""``cachesrv import DIR``: an old go-simple-uploader directory becomes objects with the
files' mtimes as Last-Modified, once (a second run skips what is stored)."""

from __future__ import annotations

import email.utils
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from conftest import StartServer, clean_env, curl

from cachesrv.catalog import SqliteCatalog


def _import(directory: Path, data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cachesrv", "import", str(directory), "--data", str(data), *extra],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
    )


def _old_tree(root: Path) -> dict[str, tuple[bytes, float]]:
    # seeded: the last CDC cut in ``shared`` decides how much of it is stored once
    rng = random.Random(30)
    shared = rng.randbytes(1_000_000)
    files = {
        "golang-cache.tar": shared + rng.randbytes(100_000),
        "project/a/golang-cache.tar": shared + rng.randbytes(100_000),
        "project/b/report.txt": b"hello\n",
        "empty": b"",
    }
    month_ago = time.time() - 30 * 86400
    made = {}
    for i, (name, content) in enumerate(files.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        mtime = int(month_ago) + i * 3600  # whole seconds, as HTTP dates carry them
        os.utime(path, (mtime, mtime))
        made[name] = (content, float(mtime))
    (root / "link").symlink_to(root / "empty")  # not a file of the old server's: skipped
    return made


def test_import_keeps_paths_bytes_and_mtimes_and_is_idempotent(
    tmp_path: Path, start_server: StartServer
) -> None:
    old, data = tmp_path / "old", tmp_path / "data"
    files = _old_tree(old)
    before = time.time()
    first = _import(old, data)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["files"] == 4 and summary["bytes"] == sum(len(c) for c, _ in files.values())
    assert summary["new_bytes"] < summary["bytes"] - 700_000  # the shared part is stored once
    assert "imported 4 files" in first.stderr and "\r[" not in first.stderr  # no TTY: no bar

    catalog = SqliteCatalog(data)
    try:
        for _, _, _, _, atime in catalog.names_by_access():
            assert atime >= before  # last access: the import, so TTL counts from it
    finally:
        catalog.close()

    again = _import(old, data)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["files"] == 0 and json.loads(again.stdout)["skipped"] == 4

    changed = old / "project/b/report.txt"
    changed.write_bytes(b"changed\n")
    third = json.loads(_import(old, data).stdout)
    assert third["files"] == 1 and third["skipped"] == 3
    files["project/b/report.txt"] = (b"changed\n", changed.stat().st_mtime)

    # GC with a one-day TTL keeps month-old files: their last access is the import
    gc = subprocess.run(
        [sys.executable, "-m", "cachesrv", "gc", "--data", str(data), "--ttl", "1d"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
    )
    assert gc.returncode == 0 and json.loads(gc.stdout)["expired_names"] == 0, gc.stderr

    server = start_server(data=data)
    for name, (content, mtime) in files.items():
        result = curl("-f", "-D", "-", f"{server.url}/{name}", check=True)
        head, _, body = result.stdout.partition(b"\r\n\r\n")
        assert body == content
        modified = next(
            line.split(b": ", 1)[1].decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"last-modified:")
        )
        assert email.utils.parsedate_to_datetime(modified).timestamp() == int(mtime)
    assert curl("-s", "-o", "/dev/null", "-w", "%{http_code}", f"{server.url}/link").stdout == (
        b"404"
    )


def test_import_refuses_names_the_store_reserves_and_says_so(tmp_path: Path) -> None:
    old = tmp_path / "old"
    (old / "-").mkdir(parents=True)
    (old / "-" / "stats").write_bytes(b"x")
    (old / "fine.txt").write_bytes(b"y")
    result = _import(old, tmp_path / "data")
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert summary["files"] == 1 and len(summary["refused"]) == 1
    assert "-/stats" in result.stderr
