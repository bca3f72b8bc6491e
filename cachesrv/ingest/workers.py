"""Ingest worker processes: the upload hot path off the event loop's process.

DESIGN.md measured the GIL convoy: the event loop receiving at line rate is
busy Python, so a worker *thread* doing CDC + BLAKE3 + zstd waits for the GIL
after every short C call and the second core stays idle. Here each upload's
bytes are forwarded over a Unix socket (:mod:`cachesrv.ingest.frames`) to a
long-lived worker process (:mod:`cachesrv.ingest.process`) that runs
:class:`cachesrv.ingest.session.IngestSession` on its own store handle (its own
pack file; the SQLite index is shared, as between replicas) and answers with the
encoded manifest. The event loop only forwards bytes.

The processes live in a nursery the server owns (:meth:`IngestPool.run`): one
supervising task per worker starts it, waits for it, and starts another when it
exits or is retired (broken mid-upload, or grown too big); when the pool is
cancelled, each supervisor closes its worker's socket and reaps the process.
"""

from __future__ import annotations

import logging
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import trio

from cachesrv.backends import store_args
from cachesrv.catalog import StoredManifest
from cachesrv.chunking import ChunkParams
from cachesrv.ingest import frames
from cachesrv.ingest.session import IngestStats

log = logging.getLogger("cachesrv.ingest")

SOCKET_BUFFER = 4 << 20
SEND_BATCH = 256 << 10  # forward body bytes in batches: fewer syscalls, the worker keeps up
RECEIVE_BYTES = 1 << 20
EXIT_WAIT = 10  # seconds a worker gets to exit after its socket closed, then SIGKILL


class WorkerFailed(Exception):
    """The worker process died or broke protocol; the upload is lost, the store is not."""


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker process is started with: the store's settings reach it here."""

    data: Path | None  # None: an object store and no --data
    params: ChunkParams
    level: int
    defer: bool = False  # store new chunks pending, for the server to compress later
    hard_limit: int | None = None
    pin_ttl: float = 600.0
    store: str | None = None  # s3://bucket/prefix (cachesrv.backends); None: under data
    store_timeout: float = 10.0

    def command(self, fd: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "cachesrv.ingest.process",
            "--fd",
            str(fd),
            *(() if self.data is None else ("--data", str(self.data))),
            "--chunk",
            *map(str, self.params),
            "--level",
            str(self.level),
            *(("--defer",) if self.defer else ()),
            "--hard-limit",
            str(self.hard_limit or 0),
            "--pin-ttl",
            repr(self.pin_ttl),
            *store_args(self.store, self.store_timeout),
        ]


class Worker:
    """One worker process, as its supervisor and the upload holding it see it."""

    def __init__(self, process: trio.Process, sock: trio.socket.SocketType) -> None:
        self.process = process
        self.sock = sock
        self.broken = False  # mid-frame or dead: its stream cannot be trusted again
        self.gone = False  # its supervisor let it go: never idle again
        self.grown = False  # it said it holds too much memory: replace it when released
        self._decoder = frames.FrameDecoder()
        self._retire = trio.CancelScope()  # cancelled: the supervisor replaces it

    def retire(self) -> None:
        self._retire.cancel()

    async def send(self, kind: bytes, parts: list[bytes] | tuple[bytes, ...] = ()) -> None:
        """One frame, written with scatter-gather: the body pieces are never joined."""
        views = [memoryview(frames.header(kind, sum(map(len, parts))))]
        views += (memoryview(p) for p in parts)
        while views:
            sent = await self.sock.sendmsg(views[:64])
            while sent:
                if sent >= len(views[0]):
                    sent -= len(views.pop(0))
                else:
                    views[0] = views[0][sent:]
                    sent = 0

    async def receive(self) -> tuple[bytes, memoryview]:
        while (received := self._decoder.next_frame()) is None:
            data = await self.sock.recv(RECEIVE_BYTES)
            if not data:
                raise WorkerFailed("ingest worker closed its socket")
            self._decoder.feed(data)
        return received


