"""Ingest worker processes: the upload hot path off the event loop's process.

DESIGN.md measured the GIL convoy: the event loop receiving at line rate is
busy Python, so a worker *thread* doing CDC + BLAKE3 + zstd waits for the GIL
after every short C call and the second core stays idle. Here each upload's
bytes are forwarded over a Unix socket (:mod:`cachesrv.ingest.frames`) to a
long-lived worker process (:mod:`cachesrv.ingest.process`) that runs
:class:`cachesrv.ingest.session.IngestSession` on its own store handle (its own
pack file; the SQLite index is shared, as between replicas) and answers with the
encoded manifest. The event loop only forwards bytes. A worker runs several uploads
at once (:data:`CAPACITY`), their frames interleaved on its socket: under a mix of
many small uploads, one worker takes them all off the event loop's process, where a
thread per upload would convoy with the event loop.

The processes live in a nursery the server owns (:meth:`IngestPool.run`): one
supervising task per worker starts it, waits for it, and starts another when it
exits or is retired (broken mid-upload, or grown too big); when the pool is
cancelled, each supervisor closes its worker's socket and reaps the process.

A worker with no upload for ``idle_exit`` seconds exits: a cache is saved once a day
and restored on every run, so most of the time no upload runs and its ~26 MB are the
restores'. The next upload starts one again: its socket pair is made beforehand, so the
upload's first bytes wait in the socket's buffer while the process starts (~0.2 s)."""

from __future__ import annotations

import itertools
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
SEND_TIMEOUT = 60  # seconds a frame may wait for the worker to read it: then it is broken
ABORT_WAIT = 10  # seconds an aborted upload waits for the worker to say it let go
# Seconds a worker may run no upload before it exits (0: never); php-fpm's ondemand mode
# lets its workers go after the same 10 s.
IDLE_EXIT = 10.0
# Uploads one worker runs at once. An upload's body comes at its client's pace and its
# CPU time is a small part of that, so one process serves many; each holds its session's
# buffers (with deferred compression ~1.2 MB: the chunker's 512 KiB window, the
# manifest's encoder). Past this many, uploads run in threads of the server, as
# with no worker, where they hold the same and convoy with the event loop: under
# bench.load's 24 clients, with 8 here, the server process held 80-90 MB and answered
# 4,666 requests; with 32, 67-75 MB and 5,001.
CAPACITY = 32
ANSWERS = (frames.RESULT, frames.ERROR, frames.ABORTED)


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
    group_level: int = 0  # uploads not deferred group small chunks at this level (0: never)

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
            "--group-level",
            str(self.group_level),
            "--hard-limit",
            str(self.hard_limit or 0),
            "--pin-ttl",
            repr(self.pin_ttl),
            *store_args(self.store, self.store_timeout),
        ]


class _Answer:
    """Where the worker's answer to one upload's END or ABORT is left for it."""

    def __init__(self) -> None:
        self.arrived = trio.Event()
        self.kind = b""
        self.payload = b""
        self.failure: WorkerFailed | None = None

    def deliver(self, kind: bytes, payload: bytes) -> None:
        self.kind, self.payload = kind, payload
        self.arrived.set()

    def fail(self, failure: WorkerFailed) -> None:
        if not self.arrived.is_set():
            self.failure = failure
            self.arrived.set()

    async def wait(self) -> tuple[bytes, bytes]:
        await self.arrived.wait()
        if self.failure is not None:
            raise self.failure
        return self.kind, self.payload


