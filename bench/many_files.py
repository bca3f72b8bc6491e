"""Memory with a tree of many tiny files: peak RSS of cachesrv's whole process tree while
a tar of ``--files`` small files (default 100,800, a large node_modules) is uploaded with
curl and restored twice, each restore checked byte-identical.

    python -m bench.many_files                 # 100,800 files, about 240 MB of tar
    python -m bench.many_files --files 20000   # a quicker look
    python -m bench.many_files --store s3      # one replica on SeaweedFS (loopback)

The tree is generated (seeded: the same bytes every time): directories of 100 files of
50 B to 8 KB of package-like text. Prints the peak per phase, and what each process of
the tree holds after it, against issue 10's target (<= 150 MB). Not a ratio: memory is
absolute. With ``--store s3`` the server is a replica on a fresh prefix of SeaweedFS
(``bench.seaweedfs``, not counted in the tree), with ``--data`` only its hot cache.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import psutil

from bench import seaweedfs
from bench.procs import MB, REPO_ROOT, ServerProcess, free_port, fresh_dir, log, python_env
from bench.run import sha256_file as sha256

TARGET_MB = 150
WORDS = ("module", "export", "function", "require", "return", "const", "value", "index",
         "default", "package", "version", "license", "null", "true", "false")  # fmt: skip


def make_tar(path: Path, files: int, seed: int = 7) -> int:
    """A tar of ``files`` seeded small files, 100 a directory; returns its size."""
    rng = random.Random(seed)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for n in range(files):
            words = rng.choices(WORDS, k=rng.randint(8, 1200))
            body = (" ".join(words) + f"\n// {n}\n").encode()
            info = tarfile.TarInfo(f"node_modules/pkg{n // 100}/file{n % 100}.js")
            info.size, info.mtime, info.mode = len(body), 1_700_000_000 + n, 0o644
            tar.addfile(info, io.BytesIO(body))
    return path.stat().st_size


def _per_process(server: ServerProcess) -> dict[str, int]:
    """RSS of each process of the tree now (MB), by what it runs."""
    assert server.proc is not None
    root = psutil.Process(server.proc.pid)
    out: dict[str, int] = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            words = proc.cmdline()
            name = next((w for w in words if w.startswith("cachesrv.")), "server")
            out[name] = out.get(name, 0) + proc.memory_info().rss // MB
        except psutil.Error:
            pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_800)
    parser.add_argument("--store", choices=("local", "s3"), default="local")
    parser.add_argument("--json", type=Path, help="write the result document here")
    args = parser.parse_args()
    with fresh_dir(None, "cachesrv-many-") as work, contextlib.ExitStack() as stack:
        env = python_env()
        store: list[str] = []
        if args.store == "s3":
            weed = seaweedfs.start_seaweedfs(work / "seaweedfs")
            stack.callback(weed.stop)
            env.update(weed.env)
            store = ["--store", weed.new_store_url()]
        tar = work / "tree.tar"
        log(f"generating {args.files} files")
        size = make_tar(tar, args.files)
        expected = sha256(tar)
        port = free_port()
        argv = [sys.executable, "-m", "cachesrv", "serve", "--host", "127.0.0.1",
                "--port", str(port), "--data", str(work / "data"), *store]  # fmt: skip
        url = f"http://127.0.0.1:{port}/tree/node_modules.tar"
        result: dict[str, object] = {"files": args.files, "tar_bytes": size, "store": args.store}
        with ServerProcess("cachesrv", argv, port, work / "server.log", env=env) as srv:
            assert srv.sampler is not None
            srv.sampler.take_peak()
            phases: list[tuple[str, list[str]]] = [
                ("upload", ["curl", "-fsS", "-o", "/dev/null", "-T", str(tar), url]),
                ("restore 1", ["curl", "-fsS", "-o", str(work / "out.tar"), url]),
                ("restore 2", ["curl", "-fsS", "-o", str(work / "out.tar"), url]),
            ]
            for phase, command in phases:
                started = time.monotonic()
                subprocess.run(command, check=True, cwd=REPO_ROOT)
                seconds = time.monotonic() - started
                peak = srv.sampler.take_peak() / MB
                same = None if phase == "upload" else sha256(work / "out.tar") == expected
                after = _per_process(srv)
                result[phase] = {
                    "seconds": round(seconds, 2),
                    "peak_rss_MB": round(peak, 1),
                    "byte_identical": same,
                    "processes_after_MB": after,
                }
                verdict = "ok" if peak <= TARGET_MB else "MISS"
                check = "" if same is None else f", byte-identical: {same}"
                print(f"{phase:10} {size / MB:7.1f} MB tar in {seconds:6.1f} s: peak RSS "
                      f"{peak:6.1f} MB (target <= {TARGET_MB}: {verdict}){check}; "
                      f"after: {after}")  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
