"""SIGTERM: stop accepting, let in-flight requests finish within the grace period, exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from conftest import StartServer, curl


def test_sigterm_lets_an_inflight_upload_finish_and_exits_0(start_server: StartServer) -> None:
    server = start_server(args=["--grace-period", "30"])
    data = os.urandom(8_000_000)
    upload = subprocess.Popen(
        [
            "curl",
            "-sS",
            "-w",
            "%{http_code}",
            "-o",
            "/dev/null",
            "--limit-rate",
            "2M",
            "-T",
            "-",
            f"{server.url}/inflight.bin",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert upload.stdin is not None
    upload.stdin.write(data)
    upload.stdin.close()
    time.sleep(1.0)  # the upload is mid-body (about 4 s at 2 MB/s)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    refused = curl("-w", "%{http_code}", "-o", "/dev/null", f"{server.url}/-/healthz")
    assert refused.returncode != 0 or refused.stdout != b"200", "new connections must be refused"
    assert upload.wait(timeout=60) == 0
    assert upload.stdout is not None and upload.stdout.read() == b"201"
    assert server.proc.wait(timeout=60) == 0
    restarted = start_server(data=server.data)
    assert curl("-f", f"{restarted.url}/inflight.bin").stdout == data


def test_sigterm_on_an_idle_server_exits_0_promptly(start_server: StartServer) -> None:
    server = start_server()
    started = time.monotonic()
    assert server.stop(signal.SIGTERM, timeout=20) == 0
    assert time.monotonic() - started < 10


def test_grace_period_bounds_a_stuck_upload(start_server: StartServer) -> None:
    server = start_server(args=["--grace-period", "2"])
    upload = subprocess.Popen(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-H",
            "Content-Length: 100000000",
            "-H",
            "Transfer-Encoding:",  # curl would send both, which is refused (smuggling)
            "-T",
            "-",
            f"{server.url}/stuck.bin",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert upload.stdin is not None
    upload.stdin.write(b"x" * 100_000)
    upload.stdin.flush()
    time.sleep(0.5)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    assert time.monotonic() - started < 15
    upload.kill()
    upload.wait()
    restarted = start_server(data=server.data)
    assert (
        curl("-w", "%{http_code}", "-o", "/dev/null", f"{restarted.url}/stuck.bin").stdout == b"404"
    )