class Worker:
    """One worker process, as its supervisor and the uploads it runs see it.

    Several uploads share its socket: each frame goes out whole under a lock, and one
    task of the supervisor's (:meth:`read_answers`) hands each answer to its upload."""

    def __init__(self, sock: trio.socket.SocketType, capacity: int) -> None:
        self.process: trio.Process | None = None  # None: not started until an upload comes
        self.sock = sock
        self.capacity = capacity  # uploads at once
        self.uploads: dict[int, _Answer] = {}  # open here: number -> where its answer goes
        self.broken = False  # a frame half sent, or an answer unreadable: retire it
        self.gone = False  # its supervisor let it go: never takes an upload again
        self.grown = False  # it said it holds too much memory: replace it once empty
        self.expired = False  # it ran no upload for the pool's idle_exit: it exits
        self.wanted = trio.Event()  # set by the first upload given to it
        self.idle_since = trio.current_time()
        self._numbers = itertools.count(1)
        self._send_lock = trio.Lock()
        self._retire = trio.CancelScope()  # cancelled: the supervisor replaces it

    @property
    def open(self) -> bool:
        """Whether it takes another upload now."""
        usable = not (self.broken or self.gone or self.grown or self.expired)
        return usable and len(self.uploads) < self.capacity

    def begin(self) -> int:
        number = next(self._numbers)
        self.uploads[number] = _Answer()
        self.wanted.set()
        return number

    def end(self, number: int) -> None:
        """The upload ``number`` is over here; a worker that grew goes once empty."""
        self.uploads.pop(number, None)
        if not self.uploads:
            self.idle_since = trio.current_time()
        if self.broken or (self.grown and not self.uploads):
            self.retire()

    async def expire(self, after: float) -> None:
        """Retire the worker once it has run no upload for ``after`` seconds."""
        while True:
            deadline = self.idle_since + after
            if not self.uploads and trio.current_time() >= deadline:
                self.expired = True
                self.retire()
                return
            await trio.sleep_until(max(deadline, trio.current_time() + after / 10))

    def retire(self) -> None:
        self._retire.cancel()

    async def send(
        self, kind: bytes, number: int, parts: list[bytes] | tuple[bytes, ...] = ()
    ) -> None:
        """One frame, written whole with scatter-gather (the body pieces are never
        joined). A frame cut short would garble every upload after it, so the send is
        shielded from the upload's cancellation; one the worker does not take within
        :data:`SEND_TIMEOUT` breaks the worker."""
        if self.broken or self.gone:
            raise WorkerFailed("the ingest worker was lost mid-upload")
        views = [memoryview(frames.header(kind, sum(map(len, parts)), number))]
        views += (memoryview(p) for p in parts)
        async with self._send_lock:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + SEND_TIMEOUT
                try:
                    while views:
                        sent = await self.sock.sendmsg(views[:64])
                        while sent:
                            if sent >= len(views[0]):
                                sent -= len(views.pop(0))
                            else:
                                views[0] = views[0][sent:]
                                sent = 0
                except (OSError, trio.ClosedResourceError) as exc:
                    self._break(f"the ingest worker's socket failed: {exc}")
                    raise WorkerFailed(str(exc)) from exc
            if views:
                self._break("the ingest worker stopped reading")
                raise WorkerFailed("the ingest worker stopped reading")

    async def answer(self, number: int) -> tuple[bytes, bytes]:
        return await self.uploads[number].wait()

    async def read_answers(self) -> None:
        """Hand each frame the worker sends to the upload it names, until its socket
        closes or a frame makes no sense (then every open upload fails)."""
        decoder = frames.FrameDecoder()
        try:
            while True:
                data = await self.sock.recv(RECEIVE_BYTES)
                if not data:
                    raise WorkerFailed("ingest worker closed its socket")
                decoder.feed(data)
                while (received := decoder.next_frame()) is not None:
                    kind, number, payload = received
                    if kind not in ANSWERS:
                        raise WorkerFailed(f"unexpected frame {kind!r} from an ingest worker")
                    answer = self.uploads.get(number)
                    if answer is not None:  # else its upload was cancelled meanwhile
                        answer.deliver(kind, bytes(payload))
        except (OSError, trio.ClosedResourceError, WorkerFailed) as exc:
            self._break(str(exc))

    def _break(self, why: str) -> None:
        if not self.broken:
            self.broken = True
            if self.uploads:
                log.error("ingest worker lost with %d uploads open: %s", len(self.uploads), why)
        self.fail_all()
        self.retire()

    def fail_all(self) -> None:
        for answer in self.uploads.values():
            answer.fail(WorkerFailed("the ingest worker was lost mid-upload"))


