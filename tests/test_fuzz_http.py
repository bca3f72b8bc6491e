"""Fuzzing across HTTP against one real server: hostile paths, keys, restore-keys,
forms and legacy delete parameters. Never a 5xx, never a file outside the store,
never a change to an object the request did not name. Bounded: a few seconds each.
"""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import Server, launch_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HTTP = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# "zz" never appears in a fuzzed path: the canary is named by no request
CANARY = "zzcanary/keep.bin"
CANARY_BYTES = os.urandom(5000)

TRICKS = st.sampled_from(
    [
        "..", ".", "/", "//", "%2e%2e", "%2E.", "%2f", "%5c", "%00", "%c0%ae", "%c0%af",
        "%e0%80%ae", "%ff", "%", "%2", "..%2f", "%252e%252e", "\\", "\u2025", "é", "%e9",
        "%ef%bf%bd", "-", "-/", "upload", "a", "b", "?", "#", ";", "+", " ",
    ]
)  # fmt: skip
SEGMENTS = st.one_of(TRICKS, st.text(alphabet="abcdef.-_~é", max_size=5))
PATHS = st.lists(SEGMENTS, min_size=1, max_size=10).map("".join)


def wire(path: str) -> str:
    """Percent-encode what http.client would refuse, keep the fuzz's own escapes."""
    out = []
    for ch in path:
        if ch in "?#" or ord(ch) <= 0x20 or ord(ch) >= 0x7F:
            out.append("".join(f"%{b:02X}" for b in ch.encode()))
        else:
            out.append(ch)
    return "".join(out)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = launch_server(tmp_path_factory, ["--gc-interval", "0", "--hot-cache-bytes", "0"])
    assert request(server, "PUT", "/" + CANARY, CANARY_BYTES)[0] == 201
    yield server
    server.stop(timeout=10)


def request(
    server: Server,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, target, body, headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def outside_files(server: Server) -> set[str]:
    base = server.data.parent
    return {str(p.relative_to(base)) for p in base.rglob("*") if server.data not in p.parents}


def assert_untouched(server: Server, before: set[str]) -> None:
    status, body = request(server, "GET", "/" + CANARY)
    assert (status, body) == (200, CANARY_BYTES)
    after = outside_files(server) - {"server.log"}
    assert after == before - {"server.log"}, "a file appeared outside the store"


def _stored_name(status: int, body: bytes) -> str | None:
    if status == 201 and body.startswith(b"{"):
        return str(json.loads(body)["path"])
    return None


@HTTP
@given(PATHS, st.binary(max_size=200))
def test_hostile_put_and_get_paths(target: Server, path: str, data: bytes) -> None:
    before = outside_files(target)
    status, body = request(target, "PUT", "/" + wire(path), data)
    assert status < 500, (path, body)
    stored = _stored_name(status, body)
    if stored is not None:
        assert ".." not in stored.split("/") and not stored.startswith("-/")
        assert request(target, "GET", "/" + quote(stored)) == (200, data)
    for method in ("GET", "HEAD"):
        status, body = request(target, method, "/" + wire(path))
        assert status < 500, (method, path, body)
    assert_untouched(target, before)


@HTTP
@given(PATHS, st.lists(PATHS, max_size=3), st.sampled_from(["GET", "HEAD", "PUT", "DELETE"]))
def test_hostile_cache_keys_and_restore_keys(
    target: Server, key: str, restore: list[str], method: str
) -> None:
    before = outside_files(target)
    query = "&".join("restore-keys=" + wire(k).replace("&", "%26") for k in restore)
    url = f"/-/cache/{wire(key)}" + (f"?{query}" if query else "")
    status, body = request(target, method, url, b"entry" if method == "PUT" else None)
    assert status < 500, (method, key, restore, body)
    assert_untouched(target, before)


@HTTP
@given(PATHS, st.sampled_from(["file", "path", "targz"]), st.binary(max_size=100), st.booleans())
def test_hostile_form_uploads(
    target: Server, path: str, order: str, data: bytes, in_query: bool
) -> None:
    before = outside_files(target)
    boundary = "fuzzb0undary"
    parts = [("path", path.encode("utf-8", "surrogatepass")), ("file", data)]
    if order == "file":
        parts.reverse()
    if order == "targz":
        parts.append(("targz", b"1"))
    if in_query:
        parts = [p for p in parts if p[0] != "path"]
    body = b""
    for name, value in parts:
        filename = '; filename="f"' if name == "file" else ""
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n\r\n'
            ).encode()
            + value
            + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()
    url = "/upload" + (f"?path={wire(path).replace('&', '%26')}" if in_query else "")
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, answer = request(target, "POST", url, body, headers)
    assert status < 500, (path, answer)
    assert_untouched(target, before)


@HTTP
@given(
    PATHS,
    # never 0 days: that would rightly delete every child, the canary's directory too
    st.one_of(st.text(max_size=6), st.integers(-3, 10**12).map(str), st.just("")).filter(
        lambda d: not d.strip() or set(d.strip()) != {"0"}
    ),
    st.one_of(st.sampled_from(["true", "false", "1", "0", "T", "", "yes"]), st.text(max_size=4)),
    st.sampled_from(["upload", "delete"]),
)
def test_hostile_legacy_delete_parameters(
    target: Server, path: str, days: str, recursive: str, route: str
) -> None:
    """Deletes name their target: whatever the parameters, the canary (a name no fuzzed
    path reaches) survives, and a refused delete changes nothing."""
    before = outside_files(target)
    objects = json.loads(request(target, "GET", "/-/stats")[1])["objects"]
    # days old, so only what a request names would go: everything is younger than a day
    query = f"path={quote(path, safe='%')}&days={quote(days or '1')}"
    query += f"&recursive={quote(recursive)}"
    status, body = request(target, "DELETE", f"/{route}?{query}")
    assert status < 500, (path, days, recursive, body)
    if status >= 400:
        assert json.loads(request(target, "GET", "/-/stats")[1])["objects"] == objects
    assert_untouched(target, before)


def test_the_fuzz_targets_a_real_store(target: Server) -> None:
    assert Path(target.data, "catalog.sqlite").exists()
