"""The benchmark harness must not rot: run it once, quick, against the real cachesrv server.

``python -m bench.run --quick --size-mb 4 --runs 1`` builds a tiny synthetic corpus, runs
the ceiling app, cachesrv and the sendfile baseline as subprocesses, drives them with curl,
checks that GET returns the uploaded bytes (plain and ``--compressed``), and writes its
JSON. Every figure the harness defines must be in that JSON with a positive value, unless
the JSON lists it in ``figures_skipped`` with a reason, and only figures that need the
peer (go-simple-uploader: --quick never builds Go), the load benchmark (not part of
--quick), an object store (``--store s3``) or a corpus of small files (``--small-files``:
npm or Debian packages) may be skipped. ``--quick --store s3`` runs
the same with cachesrv on SeaweedFS too, and then the object store's figures must all be
there. The load benchmark gets a run of its own, tiny. Targets are not asserted: a 4 MiB
corpus measures latency, not throughput.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent


def _bench_module(name: str) -> ModuleType:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module(name)


def _run_bench(
    tmp_path: Path, module: str, args: list[str], timeout: float
) -> tuple[subprocess.CompletedProcess[str], dict]:
    """``python -m module args --json ... --data-root ... --log-dir ...``: its output and
    its JSON; on failure the assertion shows the tail of every server log."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            module,
            *args,
            "--json",
            str(out),
            "--data-root",
            str(tmp_path),
            "--log-dir",
            str(tmp_path / "logs"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    logs = "\n".join(
        p.read_text(errors="replace")[-3000:] for p in sorted((tmp_path / "logs").glob("*.log"))
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{logs}"
    return proc, json.loads(out.read_text())


def _quick_run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    for tool in ("curl", "zstd"):
        assert shutil.which(tool), f"the benchmark needs the {tool} CLI on PATH"
    args = ["--quick", "--size-mb", "4", "--runs", "1", *extra]
    return _run_bench(tmp_path, "bench.run", args, timeout=170)


@pytest.mark.timeout(180)
def test_quick_benchmark_produces_every_figure(tmp_path: Path) -> None:
    run = _bench_module("bench.run")
    proc, doc = _quick_run(tmp_path)
    figures = doc["figures"]
    skipped = {s["figure"]: s for s in doc["figures_skipped"]}
    for f in run.FIGURES:
        if f.name in skipped:
            assert f.needs in ("peer", "load", "s3", "small_files"), (
                f"{f.name} was skipped ({skipped[f.name]['reason']}) but --quick must measure it"
            )
            assert skipped[f.name]["reason"], f"{f.name} skipped without a reason"
            assert f.name not in figures
            continue
        assert f.name in figures, f"figure {f.name} missing from the JSON and not skipped"
        value = figures[f.name]["value"]
        assert isinstance(value, int | float), f"{f.name} = {value!r}"
        assert value >= 0 if f.may_be_zero else value > 0, f"{f.name} = {value!r}"
        assert len(figures[f.name]["runs"]) >= 1
    # --quick never builds Go and runs no load: say so, for each such figure
    assert any(s["needs"] == "peer" and "--quick" in s["reason"] for s in skipped.values())
    assert any(s["needs"] == "load" for s in skipped.values())
    assert "peer_binary" not in doc["notes"]
    assert doc["meta"]["corpus"]["kind"] == "synthetic"
    assert doc["notes"]["encoding_compressed"] == "zstd"  # the sendfile baseline's body
    assert "GET v2, first read" in proc.stdout  # the table was printed
    assert "not measured" in proc.stdout  # ... and says what it skipped
    assert any(s["needs"] == "s3" and "--store s3" in s["reason"] for s in skipped.values())
    assert any(
        s["needs"] == "small_files" and "--small-files" in s["reason"] for s in skipped.values()
    )
    assert "cachesrv on SeaweedFS" not in proc.stdout


@pytest.mark.timeout(180)
def test_quick_benchmark_on_seaweedfs_prints_beside_the_local_store(tmp_path: Path) -> None:
    run = _bench_module("bench.run")
    proc, doc = _quick_run(tmp_path, "--store", "s3")
    figures = doc["figures"]
    s3 = [f for f in run.FIGURES if f.needs == "s3"]
    assert {f.name for f in s3} >= {
        "s3_cold_put_MBps",
        "s3_restore_first_MBps",
        "s3_stored_after_v2_MB",
        "s3_peak_rss_MB",
        "seaweedfs_peak_rss_MB",
    }
    for f in s3:  # every object-store figure measured, none skipped
        assert f.name in figures, f"{f.name} missing: {doc['figures_skipped']}"
        assert figures[f.name]["value"] > 0, f"{f.name} = {figures[f.name]['value']!r}"
    for f in run.FIGURES:  # ... and the local store's are all still there
        if f.needs is None:
            assert f.name in figures, f.name
    assert doc["notes"]["s3_encoding_compressed"] == "zstd"  # verified byte-exact on S3
    assert doc["notes"]["s3_bucket_bytes_after_v2"][0] > 0
    assert doc["meta"]["stores"] == ["local", "s3"]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("figure"))
    assert header.index("cachesrv (ratio)") < header.index("cachesrv on SeaweedFS (ratio)")
    assert "peak RSS: SeaweedFS itself (not cachesrv)" in proc.stdout


@pytest.mark.timeout(120)
def test_tiny_load_benchmark(tmp_path: Path) -> None:
    load = _bench_module("bench.load")
    args = ["--clients", "3", "--duration", "2", "--weights", "get=1,head=1,upload=1,keyed=1"]
    args += ["--targets", "ceiling,cachesrv"]
    proc, doc = _run_bench(tmp_path, "bench.load", args, timeout=110)
    for target in ("ceiling", "cachesrv"):
        res = doc["targets"][target]
        for kind in ("get", "head", "upload", "cache_put", "cache_restore"):
            k = res["kinds"][kind]
            assert k["completed"] > 0, (target, kind, k)
            assert k["errors"] == 0, (target, kind, k)
            assert k["p99_ms"] >= k["p50_ms"] > 0
        assert res["rss_peak_MB"] > 0 and res["rss_last_minute_mean_MB"] > 0
        assert res["clients_still_running"] == 0
    values = load.figure_values(doc)
    assert values["load_requests"] > 0 and values["load_errors"] == 0
    assert "cachesrv" in proc.stdout and "p99" in proc.stdout
