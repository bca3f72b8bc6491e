"""cachesrv push / pull against tar + curl, through one rate-limited link (bench/proxy.py).

The CI save and restore steps of a cache the day after (v2, with v1 stored and v1's
restore in the workspace), each timed end to end through a proxy at ``--mbit``
(100 Mbit/s by default), with the bytes the proxy saw:

- save: ``tar -C v2 -cf - . | curl -T - URL`` against ``cachesrv push -C v2``;
- restore: ``curl URL | tar -x`` into v1's tree against ``cachesrv pull -C v1-tree``.

Printed as ratios push/curl and pull/curl (the issue's target: push ≤ 0.2× of curl)::

    python -m bench.push --corpus go            # bench/.corpus, built once (minutes)
    python -m bench.push --corpus synthetic --size-mb 32
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import corpus as corpus_mod
from bench.procs import ServerProcess, free_port
from bench.proxy import Proxy

CACHESRV = [sys.executable, "-m", "cachesrv"]


def _timed(command: str | list[str], **kw: object) -> float:
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    return time.monotonic() - started


def run(c: corpus_mod.Corpus, mbit: float, work: Path) -> dict[str, object]:
    trees = {}
    for name, tar in (("v1", c.v1), ("v2", c.v2)):
        trees[name] = work / name
        trees[name].mkdir()
        subprocess.run(["tar", "-x", "-f", str(tar), "-C", str(trees[name])], check=True)
    port = free_port()
    argv = [
        *CACHESRV,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data",
        str(work / "data"),
    ]
    result: dict[str, object] = {"corpus": c.kind, "v2_tar_bytes": c.v2_bytes, "mbit": mbit}
    with ServerProcess("cachesrv", argv, port, work / "server.log"):
        direct = f"http://127.0.0.1:{port}"
        # yesterday's cache, stored both ways (the server dedups them into one)
        subprocess.run(
            [*CACHESRV, "push", "--server", direct, "--path", "push.tar", "-C", str(trees["v1"])],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["curl", "-sf", "-o", "/dev/null", "-T", str(c.v1), f"{direct}/curl.tar"], check=True
        )
        with Proxy(port, rate=mbit * 1e6 / 8) as proxy:
            # push first: the curl save then finds v2's chunks stored (a warm server
            # ingests faster), which can only flatter curl
            seconds = _timed(
                [
                    *CACHESRV,
                    "push",
                    "--server",
                    proxy.url,
                    "--path",
                    "push.tar",
                    "-C",
                    str(trees["v2"]),
                ],
                stderr=subprocess.DEVNULL,
            )
            result["save_push"] = {"seconds": round(seconds, 2), "wire_bytes": proxy.up}
            proxy.reset()
            seconds = _timed(
                f"tar -C {trees['v2']} -cf - . | curl -sf -T - {proxy.url}/curl.tar", shell=True
            )
            result["save_curl"] = {"seconds": round(seconds, 2), "wire_bytes": proxy.up}
            restore_curl, restore_pull = work / "restore-curl", work / "restore-pull"
            for dest in (restore_curl, restore_pull):
                shutil.copytree(trees["v1"], dest, symlinks=True)
            proxy.reset()
            seconds = _timed(
                f"curl -sf {proxy.url}/curl.tar | tar -x -C {restore_curl}", shell=True
            )
            result["restore_curl"] = {"seconds": round(seconds, 2), "wire_bytes": proxy.down}
            proxy.reset()
            seconds = _timed(
                [
                    *CACHESRV,
                    "pull",
                    "--server",
                    proxy.url,
                    "--path",
                    "push.tar",
                    "-C",
                    str(restore_pull),
                    "--state",
                    str(work / "state"),
                ],
                stderr=subprocess.DEVNULL,
            )
            result["restore_pull"] = {"seconds": round(seconds, 2), "wire_bytes": proxy.down}
    for step, ours, theirs in (
        ("save", "save_push", "save_curl"),
        ("restore", "restore_pull", "restore_curl"),
    ):
        a, b = result[ours], result[theirs]
        assert isinstance(a, dict) and isinstance(b, dict)
        result[f"{step}_time_ratio"] = round(a["seconds"] / b["seconds"], 3)
        result[f"{step}_wire_ratio"] = round(a["wire_bytes"] / b["wire_bytes"], 3)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="push/pull vs tar+curl through a slow link")
    parser.add_argument("--corpus", choices=corpus_mod.KINDS, default="synthetic")
    parser.add_argument("--size-mb", type=float, default=32, help="synthetic v1 size")
    parser.add_argument("--mbit", type=float, default=100)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    c = corpus_mod.build(args.corpus, args.size_mb)
    with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp:
        result = run(c, args.mbit, Path(tmp))
    for step in ("save", "restore"):
        print(
            f"{step}: cachesrv {result[step + '_time_ratio']}x the time of curl+tar, "
            f"{result[step + '_wire_ratio']}x the bytes on the wire"
        )
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
