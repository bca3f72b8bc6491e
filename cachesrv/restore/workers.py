"""Where restore jobs run: worker processes, or threads of the server.

The server's process is busy in Python sending responses (hypercorn + h11):
the ceiling app spends ~0.33 core-seconds per GB doing only that. Reading,
verifying and decoding in the same process convoys on the GIL (DESIGN.md), so
jobs run in restore worker processes: the server sends a job over a
``SOCK_SEQPACKET`` control socket together with one end of a fresh socket pair
(``SCM_RIGHTS``), and the worker runs it in a thread of its own, writing frames
(:mod:`cachesrv.restore.job`) that the server forwards to the client. Per MiB
the server then does one ``recv_into`` and one send; the worker does the rest
on the other core, and many restores at once share the worker's threads.

A plain restore whose spans are all hot is the exception: the server reads and checks
them itself and sends them, with no job (:meth:`RestorePool._stream_hot`).

With ``--restore-workers 0`` the same jobs run in threads of the server itself.
Either way the jobs and the worker processes live in a nursery the server owns
(:meth:`RestorePool.run`); a worker that dies is started again.
"""

from __future__ import annotations

import array
import dataclasses
import errno
import json
import logging
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from cachesrv.restore.hot import SPAN, FilePart, HotSpan, SpanFiles
from cachesrv.restore.job import DATA, END, FAIL, FRAME, UNAVAILABLE, Job, JobStats, Source
from cachesrv.restore.process import serve_job
from cachesrv.store import ChunkCorrupt

log = logging.getLogger("cachesrv.restore")

SOCKET_BUFFER = 4 << 20  # per restore: how far a job may run ahead of its client
# Past this many restores at once, jobs send smaller frames and hot restores smaller
# pieces: memory is one budget.
BUSY = 4
WARM_QUEUE = 64  # warm-ups waiting; past it new ones are dropped (a cache, not a duty)


class RestoreFailed(ChunkCorrupt):
    """A restore job could not serve the object (damaged or missing data, worker died)."""


# -- the server side --------------------------------------------------------------


class _Worker:
    def __init__(self) -> None:
        self.control: trio.socket.SocketType | None = None
        self.lock = trio.Lock()  # one job message at a time on the control socket
        self.active = 0


