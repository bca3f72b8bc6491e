"""The seed pipeline's Tekton steps (SEED-PIPELINE.md), run as written against cachesrv.

Only the host and port are substituted (``http://uploader:8080`` -> the test server),
the workspace path is a temp dir, and ``python`` is put on PATH for the expiry check.
"""

from __future__ import annotations

import datetime
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from conftest import Server, free_port

RESTORE = """#!/usr/bin/env bash
set -ex
mkdir -p go-build-cache;cd go-build-cache

curl -fsI {url}/golang-cache.tar || {{
     echo "no cache found"
     exit 0
}}

echo "Getting cache"
curl {url}/golang-cache.tar|tar -x -f-
"""

SAVE = """#!/usr/bin/env bash
curl -o/dev/null -s -f -X POST -F path=test -F file=@{probe}  {url}/upload || {{
    echo "No cache server found"
    exit 0
 }}

lm="$(curl -fsI {url}/golang-cache.tar|sed -n '/Last-Modified/ {{ s/Last-Modified: //;s/\\r//; p}}')"
 if [[ -n ${{lm}} ]];then
      expired=$(python -c "import datetime, sys;print(datetime.datetime.now() > datetime.datetime.strptime(sys.argv[1], '%a, %d %b %Y %X %Z') + datetime.timedelta(days=1))" "${{lm}}")
       [[ ${{expired}} == "False" ]] && {{
         echo "Cache is younger than a day"
         exit
        }}

  fi

  cd {workspace}/go-build-cache
  tar cf - . |curl -# -L -f -F path=golang-cache.tar -X POST -F "file=@-" {url}/upload
"""  # noqa: E501


def make_go_cache(root: Path, files: int = 300) -> None:
    """A tree shaped like a Go build cache: two-hex-digit dirs, many tiny index files
    and some larger outputs."""
    rng = random.Random(7)
    for i in range(files):
        directory = root / f"{rng.randrange(256):02x}"
        directory.mkdir(parents=True, exist_ok=True)
        size = 175 if i % 2 else rng.randrange(1_000, 400_000)
        (directory / f"{rng.getrandbits(128):032x}-{'a' if i % 2 else 'd'}").write_bytes(
            rng.randbytes(size)
        )
    (root / "README").write_text(
        "This directory holds cached build artifacts from the Go build system.\n"
    )
    (root / "trim.txt").write_text("1700000000\n")


def run_step(script: str, cwd: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    python = bin_dir / "python"
    if not python.exists():
        python.symlink_to(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    step = tmp_path / "step.sh"
    step.write_text(script)
    return subprocess.run(
        ["bash", str(step)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_seed_pipeline_restore_save_restore_skip(server: Server, tmp_path: Path) -> None:
    probe = tmp_path / "motd"
    probe.write_text("probe\n")
    first_run = tmp_path / "run1"
    first_run.mkdir()

    # 1. restore on an empty server: HEAD is a 404, the step says so and goes on
    step = run_step(RESTORE.format(url=server.url), first_run, tmp_path)
    assert step.returncode == 0, step.stderr
    assert "no cache found" in step.stdout

    # 2. the build fills the cache; the save step probes, finds no Last-Modified, uploads
    make_go_cache(first_run / "go-build-cache")
    step = run_step(
        SAVE.format(url=server.url, probe=probe, workspace=first_run), first_run, tmp_path
    )
    assert step.returncode == 0, step.stderr
    assert "File has been uploaded to golang-cache.tar" in step.stdout

    # 3. the next pipeline restores an identical tree
    second_run = tmp_path / "run2"
    second_run.mkdir()
    step = run_step(RESTORE.format(url=server.url), second_run, tmp_path)
    assert step.returncode == 0, step.stderr
    assert "Getting cache" in step.stderr + step.stdout
    assert tree(second_run / "go-build-cache") == tree(first_run / "go-build-cache")

    # 4. saving again the same day: Last-Modified parses with strptime and is fresh
    step = run_step(
        SAVE.format(url=server.url, probe=probe, workspace=second_run), second_run, tmp_path
    )
    assert step.returncode == 0, step.stderr
    assert "Cache is younger than a day" in step.stdout


def test_last_modified_is_the_upload_time_not_the_read_time(server: Server, tmp_path: Path) -> None:
    subprocess.run(
        ["curl", "-fsS", "-F", "path=golang-cache.tar", "-F", "file=@-", f"{server.url}/upload"],
        input=b"x" * 1000,
        check=True,
        capture_output=True,
    )
    command = (
        f"curl -fsI {server.url}/golang-cache.tar"
        "|sed -n '/Last-Modified/ { s/Last-Modified: //;s/\\r//; p}'"
    )
    first = subprocess.run(["bash", "-c", command], capture_output=True, text=True).stdout
    time.sleep(1.1)
    subprocess.run(
        ["curl", "-fsS", "-o", "/dev/null", f"{server.url}/golang-cache.tar"], check=True
    )
    second = subprocess.run(["bash", "-c", command], capture_output=True, text=True).stdout
    assert first.strip() and first == second
    parsed = datetime.datetime.strptime(first.strip(), "%a, %d %b %Y %X %Z")
    assert abs((datetime.datetime.utcnow() - parsed).total_seconds()) < 60


def test_save_step_says_no_server_when_it_is_down(tmp_path: Path) -> None:
    probe = tmp_path / "motd"
    probe.write_text("probe\n")
    step = run_step(
        SAVE.format(url=f"http://127.0.0.1:{free_port()}", probe=probe, workspace=tmp_path),
        tmp_path,
        tmp_path,
    )
    assert step.returncode == 0
    assert "No cache server found" in step.stdout
