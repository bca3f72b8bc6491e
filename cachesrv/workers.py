"""Ingest worker processes: the upload hot path off the event loop's process.

DESIGN.md measured the GIL convoy: the event loop receiving at line rate is
busy Python, so a worker *thread* doing CDC + BLAKE3 + zstd waits for the GIL
after every short C call and the second core stays idle. Here each upload's
bytes are forwarded over a Unix socket to a long-lived worker process that
runs :class:`cachesrv.ingest.IngestSession` on its own store handle (its own
pack file; the SQLite index is shared, as between replicas) and answers with
the encoded manifest. The event loop only forwards bytes.

Wire format, both ways: ``kind (1 byte) | length (u32 LE) | payload``.
server -> worker: ``B`` begin (JSON options), ``D`` data, ``E`` end, ``A`` abort.
worker -> server: ``R`` result (u32 JSON length | JSON stats | manifest body),
``X`` error (JSON), ``K`` abort acknowledged.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import struct
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import trio

from cachesrv.chunking import ChunkParams
from cachesrv.ingest import IngestSession, IngestStats
from cachesrv.malloc import bound_heap
from cachesrv.manifest import Manifest

FRAME = struct.Struct("<cI")
SOCKET_BUFFER = 4 << 20
SEND_BATCH = 256 << 10  # forward body bytes in batches: fewer syscalls, the worker keeps up


RECYCLE_RSS = 48 << 20  # an idle worker above this is replaced (a fresh one is ~31 MB)


def _resident_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0  # not Linux, or gone: nothing to measure


class WorkerFailed(Exception):
    """The worker process died or broke protocol; the upload is lost, the store is not."""


# -- the worker process ----------------------------------------------------------


def _recv_exact(sock: socket.socket, buffer: memoryview) -> bool:
    got = 0
    while got < len(buffer):
        n = sock.recv_into(buffer[got:])
        if n == 0:
            return False
        got += n
    return True


def _send(sock: socket.socket, kind: bytes, payload: bytes = b"") -> None:
    sock.sendall(FRAME.pack(kind, len(payload)) + payload)


def worker_main(
    sock: socket.socket,
    data: Path,
    params: ChunkParams,
    level: int,
    hot_bytes: int,
    threads: int = 2,
    hard_limit: int | None = None,
    pin_ttl: float = 600.0,
) -> None:
    from cachesrv.restore.hot import HotCache
    from cachesrv.store.local import LocalChunkStore

    store = LocalChunkStore(data, hard_limit=hard_limit, pin_ttl=pin_ttl)
    hot = HotCache(data, hot_bytes) if hot_bytes > 0 else None
    header = memoryview(bytearray(FRAME.size))
    buffer = memoryview(bytearray(SEND_BATCH * 2))
    session: IngestSession | None = None
    failure: OSError | None = None
    try:
        while _recv_exact(sock, header):
            kind, length = FRAME.unpack(header)
            if length > len(buffer):
                buffer = memoryview(bytearray(length))
            payload = buffer[:length]
            if not _recv_exact(sock, payload):
                return
            if kind == b"B":
                options = json.loads(bytes(payload))
                if session is not None:
                    session.abort()
                session = IngestSession(
                    store.writer(),
                    params,
                    level,
                    options.get("tar_aware", True),
                    threads=threads,
                    hot=hot,
                )
                failure = None
            elif kind == b"D":
                if session is not None and failure is None:
                    try:
                        session.feed(payload)
                    except OSError as exc:  # ENOSPC & co: keep reading, answer at the end
                        failure = exc
            elif kind == b"E":
                assert session is not None
                try:
                    if failure is not None:
                        raise failure
                    manifest = session.finish()
                except OSError as exc:
                    report = {"message": str(exc), "errno": exc.errno}
                    _send(sock, b"X", json.dumps(report).encode())
                else:
                    stats = json.dumps(asdict(session.stats)).encode()
                    body = manifest.encode()
                    _send(sock, b"R", struct.pack("<I", len(stats)) + stats + body)
                session = None
            elif kind == b"A":
                if session is not None:
                    session.abort()
                session = None
                _send(sock, b"K")
    finally:
        store.close()
        if hot is not None:
            hot.close()


def _main() -> None:
    parser = argparse.ArgumentParser(description="cachesrv ingest worker (started by the server)")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--chunk", type=int, nargs=3, required=True)
    parser.add_argument("--level", type=int, required=True)
    parser.add_argument("--hot-bytes", type=int, required=True)
    parser.add_argument("--hard-limit", type=int, default=0, help="bytes; 0: none")
    parser.add_argument("--pin-ttl", type=float, required=True)
    args = parser.parse_args()
    bound_heap()
    sock = socket.socket(fileno=args.fd)
    try:
        worker_main(
            sock,
            args.data,
            ChunkParams(*args.chunk),
            args.level,
            args.hot_bytes,
            hard_limit=args.hard_limit or None,
            pin_ttl=args.pin_ttl,
        )
    except (ConnectionError, KeyboardInterrupt):
        pass


# -- the server side ------------------------------------------------------------


class Worker:
    """One worker process and the server's end of its socket. The store's settings
    (hard limit, pin lifetime) go to the process on its command line."""

    def __init__(
        self,
        data: Path,
        params: ChunkParams,
        level: int,
        hot_bytes: int,
        hard_limit: int | None = None,
        pin_ttl: float = 600.0,
    ) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for sock in (ours, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        command = [
            sys.executable,
            "-m",
            "cachesrv.workers",
            "--fd",
            str(theirs.fileno()),
            "--data",
            str(data),
            "--chunk",
            *map(str, params),
            "--level",
            str(level),
            "--hot-bytes",
            str(hot_bytes),
            "--hard-limit",
            str(hard_limit or 0),
            "--pin-ttl",
            repr(pin_ttl),
        ]
        self.proc = subprocess.Popen(command, pass_fds=(theirs.fileno(),))
        theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._trio_sock: trio.socket.SocketType | None = None
        self.broken = False

    @property
    def sock(self) -> trio.socket.SocketType:
        if self._trio_sock is None:  # wrapped lazily: needs a running trio loop
            self._trio_sock = trio.socket.from_stdlib_socket(self._sock)
        return self._trio_sock

    async def send(self, kind: bytes, parts: list[bytes] | tuple[bytes, ...] = ()) -> None:
        """One frame, written with scatter-gather: the body pieces are never joined."""
        views = [memoryview(FRAME.pack(kind, sum(map(len, parts))))]
        views += (memoryview(p) for p in parts)
        while views:
            sent = await self.sock.sendmsg(views[:64])
            while sent:
                if sent >= len(views[0]):
                    sent -= len(views.pop(0))
                else:
                    views[0] = views[0][sent:]
                    sent = 0

    async def receive(self) -> tuple[bytes, bytes]:
        kind, length = FRAME.unpack(await self._receive_exact(FRAME.size))
        return kind, await self._receive_exact(length)

    async def _receive_exact(self, size: int) -> bytes:
        parts, got = [], 0
        while got < size:
            data = await self.sock.recv(min(size - got, 1 << 20))
            if not data:
                raise WorkerFailed("ingest worker closed its socket")
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    def close(self) -> None:
        self._sock.close()  # the worker sees EOF, drops what it holds, exits
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class WorkerPool:
    """Worker processes, one upload at a time each; a broken worker is replaced."""

    def __init__(
        self,
        data: Path,
        params: ChunkParams,
        level: int,
        hot_bytes: int,
        size: int,
        hard_limit: int | None = None,
        pin_ttl: float = 600.0,
    ) -> None:
        self._spawn_args = (data, params, level, hot_bytes, hard_limit, pin_ttl)
        self._idle = [Worker(*self._spawn_args) for _ in range(size)]
        self._available = trio.Semaphore(size)
        self.size = size
        self.restarted_broken = 0  # workers replaced because they died or broke protocol
        self.restarted_recycled = 0  # replaced because they grew past RECYCLE_RSS

    def try_acquire(self) -> Worker | None:
        """An idle worker, or None: uploads never queue behind busy workers."""
        try:
            self._available.acquire_nowait()
        except trio.WouldBlock:
            return None
        return self._idle.pop()

    def _release(self, worker: Worker) -> None:
        if worker.broken:  # mid-frame or dead: its stream cannot be trusted again
            worker.proc.kill()
            worker.proc.wait()
            worker._sock.close()
            worker = Worker(*self._spawn_args)
            self.restarted_broken += 1
        elif _resident_bytes(worker.proc.pid) > RECYCLE_RSS:
            # A big upload leaves ~30 MB of fragmented heap behind (pin cache, pieces);
            # a fresh worker is cheaper than carrying it into the next restore's budget.
            # Closing the socket makes it exit; subprocess reaps it later, no waiting here.
            worker._sock.close()
            worker = Worker(*self._spawn_args)
            self.restarted_recycled += 1
        self._idle.append(worker)
        self._available.release()

    def close(self) -> None:
        for worker in self._idle:
            worker.close()
        self._idle.clear()


class RemoteUpload:
    """Same face as :class:`cachesrv.ingest.Upload`, the work done in a worker process."""

    def __init__(self, pool: WorkerPool, worker: Worker, tar_aware: bool = True) -> None:
        self.pool = pool
        self.tar_aware = tar_aware
        self.worker: Worker | None = worker
        self._begun = False
        self.stats = IngestStats()
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    async def _begin(self) -> Worker:
        if self.worker is None:
            raise WorkerFailed("this upload is already finished")
        if not self._begun:
            self._begun = True
            self.worker.broken = True  # until the exchange completes
            await self.worker.send(b"B", [json.dumps({"tar_aware": self.tar_aware}).encode()])
        return self.worker

    async def write(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= SEND_BATCH:
            await self._flush()

    async def _flush(self) -> None:
        worker = await self._begin()
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        if batch:
            await worker.send(b"D", batch)

    async def finish(self) -> Manifest:
        worker = await self._begin()
        try:
            await self._flush()
            await worker.send(b"E")
            kind, payload = await worker.receive()
            worker.broken = False
        finally:
            self._release()
        if kind == b"X":
            report = json.loads(payload)
            raise OSError(report.get("errno") or errno.EIO, report["message"])
        if kind != b"R":
            raise WorkerFailed(f"unexpected reply {kind!r} from an ingest worker")
        (stats_length,) = struct.unpack_from("<I", payload)
        stats = json.loads(payload[4 : 4 + stats_length])
        self.stats = IngestStats(**stats)
        return Manifest.decode(payload[4 + stats_length :])

    async def abort(self) -> None:
        """Drop the upload (client gone, bad form): the worker forgets it."""
        if self.worker is None:
            return
        worker = self.worker
        try:
            if self._begun:
                with trio.move_on_after(10):
                    await worker.send(b"A")
                    kind, _ = await worker.receive()
                    worker.broken = kind != b"K"
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, WorkerFailed):
            worker.broken = True
        finally:
            self._release()

    def _release(self) -> None:
        if self.worker is not None:
            self.pool._release(self.worker)
            self.worker = None


if __name__ == "__main__":
    _main()
