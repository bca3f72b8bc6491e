"""The benchmark harness must not rot: run it once, quick, against the real cachesrv server.

``python -m bench.run --quick --size-mb 4 --runs 1`` builds a tiny synthetic corpus, runs
the baseline app and cachesrv as subprocesses, drives them with curl, checks that GET
returns the uploaded bytes (plain and ``--compressed``), and writes its JSON. Every figure
the harness defines must be in that JSON with a positive value. Targets are not asserted:
a 4 MiB corpus measures latency, not throughput.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _figure_names() -> list[str]:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    run = importlib.import_module("bench.run")
    return [f.name for f in run.FIGURES]


@pytest.mark.timeout(180)
def test_quick_benchmark_produces_every_figure(tmp_path: Path) -> None:
    for tool in ("curl", "zstd"):
        assert shutil.which(tool), f"the benchmark needs the {tool} CLI on PATH"
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--size-mb", "4", "--runs", "1",
         "--json", str(out), "--data-root", str(tmp_path), "--log-dir", str(tmp_path / "logs")],
        cwd=REPO, capture_output=True, text=True, timeout=170,
    )
    logs = "\n".join(p.read_text(errors="replace")[-3000:]
                     for p in sorted((tmp_path / "logs").glob("*.log")))
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{logs}"
    doc = json.loads(out.read_text())
    figures = doc["figures"]
    for name in _figure_names():
        assert name in figures, f"figure {name} missing from the JSON"
        value = figures[name]["value"]
        assert isinstance(value, int | float) and value > 0, f"{name} = {value!r}"
        assert len(figures[name]["runs"]) >= 1
    assert doc["meta"]["corpus"]["kind"] == "synthetic"
    assert "ceiling_put_MBps" in proc.stdout  # the table was printed