class RestorePool:
    """Runs restore jobs; :meth:`run` must be running (in the server's nursery)."""

    def __init__(
        self,
        data: Path | None,
        hot_limit: int,
        workers: int,
        source: Source,
        log_level: str = "info",
        store_args: tuple[str, ...] = (),
    ) -> None:
        self.data = data
        self.store_args = store_args  # a worker opens the same store (cachesrv.backends)
        self.hot_limit = hot_limit  # --hot-cache-bytes (0: no hot cache, no warm-ups)
        self.source = source  # this process's, for jobs run in threads here
        self.log_level = log_level
        self._workers = [_Worker() for _ in range(workers)]
        self._nursery: trio.Nursery | None = None
        self.active = 0  # restores streaming now, in every process
        self._warm_send, self._warm_receive = trio.open_memory_channel[Job](WARM_QUEUE)
        self.warm_pending_bytes = 0  # of warm-ups queued or running
        self.stats = JobStats()  # totals reported by finished jobs, in every process

    @property
    def size(self) -> int:
        """Worker processes configured (0: every restore runs in a thread here)."""
        return len(self._workers)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the workers, keep them running until cancelled, then stop them."""
        async with trio.open_nursery() as nursery:
            for worker in self._workers:
                await nursery.start(self._supervise, worker)
            self._nursery = nursery
            nursery.start_soon(self._warm_up)
            task_status.started()
            await trio.sleep_forever()  # jobs in threads run in this nursery

    async def _supervise(
        self, worker: _Worker, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        started = False
        while True:
            ours, theirs = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            command = [
                sys.executable,
                "-m",
                "cachesrv.restore.process",
                "--fd",
                str(theirs.fileno()),
                *(() if self.data is None else ("--data", str(self.data))),
                "--hot-bytes",
                str(self.hot_limit),
                "--log-level",
                self.log_level,
                *self.store_args,
            ]
            process = await trio.lowlevel.open_process(command, pass_fds=(theirs.fileno(),))
            theirs.close()
            worker.control = ours
            if not started:
                started = True
                task_status.started()
            try:
                await process.wait()
            finally:
                worker.control = None
                ours.close()  # EOF: the worker finishes what it runs, then exits
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(10):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
            log.error("restore worker exited with %s; starting another", process.returncode)
            await trio.sleep(0.5)

    def warm(self, job: Job) -> None:
        """Decode a just-published version into the hot cache, in the background, one
        at a time (so the first restore of it need not decode; see .hot)."""
        if self.hot_limit <= 0:
            return
        try:
            self._warm_send.send_nowait(dataclasses.replace(job, warm=True))
        except trio.WouldBlock:
            log.info("warm-up queue full: %s stays cold until read", job.digest.hex()[:16])
            return
        self.warm_pending_bytes += job.size

    async def _warm_up(self) -> None:
        async for job in self._warm_receive:
            try:
                async for _ in self.stream(job):
                    pass
            except (RestoreFailed, OSError) as exc:  # damaged, or the store out of reach
                log.warning("warm-up of %s failed: %s", job.digest.hex()[:16], exc)
            finally:
                self.warm_pending_bytes -= job.size

    async def stream(self, job: Job) -> AsyncIterator[bytes | bytearray | memoryview | FilePart]:
        """The job's bytes as they come. Raises :class:`RestoreFailed` if the object
        cannot be served, ``OSError(ETIMEDOUT)`` if its store does not answer (before the
        first piece: nothing was sent yet)."""
        if self.active >= BUSY:
            job = dataclasses.replace(job, piece=job.piece // 4)
        self.active += 1
        try:
            spans = self._hot_spans(job)
            if spans is not None:
                async for data in self._stream_hot(job, spans):
                    yield data
            else:
                async for data in self._stream_job(job):
                    yield data
        finally:
            self.active -= 1

    def _hot_spans(self, job: Job) -> dict[int, HotSpan] | None:
        """Every span of a plain restore, if all are hot here; else None (a job)."""
        hot = self.source.hot
        if hot is None or job.zstd or job.warm:
            return None
        end = job.stop
        if end <= job.start:
            return None
        known = hot.lookup(job.digest)
        wanted = range(job.start // SPAN, (end - 1) // SPAN + 1)
        return known if all(index in known for index in wanted) else None

    async def _stream_hot(
        self, job: Job, spans: dict[int, HotSpan]
    ) -> AsyncIterator[bytes | bytearray | memoryview | FilePart]:
        """A restore whose spans are all hot, sent by this process without a worker.

        A worker's bytes would cross a socket to reach this process, which sends every
        response anyway: with the worker's own read and digest, that hop made a hot
        restore cost the two processes ~1.4 core-seconds per GB (8 restores at once);
        read, checked and sent here, ~0.9. A span in the page cache is checked on the
        event loop (what needs the disk is checked in a thread: the loop never waits for
        one) against its digest (XXH3, ~0.04 ms per MiB).

        Where the connection sends files itself (``job.zero_copy``), a span is checked
        through a mapping of its segment and comes as a :class:`FilePart` that hypercorn
        sends with ``sendfile(2)``: this process copies none of its bytes. Otherwise it
        is read as one ``bytes`` object and handed to hypercorn whole, which sends
        ``bytes`` without copying them (anything else it copies), so the ``pread`` is the
        span's only copy here; past :data:`BUSY` restores at once it goes in
        ``job.piece`` views instead, each copied by hypercorn: whole spans answered ~10%
        more requests under bench.load, but its server then peaked ~4 MB higher, past
        the tree's 150 MB. A span that fails its digest (it is dropped) and everything
        after it is served by a job from the chunk store.
        """
        hot = self.source.hot
        assert hot is not None
        files = SpanFiles(hot) if job.zero_copy else None
        read = hot.read_bytes if files is None else files.verified
        end = job.stop
        position = job.start
        try:
            while position < end:
                index = position // SPAN
                span = spans[index]
                if hot.in_page_cache(span):
                    data = read(job.digest, index, span)
                else:
                    data = await trio.to_thread.run_sync(read, job.digest, index, span)
                if data is None:  # damaged or dropped meanwhile: the store has the bytes
                    job = dataclasses.replace(job, start=position)
                    async for part in self._stream_job(job):
                        yield part
                    return
                self.stats.hot_hits += 1
                lo = index * SPAN
                a, b = position - lo, min(end, lo + span.length) - lo
                if isinstance(data, FilePart):
                    self.stats.hot_sendfiles += 1
                    yield data.part(a, b)
                elif (a, b) == (0, span.length) and job.piece >= span.length:
                    yield data  # whole, as bytes: sent without a copy
                else:  # views: hypercorn copies each (a Range's ends, or a busy server)
                    with memoryview(data) as view:
                        for at in range(a, b, job.piece):
                            with view[at : min(b, at + job.piece)] as piece:
                                yield piece
                del data  # sent: the next span is read without this one held
                position = lo + span.length
        finally:
            if files is not None:
                files.close()  # every part of it was sent: the sends return when queued

    async def _stream_job(self, job: Job) -> AsyncIterator[bytes]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for sock in (ours, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        ours.setblocking(False)
        reader = trio.socket.from_stdlib_socket(ours)
        worker = await self._hand_over(job, theirs)
        try:
            async for data in _frames(reader, self.stats):
                yield data
        finally:
            reader.close()  # a job still sending gets EPIPE and stops
            if worker is not None:
                worker.active -= 1

    async def _hand_over(self, job: Job, theirs: socket.socket) -> _Worker | None:
        """Give the job to the least busy worker process, else run it in a thread here."""
        for worker in sorted(self._workers, key=_load):
            control = worker.control
            if control is None:
                continue
            fds = array.array("i", [theirs.fileno()])
            try:
                async with worker.lock:
                    await control.sendmsg(
                        [job.encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
                    )
            except OSError as exc:  # it died: its supervisor starts another
                log.warning("restore worker unavailable (%s); trying elsewhere", exc)
                continue
            theirs.close()
            worker.active += 1
            return worker
        assert self._nursery is not None, "RestorePool.run is not running"
        self._nursery.start_soon(trio.to_thread.run_sync, serve_job, self.source, job, theirs)
        return None


def _load(worker: _Worker) -> int:
    return worker.active


async def _frames(sock: trio.socket.SocketType, totals: JobStats) -> AsyncIterator[bytes]:
    header = memoryview(bytearray(FRAME.size))
    while True:
        await _receive_into(sock, header)
        kind, length = FRAME.unpack(header)
        if kind == DATA:
            # Passed on as received: bytes go to hypercorn without a copy (a bytearray
            # would be copied there, and zeroed here first).
            while length:
                data = await sock.recv(length)
                if not data:
                    raise RestoreFailed("the restore job ended early (its worker died?)")
                length -= len(data)
                yield data
            continue
        payload = bytearray(length)
        await _receive_into(sock, memoryview(payload))
        if kind == END:
            for name, value in json.loads(payload).items():
                setattr(totals, name, getattr(totals, name) + value)
            return
        elif kind == FAIL:
            raise RestoreFailed(payload.decode(errors="replace"))
        elif kind == UNAVAILABLE:  # the store did not answer: a 503, not a damaged object
            raise OSError(errno.ETIMEDOUT, payload.decode(errors="replace"))
        else:
            raise RestoreFailed(f"restore job sent an unknown frame {kind!r}")


async def _receive_into(sock: trio.socket.SocketType, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = await sock.recv_into(view[got:])
        if n == 0:
            raise RestoreFailed("the restore job ended early (its worker died?)")
        got += n
