"""cachesrv push / pull against a real server, through a counting proxy, checked with the
real curl and tar: what they store restores with plain curl | tar -x, what curl stored
pulls, and only the chunks one side lacks cross the wire."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Server, curl

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from bench.proxy import Proxy  # noqa: E402

DAY = 86400
T0 = 1_700_000_000  # the corpus' "yesterday"


# -- a corpus shaped like a Go build cache -------------------------------------------


def _output(rng: random.Random, size: int) -> bytes:
    """Build-output-like bytes: compress about 2x, do not dedup against each other."""
    alphabet = bytes(rng.sample(range(256), 16))
    return bytes(rng.choices(alphabet, k=size))


def make_v1(root: Path, seed: int = 1) -> None:
    """~200 entries in 16 fan-out dirs: a ~175 B index file and a 2 KB-300 KB output
    each; plus an executable, a symlink, an empty directory, a README."""
    rng = random.Random(seed)
    for i in range(200):
        digest = hashlib.sha256(f"{seed}-{i}".encode()).hexdigest()
        d = root / digest[0]  # 16 fan-out dirs, "0" to "f"
        d.mkdir(parents=True, exist_ok=True)
        index = d / f"{digest}-a"
        index.write_bytes(f"v1 {digest} {rng.getrandbits(64):x}\n".encode().ljust(175, b" "))
        out = d / f"{digest}-d"
        out.write_bytes(_output(rng, rng.randint(2_000, 300_000)))
        for path in (index, out):
            os.utime(path, (T0 + i, T0 + i))
    (root / "README").write_text("This directory holds cached build output.\n")
    tool = root / "tool.sh"
    tool.write_text("#!/bin/sh\necho tool\n")
    tool.chmod(0o755)
    (root / "link").symlink_to("README")
    (root / "empty" / "deeper").mkdir(parents=True)
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_dir() and not path.is_symlink():
            os.utime(path, (T0, T0))


def make_v2(v1: Path, root: Path, seed: int = 2) -> None:
    """v1 "the next day": every mtime moved (Go touches reused entries), 5% of the
    outputs rewritten, 8 new entries."""
    shutil.copytree(v1, root, symlinks=True)
    rng = random.Random(seed)
    outputs = sorted(root.rglob("*-d"))
    for path in rng.sample(outputs, len(outputs) // 20):
        path.write_bytes(_output(rng, path.stat().st_size))
    for i in range(8):
        digest = hashlib.sha256(f"new-{seed}-{i}".encode()).hexdigest()
        out = root / digest[0] / f"{digest}-d"
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(_output(rng, rng.randint(2_000, 100_000)))
    for path in root.rglob("*"):
        if not path.is_symlink():
            os.utime(path, (T0 + DAY, T0 + DAY))


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """What tar -x promises to reproduce: type, mode, whole-second mtime, contents or
    link target, of every entry (the root included)."""
    found: dict[str, tuple[object, ...]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            found[rel] = ("link", os.readlink(path), int(st.st_mtime))
        elif stat.S_ISDIR(st.st_mode):
            found[rel] = ("dir", stat.S_IMODE(st.st_mode), int(st.st_mtime))
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[rel] = ("file", stat.S_IMODE(st.st_mode), int(st.st_mtime), digest)
    return found


def tar_bytes(root: Path) -> bytes:
    return subprocess.run(
        ["tar", "-C", str(root), "-cf", "-", "."], capture_output=True, check=True
    ).stdout


def curl_tar_x(url: str, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    body = curl("-f", url, check=True).stdout
    subprocess.run(["tar", "-x", "-f", "-", "-C", str(dest)], input=body, check=True)


@dataclass
class Corpus:
    v1: Path
    v2: Path
    v2_tar_size: int


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    base = tmp_path_factory.mktemp("corpus")
    make_v1(base / "v1")
    make_v2(base / "v1", base / "v2")
    return Corpus(base / "v1", base / "v2", len(tar_bytes(base / "v2")))


def cachesrv(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cachesrv", *args], capture_output=True, text=True, timeout=300, **kw
    )


@pytest.fixture
def proxied(server: Server) -> Iterator[Proxy]:
    with Proxy(server.port) as proxy:
        yield proxy


# -- tests ---------------------------------------------------------------------------


def test_pushed_tree_restores_with_plain_curl_and_tar(
    server: Server, corpus: Corpus, tmp_path: Path
) -> None:
    result = cachesrv("push", "--server", server.url, "--path", "go.tar", "-C", str(corpus.v1))
    assert result.returncode == 0, result.stderr
    assert "in the tree" in result.stderr and "sent" in result.stderr
    curl_tar_x(f"{server.url}/go.tar", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(corpus.v1)


def test_push_of_v2_after_v1_sends_under_a_tenth_of_its_tar(
    server: Server, proxied: Proxy, corpus: Corpus, tmp_path: Path
) -> None:
    assert (
        cachesrv("push", "--server", server.url, "--key", "go-1", "-C", str(corpus.v1)).returncode
        == 0
    )
    result = cachesrv("push", "--server", proxied.url, "--key", "go-2", "-C", str(corpus.v2))
    assert result.returncode == 0, result.stderr
    assert proxied.up <= 0.10 * corpus.v2_tar_size, (proxied.up, corpus.v2_tar_size)
    curl_tar_x(f"{server.url}/-/cache/go-2", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(corpus.v2)


def test_pull_of_v2_into_v1_fetches_under_a_tenth_and_rewrites_only_changes(
    server: Server, proxied: Proxy, corpus: Corpus, tmp_path: Path
) -> None:
    for name, src in (("v1.tar", corpus.v1), ("v2.tar", corpus.v2)):  # curl uploads
        assert curl("-f", "-T", "-", f"{server.url}/{name}", input=tar_bytes(src)).returncode == 0
    work = tmp_path / "work"
    curl_tar_x(f"{server.url}/v1.tar", work)  # yesterday's restore, the CI way
    state = tmp_path / "state"
    pull = [
        "pull",
        "--server",
        proxied.url,
        "--path",
        "v2.tar",
        "-C",
        str(work),
        "--state",
        str(state),
    ]
    result = cachesrv(*pull)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["exact", "v2.tar"]
    assert proxied.down <= 0.10 * corpus.v2_tar_size, (proxied.down, corpus.v2_tar_size)
    assert tree(work) == tree(corpus.v2)
    proxied.reset()
    again = cachesrv(*pull)
    assert again.returncode == 0 and " 0 files written" in again.stderr
    assert proxied.down < 0.01 * corpus.v2_tar_size
    assert tree(work) == tree(corpus.v2)


def test_curl_uploaded_keyed_cache_pulls_and_a_miss_writes_nothing(
    server: Server, corpus: Corpus, tmp_path: Path
) -> None:
    body = tar_bytes(corpus.v1)
    assert curl("-f", "-T", "-", f"{server.url}/-/cache/go-linux-abc", input=body).returncode == 0
    dest, state = tmp_path / "dest", str(tmp_path / "state")
    base = ["pull", "--server", server.url, "--state", state]
    result = cachesrv(*base, "--key", "go-linux-zzz", "--restore-key", "go-linux-", "-C", str(dest))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["partial", "go-linux-abc"]
    assert tree(dest) == tree(corpus.v1)
    missed = tmp_path / "missed"
    result = cachesrv(*base, "--key", "npm-", "-C", str(missed))
    assert (result.returncode, result.stdout.strip()) == (2, "miss")
    assert not missed.exists()


def test_pull_delete_removes_what_the_cache_does_not_hold(
    server: Server, corpus: Corpus, tmp_path: Path
) -> None:
    assert curl("-f", "-T", "-", f"{server.url}/v1.tar", input=tar_bytes(corpus.v1)).returncode == 0
    dest = tmp_path / "dest"
    (dest / "stray").mkdir(parents=True)
    (dest / "stray" / "file").write_text("x")
    (dest / "other").write_text("y")
    base = ["pull", "--server", server.url, "--path", "v1.tar", "--state", str(tmp_path / "s")]
    assert cachesrv(*base, "-C", str(dest)).returncode == 0
    assert (dest / "other").exists()  # left alone without --delete
    assert cachesrv(*base, "-C", str(dest), "--delete").returncode == 0
    assert tree(dest) == tree(corpus.v1)


def test_push_killed_at_any_point_leaves_the_previous_version_whole(
    server: Server, corpus: Corpus, tmp_path: Path
) -> None:
    v1 = tar_bytes(corpus.v1)
    assert curl("-f", "-T", "-", f"{server.url}/go.tar", input=v1).returncode == 0
    with Proxy(server.port, rate=1_000_000) as slow:  # 8 Mbit/s: a push takes seconds
        for attempt, after in enumerate((1_000, 150_000, 600_000)):
            tree_dir = tmp_path / f"v2-{attempt}"
            shutil.copytree(corpus.v2, tree_dir, symlinks=True)
            (tree_dir / "new.bin").write_bytes(os.urandom(1_000_000))  # new chunks each time
            crossed = slow.when_up(after)
            push = subprocess.Popen(
                [sys.executable, "-m", "cachesrv", "push", "--server", slow.url, "--path", "go.tar"]
                + ["-C", str(tree_dir)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            assert crossed.wait(60), "the push sent too little"
            push.send_signal(signal.SIGKILL)
            push.wait(10)
            assert curl("-f", f"{server.url}/go.tar").stdout == v1
    result = cachesrv("push", "--server", server.url, "--path", "go.tar", "-C", str(corpus.v2))
    assert result.returncode == 0, result.stderr
    curl_tar_x(f"{server.url}/go.tar", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(corpus.v2)
