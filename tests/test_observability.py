"""Access log lines, request metrics and the /-/stats fields behind the status page,
seen from outside: a real server, real requests, its log file and its answers."""

from __future__ import annotations

import base64
import json
import os
import random
import re
import time
import urllib.request
from pathlib import Path

from conftest import Server, StartServer, curl, http_request

from cachesrv import status
from cachesrv.config import Config
from cachesrv.repository import Repository


def _access_lines(server: Server) -> list[dict[str, object]]:
    lines = []
    for line in server.log_text().splitlines():
        record = json.loads(line)  # every line is JSON with --log-format json
        if record["logger"] == "cachesrv.access" and record["path"] != "/-/healthz":
            lines.append(record)
    return lines


def _wait_for(predicate, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_json_access_log_has_one_line_per_request_with_its_id_and_no_secrets(
    start_server: StartServer,
) -> None:
    server = start_server(
        env={"CACHESRV_LOG_FORMAT": "json", "CACHESRV_UPLOAD_CREDENTIALS": "ci:hunter2-secret"}
    )
    body = os.urandom(300_000)
    put = curl(
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-u",
        "ci:hunter2-secret",
        "-T",
        "-",
        f"{server.url}/builds/a.bin",
        input=body,
    )
    request_id = re.search(rb"Cachesrv-Request-Id: ([0-9a-f]+)", put.stdout)
    assert request_id is not None
    curl("-u", "ci:hunter2-secret", "-T", "-", f"{server.url}/builds/b.bin", input=body)
    curl("-o", "/dev/null", f"{server.url}/builds/a.bin?token=tok-abc123&x=1")
    curl("-o", "/dev/null", f"{server.url}/-/")
    lines = _wait_for(lambda: len(_access_lines(server)) >= 4 and _access_lines(server))
    first, second, get, page = lines[:4]
    assert first["request_id"] == request_id.group(1).decode()
    assert first["method"] == "PUT" and first["path"] == "/builds/a.bin"
    assert first["status"] == 201 and first["bytes_in"] == len(body)
    assert first["dedup_fraction"] == 0.0 and second["dedup_fraction"] == 1.0
    assert isinstance(first["duration_s"], float) and int(str(first["bytes_out"])) > 0
    assert get["status"] == 200 and get["bytes_out"] == len(body)
    assert get["query"] == "token=REDACTED&x=1"
    # the status page once, with its status (hypercorn's start-of-request line is gone)
    assert [(r["path"], r["status"]) for r in lines if r["path"] == "/-/"] == [("/-/", 200)]
    assert len({r["request_id"] for r in lines}) == len(lines)
    log = server.log_text()
    secret = base64.b64encode(b"ci:hunter2-secret").decode()
    assert "hunter2" not in log and secret not in log and "tok-abc123" not in log


def test_text_access_log_is_one_line_per_request(server: Server) -> None:
    curl("-o", "/dev/null", f"{server.url}/-/")
    line = _wait_for(
        lambda: [
            ln
            for ln in server.log_text().splitlines()
            if "cachesrv.access" in ln and "healthz" not in ln
        ]
    )
    assert len(line) == 1 and '"GET /-/" 200' in line[0] and " id=" in line[0]


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} {labels} in metrics")


def test_metrics_count_requests_by_route_template_and_restores_by_match(server: Server) -> None:
    body = os.urandom(200_000)
    for name in ("a", "b", "c"):
        assert http_request("PUT", f"{server.url}/p/{name}.tar", body)[0] == 201
    assert http_request("PUT", f"{server.url}/-/cache/go-linux-1", body)[0] == 201
    for path in ("/p/a.tar", "/p/b.tar", "/p/nothing"):
        http_request("GET", server.url + path)
    http_request("GET", f"{server.url}/-/cache/go-linux-1")
    http_request("GET", f"{server.url}/-/cache/go-darwin?restore-keys=go-")
    http_request("GET", f"{server.url}/-/cache/npm-1")
    text = http_request("GET", f"{server.url}/-/metrics")[1].decode()
    assert (
        _metric(text, "cachesrv_http_requests_total", route="/{path}", method="PUT", status="201")
        == 3
    )
    assert (
        _metric(text, "cachesrv_http_requests_total", route="/{path}", method="GET", status="404")
        == 1
    )
    assert "/p/a.tar" not in text  # never a raw path as a label
    assert _metric(text, "cachesrv_keyed_restores_total", match="exact") == 1
    assert _metric(text, "cachesrv_keyed_restores_total", match="partial") == 1
    assert _metric(text, "cachesrv_keyed_restores_total", match="miss") == 1
    assert _metric(text, "cachesrv_upload_duration_seconds_count", route="/{path}") == 3
    assert _metric(text, "cachesrv_upload_size_bytes_sum", route="/{path}") == 3 * len(body)
    assert _metric(text, "cachesrv_restore_size_bytes_sum", route="/{path}") == 2 * len(body)
    assert _metric(text, "cachesrv_restore_duration_seconds_count", route="/-/cache/{key}") == 2
    new = _metric(text, "cachesrv_upload_chunks_total", result="new")
    dedup = _metric(text, "cachesrv_upload_chunks_total", result="deduplicated")
    assert new >= 1 and dedup >= 3 * new  # the same body four times (ingest workers' counts)
    for name in (
        "cachesrv_gc_runs_total",
        "cachesrv_evicted_names_total",
        "cachesrv_verification_failures_total",
        "cachesrv_gc_duration_seconds_count",
    ):
        assert _metric(text, name) == 0
    assert _metric(text, "cachesrv_ingest_worker_restarts_total", reason="broken") == 0


