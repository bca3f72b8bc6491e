"""Limits with back-pressure: upload size, uploads at once, a stalled body, header count.

Raw sockets where the point is what the server does while a client is still
sending (or not sending); every refusal must leave the store as it was.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator

import pytest
from conftest import Server, StartServer, curl, http_request, launch_server

LIMIT = 1 << 20  # --max-upload-size 1M
TIMEOUT = 1.5  # --body-timeout


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = launch_server(
        tmp_path_factory,
        ["--max-upload-size", "1M", "--body-timeout", str(TIMEOUT), "--gc-interval", "0"],
    )
    yield server
    server.stop(timeout=10)


def objects(server: Server) -> int:
    return int(json.loads(http_request("GET", f"{server.url}/-/stats")[1])["objects"])


def response_of(sock: socket.socket, timeout: float = 20) -> bytes:
    """Everything the server sends until it closes or stops for ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and b'"}' in data:
                break
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def status_of(response: bytes) -> int:
    final = response.rsplit(b"HTTP/1.1 ", 1)[-1]  # after any 100 Continue
    return int(final[:3])


def test_a_declared_length_over_the_limit_is_413_before_the_body(limited: Server) -> None:
    before = objects(limited)
    with socket.create_connection(("127.0.0.1", limited.port)) as sock:
        sock.sendall(
            f"PUT /big.bin HTTP/1.1\r\nHost: x\r\nContent-Length: {LIMIT + 1}\r\n\r\n".encode()
        )
        response = response_of(sock)  # no body byte was sent, the answer comes anyway
    assert status_of(response) == 413
    assert b"Payload Too Large" in response
    assert curl("-s", "-o", "/dev/null", "-w", "%{http_code}", f"{limited.url}/big.bin").stdout
    assert objects(limited) == before
    assert curl("-f", "-T", "-", f"{limited.url}/ok.bin", input=b"x" * LIMIT).returncode == 0


def _chunked(total: int, piece: int = 64 << 10) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"z" * min(piece, total - sent)
        sent += piece


def _send_chunked(server: Server, path: str, body: Iterator[bytes], headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(
            "PUT" if path != "/upload" else "POST", path, body, headers, encode_chunked=True
        )
        return conn.getresponse().status
    except (BrokenPipeError, ConnectionResetError):
        return -1  # the server closed first; the store is what is asserted
    finally:
        conn.close()


def test_a_chunked_body_growing_past_the_limit_is_413_and_stores_nothing(limited: Server) -> None:
    assert curl("-f", "-T", "-", f"{limited.url}/grow.bin", input=b"old").returncode == 0
    before = objects(limited)
    status = _send_chunked(limited, "/grow.bin", _chunked(3 * LIMIT), {})
    assert status in (413, -1)
    assert curl("-f", f"{limited.url}/grow.bin").stdout == b"old"
    assert objects(limited) == before
    # curl's own chunked upload sees the 413
    result = curl(
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        "-T",
        "-",
        f"{limited.url}/grow.bin",
        input=b"y" * (2 * LIMIT),
    )
    assert result.stdout.endswith(b"413")


def test_a_multipart_body_growing_past_the_limit_is_413_and_stores_nothing(
    limited: Server,
) -> None:
    before = objects(limited)
    boundary = "xYzBoundary"

    def form() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="path"\r\n\r\nform.bin\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n'
            "\r\n"
        ).encode()
        yield from _chunked(2 * LIMIT)
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    assert _send_chunked(limited, "/upload", form(), headers) in (413, -1)
    assert http_request("GET", f"{limited.url}/form.bin")[0] == 404
    assert objects(limited) == before


def test_a_gzip_body_that_decodes_past_the_limit_is_413(limited: Server) -> None:
    import gzip

    bomb = gzip.compress(b"\0" * (4 * LIMIT))
    assert len(bomb) < LIMIT
    result = curl(
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        "-H",
        "Content-Encoding: gzip",
        "--data-binary",
        "@-",
        "-X",
        "PUT",
        f"{limited.url}/bomb.bin",
        input=bomb,
    )
    assert result.stdout.endswith(b"413")
    assert http_request("GET", f"{limited.url}/bomb.bin")[0] == 404


def test_a_stalled_body_is_aborted_after_the_body_timeout_and_changes_nothing(
    limited: Server,
) -> None:
    assert curl("-f", "-T", "-", f"{limited.url}/stall.bin", input=b"previous").returncode == 0
    with socket.create_connection(("127.0.0.1", limited.port)) as sock:
        sock.sendall(b"PUT /stall.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nhalf")
        started = time.monotonic()
        response = response_of(sock, timeout=TIMEOUT + 20)  # waits on the server, not a sleep
        waited = time.monotonic() - started
        assert sock.recv(1) == b""  # and the connection is closed
    assert status_of(response) == 408
    assert TIMEOUT - 0.2 <= waited < TIMEOUT + 10
    assert curl("-f", f"{limited.url}/stall.bin").stdout == b"previous"


def test_a_slow_but_steady_body_is_not_a_stall(limited: Server) -> None:
    with socket.create_connection(("127.0.0.1", limited.port)) as sock:
        sock.sendall(b"PUT /slow.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
        for byte in b"slow":
            time.sleep(TIMEOUT / 3)
            sock.sendall(bytes([byte]))
        assert status_of(response_of(sock)) == 201
    assert curl("-f", f"{limited.url}/slow.bin").stdout == b"slow"


def test_more_than_100_headers_is_431(limited: Server) -> None:
    for count, expected in ((5000, 431), (101, 431), (90, 404)):
        with socket.create_connection(("127.0.0.1", limited.port)) as sock:
            lines = b"".join(b"X-H-%d: v\r\n" % i for i in range(count))
            sock.sendall(b"GET /nothing HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
            assert status_of(response_of(sock)) == expected, count


def test_headers_over_64_kib_are_refused(limited: Server) -> None:
    with socket.create_connection(("127.0.0.1", limited.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (70 << 10) + b"\r\n\r\n")
        response = response_of(sock)
    assert response == b"" or status_of(response) in (400, 431)


def test_past_the_concurrent_upload_cap_is_503_with_retry_after(start_server: StartServer) -> None:
    server = start_server(args=["--max-concurrent-uploads", "1", "--body-timeout", "30"])
    with socket.create_connection(("127.0.0.1", server.port)) as first:
        first.sendall(b"PUT /one.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nhal")
        deadline = time.monotonic() + 10
        while True:  # until the first upload holds its slot
            result = curl("-sD", "-", "-T", "-", f"{server.url}/two.bin", input=b"two")
            if b" 503 " in result.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert b"HTTP/1.1 503 " in result.stdout
        assert b"Retry-After: 2" in result.stdout
        assert http_request("GET", f"{server.url}/one.bin")[0] == 404  # reads are not capped
        first.sendall(b"f!!")
        assert status_of(response_of(first)) == 201
    assert curl("-f", "-T", "-", f"{server.url}/two.bin", input=b"two").returncode == 0
    assert curl("-f", f"{server.url}/one.bin").stdout == b"half!!"
