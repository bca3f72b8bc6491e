"""SIGTERM: stop accepting, let in-flight requests finish within the grace period, exit 0.

Every wait here is for an event (an answer, a refused connection, the process's exit);
the timeouts are only safety nets, far above what the events take.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time

from conftest import Server, StartServer, curl

WAIT = 60.0  # seconds: a safety net, never the thing a test measures


def _start_put(server: Server, path: str, size: int) -> socket.socket:
    """A PUT the server has taken in (it answered the headers with 100 Continue): from
    here on the request is in flight, whatever part of the body has been sent."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    sock.sendall(
        f"PUT /{path} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n"
        "Expect: 100-continue\r\nConnection: close\r\n\r\n".encode()
    )
    interim = b""
    while not interim.endswith(b"\r\n\r\n"):
        received = sock.recv(1)
        assert received, f"connection closed after {interim!r}"
        interim += received
    assert interim.startswith(b"HTTP/1.1 100 "), interim
    return sock


def _read_to_close(sock: socket.socket) -> bytes:
    reply = bytearray()
    while received := sock.recv(65536):
        reply += received
    return bytes(reply)


def _wait_until_refused(port: int) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
        except ConnectionRefusedError:
            return
        assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
        time.sleep(0.05)  # polling interval, not a bound


def test_sigterm_lets_an_inflight_upload_finish_and_exits_0(start_server: StartServer) -> None:
    server = start_server(args=["--grace-period", "3600"])
    data = os.urandom(8_000_000)
    upload = _start_put(server, "inflight.bin", len(data))
    upload.sendall(data[: len(data) // 2])
    server.proc.send_signal(signal.SIGTERM)
    _wait_until_refused(server.port)  # new connections are refused ...
    upload.sendall(data[len(data) // 2 :])  # ... while the one in flight goes on
    head, _, body = _read_to_close(upload).partition(b"\r\n\r\n")
    upload.close()
    assert head.startswith(b"HTTP/1.1 201 "), head
    assert json.loads(body)["size"] == len(data)
    # Done with its last request, the server exits long before the grace period ends.
    assert server.proc.wait(timeout=WAIT) == 0
    restarted = start_server(data=server.data)
    assert curl("-f", f"{restarted.url}/inflight.bin").stdout == data


def test_sigterm_on_an_idle_server_exits_0_without_waiting_for_the_grace_period(
    start_server: StartServer,
) -> None:
    server = start_server(args=["--grace-period", "3600"])
    # An idle keep-alive connection (its one request answered) does not hold it up either.
    idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT)
    idle.request("GET", "/-/healthz")
    response = idle.getresponse()
    assert response.status == 200 and json.loads(response.read())["status"] == "ok"
    assert idle.sock is not None  # kept alive
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=WAIT) == 0
    assert idle.sock.recv(65536) == b""  # the server closed it
    idle.close()


def test_grace_period_bounds_a_stuck_upload(start_server: StartServer) -> None:
    server = start_server(args=["--grace-period", "2"])
    upload = _start_put(server, "stuck.bin", 100_000_000)
    upload.sendall(b"x" * 100_000)  # and never the rest
    server.proc.send_signal(signal.SIGTERM)
    # The upload would hold the server forever; the grace period ends it, and the exit is
    # still a clean one.
    assert server.proc.wait(timeout=WAIT) == 0
    try:
        reply = _read_to_close(upload)
    except ConnectionResetError:
        reply = b""
    upload.close()
    assert not reply.startswith(b"HTTP/1.1 2"), reply
    restarted = start_server(data=server.data)
    assert (
        curl("-w", "%{http_code}", "-o", "/dev/null", f"{restarted.url}/stuck.bin").stdout == b"404"
    )