def test_stats_has_what_the_status_page_shows(start_server: StartServer) -> None:
    server = start_server(
        args=["--gc-interval", "1s", "--history-interval", "1s", "--max-size", "100M"]
    )
    # Seeded, not os.urandom: where CDC cuts near the end of ``shared`` decides how much
    # of it the two uploads share, and a random draw could cut 256 KiB before it.
    rng = random.Random(20261201)
    unique, shared = rng.randbytes(400_000), rng.randbytes(400_000)
    http_request("PUT", f"{server.url}/big.tar", shared + unique)
    http_request("PUT", f"{server.url}/-/cache/npm-1", shared)
    http_request("GET", f"{server.url}/big.tar")
    http_request("GET", f"{server.url}/big.tar")
    http_request("GET", f"{server.url}/missing")

    def marked() -> dict[str, object] | None:
        with urllib.request.urlopen(f"{server.url}/-/stats") as response:
            stats: dict[str, object] = json.load(response)
        caches = stats["caches"]
        assert isinstance(caches, dict)
        ready = caches["marked_at"] and len(stats["history"]) >= 2  # type: ignore[arg-type]
        return stats if ready else None

    stats = _wait_for(marked)
    rows = {row["name"]: row for row in stats["caches"]["names"]}
    workers = stats["workers"]  # the local store's defaults: one of each
    assert (workers["ingest"]["size"], workers["restore"]["size"]) == (1, 1)
    assert [r["name"] for r in stats["caches"]["names"]] == ["big.tar", "npm-1"]  # by size
    big = rows["big.tar"]
    assert big["hits"] == 2 and big["last_write"] <= big["last_access"]
    assert big["unique_bytes"] > 300_000 and big["shared_bytes"] > 300_000
    npm = rows["npm-1"]  # its bytes are big.tar's first half (bar a CDC boundary's chunk)
    assert npm["shared_bytes"] > 300_000 and npm["unique_bytes"] < 100_000 and npm["hits"] == 0
    assert [u["name"] for u in stats["recent_uploads"]] == ["npm-1", "big.tar"]
    assert stats["recent_uploads"][0]["dedup_fraction"] > 0.5
    (restore, other) = stats["recent_restores"]
    assert restore["name"] == "big.tar" and restore["bytes"] == 800_000 and restore["mb_per_s"] > 0
    assert stats["since_start"]["hits"] == 2 and stats["since_start"]["hit_rate"] == 0.6667
    assert stats["lifecycle"]["gc_runs"] >= 1 and stats["lifecycle"]["max_size"] == 100 << 20
    point = stats["history"][-1]
    assert point["stored_bytes"] == stats["stored_bytes"] or point["stored_bytes"] > 0
    assert sum(p["hits"] for p in stats["history"]) <= 2


def test_history_sums_the_replicas_counts_per_interval_and_keeps_the_newest_level(
    tmp_path: Path,
) -> None:
    repo = Repository.open(Config(data=tmp_path, history_interval=60.0))
    start = 1_800_000_020.0 // 60 * 60  # on a minute

    def record(minutes: range) -> None:
        for minute in minutes:  # two replicas 20 s apart in phase
            for replica, offset, hits in (("a", 10.0, 1), ("b", 30.0, 2)):
                at = start + minute * 60 + offset
                values: dict[str, float] = {"logical_bytes": minute, "hits": hits, "uploads": 0}
                repo.catalog.record_sample(replica, at, values, since=at - 86400)

    try:
        record(range(10))  # a short history: a point per interval, both replicas in it
        history = status.history(repo, points=120, now=start + 600)
        assert [p["hits"] for p in history] == [3] * 10
        assert [p["logical_bytes"] for p in history] == list(range(10))
        record(range(10, 600))  # a long one: at most 120 points, still every count once
        history = status.history(repo, points=120, now=start + 600 * 60)
        assert len(history) <= 120
        assert sum(p["hits"] for p in history) == 600 * 3
        assert history[-1]["logical_bytes"] == 599
    finally:
        repo.close()
