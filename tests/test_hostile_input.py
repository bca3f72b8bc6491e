"""Input that today's server mishandled when probed: each is refused and changes nothing."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from conftest import Server, curl, http_request, launch_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = launch_server(tmp_path_factory, ["--gc-interval", "0"])
    yield srv
    srv.stop(timeout=10)


def put(server: Server, path: str, data: bytes) -> None:
    assert curl("-f", "-T", "-", f"{server.url}/{path}", input=data).returncode == 0


def raw(server: Server, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request)
        sock.settimeout(20)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and data.rstrip().endswith(b"}"):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def names(server: Server) -> int:
    return int(json.loads(http_request("GET", f"{server.url}/-/stats")[1])["objects"])


@pytest.mark.parametrize("days", ["-1", "abc", "1.5", "1e3", "+1", " -0", "9" * 30, "٣"])
def test_a_negative_or_non_numeric_days_is_400_and_deletes_nothing(
    server: Server, days: str
) -> None:
    put(server, "old/a", b"a")
    put(server, "old/b/c", b"c")
    before = names(server)
    status, body = http_request(
        "DELETE", f"{server.url}/delete?path=old&recursive=true&days={quote(days)}"
    )
    assert status == 400, body
    assert "days" in json.loads(body)["message"]
    assert names(server) == before
    assert curl("-f", f"{server.url}/old/a").stdout == b"a"


def test_days_zero_or_absent_keeps_the_old_meaning(server: Server) -> None:
    put(server, "zero/a", b"a")
    status, body = http_request("DELETE", f"{server.url}/delete?path=zero")
    assert status == 202 and "more than 0 days" in body.decode()
    assert http_request("GET", f"{server.url}/zero/a")[0] == 404


def test_content_length_with_transfer_encoding_is_400_and_stores_nothing(server: Server) -> None:
    status, body = raw(
        server,
        b"PUT /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    assert status == 400
    assert "Transfer-Encoding" in json.loads(body)["message"]
    assert http_request("GET", f"{server.url}/smuggled")[0] == 404


@pytest.mark.parametrize(
    "path",
    [
        "/%C0%AE%C0%AE/x",  # overlong "..": not UTF-8, must not become a traversal either
        "/a/%FF",
        "/%ED%A0%80",  # a UTF-16 surrogate
        "/%E2%82",  # truncated
    ],
)
def test_a_path_that_is_not_utf8_is_400(server: Server, path: str) -> None:
    before = names(server)
    status, _ = raw(
        server, f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx".encode()
    )
    assert status == 400
    status, _ = raw(server, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 400
    assert names(server) == before


def test_a_form_or_query_path_that_is_not_utf8_is_400(server: Server) -> None:
    before = names(server)
    status = curl(
        "-o", "/dev/null", "-w", "%{http_code}", "-F", "file=@-", f"{server.url}/upload?path=%C0%AE"
    ).stdout
    assert status == b"400"
    boundary = b"b0undary"
    body = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="path"\r\n\r\n\xc0\xae/x\r\n'
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
        b"data\r\n--" + boundary + b"--\r\n"
    )
    head = (
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary="
        + boundary
        + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    status_code, _ = raw(server, head + body)
    assert status_code == 400
    assert names(server) == before


def test_five_thousand_headers_are_431(server: Server) -> None:
    lines = b"".join(b"X-%d: 1\r\n" % i for i in range(5000))
    status, _ = raw(
        server, b"PUT /many HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n" + lines + b"\r\nx"
    )
    assert status == 431
    assert http_request("GET", f"{server.url}/many")[0] == 404
