"""Keyed caches: GitHub actions/cache restore semantics, immutability, replace on max-age."""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import pytest
from conftest import Server, StartServer, curl, status


def save(server: Server, key: str, data: bytes, query: str = "") -> int:
    result = curl(
        "--path-as-is",
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        "-T",
        "-",
        f"{server.url}/-/cache/{key}{query}",
        input=data,
    )
    return int(result.stdout)


def fetch(server: Server, key: str, query: str = "") -> tuple[int, dict[str, str], bytes]:
    result = curl("-D", "-", f"{server.url}/-/cache/{key}{query}")
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def test_exact_hit_says_exact(server: Server) -> None:
    assert save(server, "go-linux-abc", b"tar v1") == 201
    status, headers, body = fetch(server, "go-linux-abc")
    assert status == 200 and body == b"tar v1"
    assert headers["Cachesrv-Key"] == "go-linux-abc"
    assert headers["Cachesrv-Match"] == "exact"
    assert int(headers["Cachesrv-Age"]) >= 0
    assert "Last-Modified" in headers and "ETag" in headers


def test_key_as_prefix_then_restore_keys_in_order_newest_first(server: Server) -> None:
    save(server, "go-linux-old", b"old")
    time.sleep(0.05)
    save(server, "go-linux-new", b"new")
    save(server, "npm-linux-1", b"npm")
    status, headers, body = fetch(server, "go-linux-", "")
    assert (status, body, headers["Cachesrv-Match"]) == (200, b"new", "partial")
    status, headers, body = fetch(server, "go-linux-zzz", "?restore-keys=npm-,go-linux-")
    assert body == b"npm" and headers["Cachesrv-Key"] == "npm-linux-1"
    status, headers, body = fetch(server, "go-linux-zzz", "?restore-keys=nothing-&restore-keys=go-")
    assert body == b"new" and headers["Cachesrv-Match"] == "partial"
    assert fetch(server, "go-linux-zzz", "?restore-keys=go-&exact=true")[0] == 404


def test_miss_is_404_json_and_head_404(server: Server) -> None:
    status, _, body = fetch(server, "none")
    assert status == 404 and "message" in json.loads(body)
    assert curl("-fsI", f"{server.url}/-/cache/none").returncode == 22


def test_entries_are_immutable_unless_replaced(server: Server) -> None:
    assert save(server, "k", b"first") == 201
    assert save(server, "k", b"second") == 409
    assert fetch(server, "k")[2] == b"first"
    assert save(server, "k", b"third", "?max-age=3600") == 409  # younger than an hour: kept
    assert save(server, "k", b"fourth", "?max-age=0") == 201  # older than 0 s: replaced
    assert fetch(server, "k")[2] == b"fourth"
    assert save(server, "k", b"fifth", "?replace=true") == 201
    assert fetch(server, "k")[2] == b"fifth"


def test_keys_do_not_collide_with_paths(server: Server) -> None:
    save(server, "shared-name", b"entry")
    curl("-f", "-T", "-", f"{server.url}/shared-name", input=b"object")
    assert fetch(server, "shared-name")[2] == b"entry"
    assert curl("-f", f"{server.url}/shared-name").stdout == b"object"


@pytest.mark.parametrize("key", ["a..b/../x", "bad key", "x" * 513, "semi;colon"])
def test_bad_keys_are_400(server: Server, key: str) -> None:

    assert save(server, quote(key, safe="/"), b"x") == 400


def test_delete_entry(server: Server) -> None:
    save(server, "gone", b"x")
    result = curl(
        "-w", "%{http_code}", "-o", "/dev/null", "-X", "DELETE", f"{server.url}/-/cache/gone"
    )
    assert result.stdout == b"202"
    assert fetch(server, "gone")[0] == 404


def test_keyed_writes_need_credentials(start_server: StartServer) -> None:
    server = start_server(env={"UPLOADER_UPLOAD_CREDENTIALS": "u:p"})
    assert save(server, "k", b"x") == 401
    assert (
        status(
            "-u",
            "u:p",
            "-T",
            "-",
            f"{server.url}/-/cache/k",
            input=b"x",
        )
        == 201
    )
    assert fetch(server, "k")[2] == b"x"