class IngestPool:
    """Worker processes, one upload at a time each; :meth:`run` must be running (in the
    server's nursery) for any to be idle. Uploads never queue behind busy workers."""

    def __init__(self, settings: WorkerSettings, size: int) -> None:
        self.settings = settings
        self.size = size
        self._idle: list[Worker] = []
        self.restarted_broken = 0  # replaced: died or broke protocol
        self.restarted_recycled = 0  # replaced: said it had grown (ingest.process)

    @property
    def idle(self) -> int:
        """Workers ready for an upload now."""
        return len(self._idle)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the workers, keep them running until cancelled, then stop them."""
        async with trio.open_nursery() as nursery:
            for _ in range(self.size):
                await nursery.start(self._supervise)
            task_status.started()

    async def _supervise(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        started = False
        while True:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            for sock in (ours, theirs):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
            try:
                process = await trio.lowlevel.open_process(
                    self.settings.command(theirs.fileno()), pass_fds=(theirs.fileno(),)
                )
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            ours.setblocking(False)
            worker = Worker(process, trio.socket.from_stdlib_socket(ours))
            self._idle.append(worker)
            if not started:
                started = True
                task_status.started()
            try:
                with worker._retire:
                    await process.wait()
            finally:
                worker.gone = True
                if worker in self._idle:
                    self._idle.remove(worker)
                with trio.CancelScope(shield=True):
                    await self._stop(worker)
            if worker._retire.cancelled_caught:
                if worker.broken:
                    self.restarted_broken += 1
                else:
                    self.restarted_recycled += 1
                continue  # replaced on purpose: the next one starts now
            self.restarted_broken += 1
            log.error("ingest worker exited with %s; starting another", process.returncode)
            await trio.sleep(0.5)

    async def _stop(self, worker: Worker) -> None:
        """Close the socket (EOF: the worker drops what it holds and exits), then reap it;
        a broken worker is killed at once."""
        process = worker.process
        worker.sock.close()
        if worker.broken and process.returncode is None:
            process.kill()
        with trio.move_on_after(EXIT_WAIT):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()

    def try_acquire(self) -> Worker | None:
        """An idle worker, or None."""
        return self._idle.pop() if self._idle else None

    def release(self, worker: Worker) -> None:
        """Back to idle, or to its supervisor for a replacement."""
        if worker.gone:
            return  # it exited meanwhile: its supervisor starts another
        if worker.broken or worker.grown:  # grown: see cachesrv.ingest.process.RECYCLE_GROWTH
            worker.retire()  # its supervisor starts a fresh one now
        else:
            self._idle.append(worker)

    def upload(self, tar_aware: bool = True) -> WorkerUpload | None:
        """An upload in an idle worker, or None if every worker is busy."""
        worker = self.try_acquire()
        return WorkerUpload(self, worker, tar_aware) if worker is not None else None


class WorkerUpload:
    """An :class:`cachesrv.ingest.upload.Upload` whose work is done in a worker process."""

    def __init__(self, pool: IngestPool, worker: Worker, tar_aware: bool = True) -> None:
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
            await self.worker.send(frames.BEGIN, [frames.encode_begin(self.tar_aware)])
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
            await worker.send(frames.DATA, batch)

    async def finish(self) -> StoredManifest:
        worker = await self._begin()
        try:
            await self._flush()
            await worker.send(frames.END)
            kind, payload = await worker.receive()
            worker.broken = False
            if kind == frames.RESULT:
                self.stats, stored, worker.grown = frames.decode_result(payload)
        finally:
            self._release()
        if kind == frames.ERROR:
            raise frames.decode_error(payload)
        if kind != frames.RESULT:
            raise WorkerFailed(f"unexpected reply {kind!r} from an ingest worker")
        return stored

    async def abort(self) -> None:
        """Drop the upload (client gone, bad form): the worker forgets it."""
        if self.worker is None:
            return
        worker = self.worker
        try:
            if self._begun:
                with trio.move_on_after(10):
                    await worker.send(frames.ABORT)
                    kind, _ = await worker.receive()
                    worker.broken = kind != frames.ABORTED
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, WorkerFailed):
            worker.broken = True
        finally:
            self._release()

    def _release(self) -> None:
        if self.worker is not None:
            self.pool.release(self.worker)
            self.worker = None