class IngestPool:
    """Worker processes, each running up to ``capacity`` uploads at once; :meth:`run`
    must be running (in the server's nursery) for any to take one. Uploads never queue
    behind busy workers: with none open, the caller runs the upload itself."""

    def __init__(
        self,
        settings: WorkerSettings,
        size: int,
        capacity: int = CAPACITY,
        idle_exit: float = IDLE_EXIT,
    ) -> None:
        self.settings = settings
        self.size = size
        self.capacity = capacity
        self.idle_exit = idle_exit  # seconds without an upload before a worker exits; 0: never
        self._workers: list[Worker] = []
        self.restarted_broken = 0  # replaced: died or broke protocol
        self.restarted_recycled = 0  # replaced: said it had grown (ingest.process)
        self.idle_exits = 0  # exited after idle_exit seconds without an upload

    @property
    def processes(self) -> int:
        """Worker processes running now (the others start when an upload comes)."""
        return sum(1 for w in self._workers if w.process is not None)

    @property
    def idle(self) -> int:
        """Workers running no upload now."""
        return sum(1 for w in self._workers if w.open and not w.uploads)

    @property
    def running(self) -> int:
        """Uploads the workers are running now."""
        return sum(len(w.uploads) for w in self._workers)

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
        lazy = False  # the first starts with the server: the first upload does not wait
        while True:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            for sock in (ours, theirs):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
            ours.setblocking(False)
            worker = Worker(trio.socket.from_stdlib_socket(ours), self.capacity)
            self._workers.append(worker)
            if not started:
                started = True
                task_status.started()
            try:
                with worker._retire:
                    if lazy:  # uploads may be given to it now; their bytes wait in the socket
                        await worker.wanted.wait()
                    try:
                        worker.process = await trio.lowlevel.open_process(
                            self.settings.command(theirs.fileno()), pass_fds=(theirs.fileno(),)
                        )
                    except OSError as exc:  # no process (EMFILE, ENOMEM): fail its uploads, retry
                        log.error("could not start an ingest worker: %s", exc)
                        worker._break(f"could not start: {exc}")
                    else:
                        theirs.close()
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(worker.read_answers)
                            if self.idle_exit > 0:
                                nursery.start_soon(worker.expire, self.idle_exit)
                            await worker.process.wait()
                            nursery.cancel_scope.cancel()
            finally:
                theirs.close()
                worker.gone = True
                self._workers.remove(worker)
                worker.fail_all()
                with trio.CancelScope(shield=True):
                    await self._stop(worker)
            lazy = worker.expired
            if worker.expired:
                self.idle_exits += 1
                continue  # the next one starts with the next upload
            if worker.process is None:  # it could not start (logged): try again soon
                self.restarted_broken += 1
                await trio.sleep(0.5)
                continue
            if worker._retire.cancelled_caught:
                if worker.broken:
                    self.restarted_broken += 1
                else:
                    self.restarted_recycled += 1
                continue  # replaced on purpose: the next one starts now
            self.restarted_broken += 1
            log.error("ingest worker exited with %s; starting another", worker.process.returncode)
            await trio.sleep(0.5)

    async def _stop(self, worker: Worker) -> None:
        """Close the socket (EOF: the worker drops what it holds and exits), then reap it;
        a broken worker is killed at once."""
        process = worker.process
        worker.sock.close()
        if process is None:
            return
        if worker.broken and process.returncode is None:
            process.kill()
        with trio.move_on_after(EXIT_WAIT):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()

    def upload(self, tar_aware: bool = True) -> WorkerUpload | None:
        """An upload in the least busy open worker, or None if none is open."""
        open_ = [w for w in self._workers if w.open]
        if not open_:
            return None
        worker = min(open_, key=lambda w: len(w.uploads))
        return WorkerUpload(worker, worker.begin(), tar_aware)


class WorkerUpload:
    """An :class:`cachesrv.ingest.upload.Upload` whose work is done in a worker process."""

    def __init__(self, worker: Worker, number: int, tar_aware: bool = True) -> None:
        self.worker: Worker | None = worker
        self.number = number
        self.tar_aware = tar_aware
        self._begun = False
        self.stats = IngestStats()
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    async def _begin(self) -> Worker:
        if self.worker is None:
            raise WorkerFailed("this upload is already finished")
        if not self._begun:
            self._begun = True
            await self.worker.send(frames.BEGIN, self.number, [frames.encode_begin(self.tar_aware)])
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
            await worker.send(frames.DATA, self.number, batch)

    async def finish(self) -> StoredManifest:
        worker = await self._begin()
        try:
            await self._flush()
            await worker.send(frames.END, self.number)
            kind, payload = await worker.answer(self.number)
            if kind == frames.RESULT:
                self.stats, stored, grown = frames.decode_result(payload)
                worker.grown = worker.grown or grown
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
            if self._begun and not worker.broken:
                with trio.move_on_after(ABORT_WAIT) as waited:
                    await worker.send(frames.ABORT, self.number)
                    kind, _ = await worker.answer(self.number)
                    if kind != frames.ABORTED:
                        worker._break(f"answered {kind!r} to an abort")
                if waited.cancelled_caught:
                    worker._break("did not answer an abort in time")
        except WorkerFailed:
            pass  # the worker is gone, and the upload with it
        finally:
            self._release()

    def _release(self) -> None:
        if self.worker is not None:
            self.worker.end(self.number)
            self.worker = None
