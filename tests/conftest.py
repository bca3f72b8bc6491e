"""Fixtures: real cachesrv server processes on free loopback ports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from bench.seaweedfs import SeaweedFS, start_seaweedfs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    port: int
    data: Path
    log: Path
    proc: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + "/-/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise RuntimeError("server did not become ready in time")


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPLOADER_", "CACHESRV_"))}
    env.update(extra or {})
    return env


class StartServer(Protocol):
    def __call__(
        self,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        data: Path | None = None,
        *,
        port: int | None = None,
        pass_data: bool = True,
        pass_port: bool = True,
        cwd: Path | None = None,
    ) -> Server: ...


@pytest.fixture
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """A factory: each call starts ``cachesrv serve`` and waits until it answers.

    ``data`` reuses a store directory (restart tests); every server is stopped at teardown.
    ``port`` and ``data`` are where the server listens and stores (by default a free port
    and a new directory), passed as ``--port`` and ``--data``; with ``pass_port=False`` or
    ``pass_data=False`` the flag is left out, the test's ``env`` or ``args`` (or the
    defaults, relative to ``cwd``) must bring the server there, and the fixture waits for
    it on ``port``: what configuration precedence tests need.
    """
    started: list[Server] = []

    def start(
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        data: Path | None = None,
        *,
        port: int | None = None,
        pass_data: bool = True,
        pass_port: bool = True,
        cwd: Path | None = None,
    ) -> Server:
        port = port or free_port()
        base = tmp_path_factory.mktemp("server")
        data = data or base / "data"
        log = base / "server.log"
        command = [sys.executable, "-m", "cachesrv", "serve", "--host", "127.0.0.1"]
        if pass_port:
            command += ["--port", str(port)]
        if pass_data:
            command += ["--data", str(data)]
        command += args or []
        full_env = clean_env(env)
        with open(log, "ab") as log_file:
            proc = subprocess.Popen(
                command, env=full_env, stdout=log_file, stderr=log_file, cwd=cwd
            )
        server = Server(f"http://127.0.0.1:{port}", port, data, log, proc, full_env)
        started.append(server)
        wait_ready(server.url, proc)
        return server

    yield start
    for server in started:
        server.stop(timeout=10)
    # The stores go as soon as their test ends (logs stay): pytest keeps every test's
    # temporary directory until the session ends, and the suite's stores and hot caches
    # added up to 18 GB, as much as a CI machine's whole free disk.
    for server in started:
        shutil.rmtree(server.data, ignore_errors=True)


@pytest.fixture
def server(start_server: StartServer) -> Server:
    """One server on an empty store, no credentials."""
    return start_server()


def http_request(
    method: str, url: str, body: bytes | None = None, timeout: float = 60
) -> tuple[int, bytes]:
    """Status and body of one request, an HTTP error status included (no curl process:
    for tests that make thousands of requests)."""
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def curl(
    *args: str, input: bytes | None = None, check: bool = False, timeout: float = 300
) -> subprocess.CompletedProcess[bytes]:
    """Run the real curl (the contract is curl command lines)."""
    return subprocess.run(
        ["curl", "-sS", *args], input=input, capture_output=True, check=check, timeout=timeout
    )


def server_stats(server: Server) -> dict[str, object]:
    """The server's /-/stats."""
    return json.loads(curl("-f", f"{server.url}/-/stats").stdout)  # type: ignore[no-any-return]


def settled(server: Server, timeout: float = 60) -> dict[str, object]:
    """/-/stats once the background work after the uploads (compressing the new chunks,
    warming the hot cache) is done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        numbers = server_stats(server)
        if numbers["background_pending_bytes"] == 0:
            return numbers
        time.sleep(0.05)
    raise AssertionError(f"background work not done in {timeout} s")


def status(*args: str, input: bytes | None = None) -> int:
    """The HTTP status of one real curl request (the body is discarded)."""
    result = curl("-w", "%{http_code}", "-o", "/dev/null", *args, input=input)
    return int(result.stdout or 0)


def launch_server(
    factory: pytest.TempPathFactory,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Server:
    """One ``cachesrv serve`` for a module-scoped fixture (the caller stops it)."""
    port = free_port()
    base = factory.mktemp("server")
    log = base / "server.log"
    command = [sys.executable, "-m", "cachesrv", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--data", str(base / "data"), *(args or [])]
    full_env = clean_env(env)
    with open(log, "ab") as log_file:
        proc = subprocess.Popen(command, env=full_env, stdout=log_file, stderr=log_file)
    server = Server(f"http://127.0.0.1:{port}", port, base / "data", log, proc, full_env)
    try:
        wait_ready(server.url, proc)
    except BaseException:
        server.kill()
        raise
    return server


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One real S3-compatible server for the session (SeaweedFS on loopback); this
    process's boto3 clients reach it through the AWS_* environment."""
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    patch = pytest.MonkeyPatch()
    for name, value in server.env.items():
        patch.setenv(name, value)
    try:
        yield server
    finally:
        patch.undo()
        server.stop()


@pytest.fixture
def s3_url(seaweedfs: SeaweedFS) -> str:
    """``s3://bucket/prefix`` on a fresh prefix of the session's SeaweedFS."""
    return seaweedfs.new_store_url()
