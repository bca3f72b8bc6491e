"""An ingest worker process: runs the uploads the server forwards, several at once.

Started by :class:`cachesrv.ingest.workers.IngestPool` as
``python -m cachesrv.ingest.process``; see that module for why. Speaks
:mod:`cachesrv.ingest.frames` on a blocking Unix socket, and stops when the server
closes it (never on a signal: a SIGTERM to the process group must not end an upload
the server is still draining).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
from pathlib import Path

from cachesrv.chunking import ChunkParams
from cachesrv.ingest import frames
from cachesrv.ingest.session import IngestSession, may_defer
from cachesrv.malloc import bound_heap, give_back

log = logging.getLogger("cachesrv.ingest")

RECEIVE_BYTES = 1 << 20
FEED_FRAMES = 16  # DATA frames of one upload fed to its session at once, at most
# A worker that holds this much more than when it started, after an upload and a
# malloc_trim, asks to be replaced: a big upload leaves its heap fragmented (the Go
# cache: 31 -> 43 MB), and a fresh process costs less than carrying that into every
# restore's memory budget. Relative, because a fresh worker's size depends on the store
# (botocore adds ~13 MB).
RECYCLE_GROWTH = 8 << 20


def resident_bytes() -> int:
    """This process's RSS (0 where /proc is not there to say)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _Open:
    """One upload the worker is running: its session, and the write error that will be
    its answer (ENOSPC & co: the rest of its body is read and dropped)."""

    def __init__(self, session: IngestSession) -> None:
        self.session = session
        self.failure: OSError | None = None


def worker_main(
    sock: socket.socket,
    data: Path | None,
    params: ChunkParams,
    level: int,
    defer: bool = False,
    threads: int = 2,
    hard_limit: int | None = None,
    pin_ttl: float = 600.0,
    store_url: str | None = None,
    store_timeout: float = 10.0,
    group_level: int = 0,
) -> None:
    """Serve uploads until the server closes the socket. Several may be open at once
    (their frames interleave); each frame is worked on as it comes, so one core serves
    them all: an upload's body arrives at the client's pace, and its CPU time is a
    small part of that."""
    from cachesrv.backends import open_chunk_store

    store = open_chunk_store(data, store_url, store_timeout, hard_limit, pin_ttl)
    fresh = resident_bytes()
    decoder = frames.FrameDecoder()
    uploads: dict[int, _Open] = {}
    try:
        while True:
            received = decoder.next_frame()
            if received is None:
                incoming = sock.recv(RECEIVE_BYTES)
                if not incoming:
                    return
                decoder.feed(incoming)
                continue
            kind, number, payload = received
            if kind == frames.BEGIN:
                if number in uploads:
                    uploads.pop(number).session.abort()
                session = IngestSession(
                    store.writer(),
                    params,
                    level,
                    frames.decode_begin(payload),
                    threads=threads,
                    defer=may_defer(store, defer),
                    group_level=group_level,
                )
                uploads[number] = _Open(session)
            elif kind == frames.DATA:
                # the upload's next frames, if already here, go with it: one lookup of
                # their chunks (a transaction) instead of one per frame
                parts = [payload]
                while decoder.next_header() == (frames.DATA, number) and len(parts) < FEED_FRAMES:
                    parts.append(decoder.next_frame().payload)  # type: ignore[union-attr]
                upload = uploads.get(number)
                if upload is not None and upload.failure is None:
                    try:
                        upload.session.feed(*parts)
                    except OSError as exc:  # ENOSPC & co: keep reading, answer at the end
                        upload.failure = exc
            elif kind == frames.END:
                sock.sendall(_finish(number, uploads.pop(number, None), uploads, fresh))
            elif kind == frames.ABORT:
                if number in uploads:
                    uploads.pop(number).session.abort()
                sock.sendall(frames.frame(frames.ABORTED, upload=number))
    finally:
        store.close()


def _finish(number: int, ending: _Open | None, others: dict[int, _Open], fresh: int) -> bytes:
    """The answer to upload ``number``'s END: its manifest, or why it failed."""
    try:
        if ending is None:
            raise OSError(errno.EPROTO, f"no upload {number} in this worker")
        if ending.failure is not None:
            raise ending.failure
        stored = ending.session.finish()
    except OSError as exc:
        return frames.frame(frames.ERROR, frames.encode_error(exc), number)
    except Exception as exc:  # a chunk vanished (ChunkMissing), a bug: the upload fails
        log.exception("upload %d failed", number)
        failed = OSError(errno.EIO, f"{type(exc).__name__}: {exc}")
        return frames.frame(frames.ERROR, frames.encode_error(failed), number)
    stats = ending.session.stats
    del ending  # its buffers go before the heap is trimmed and measured
    grown = False
    if not others:  # what other uploads hold says nothing of fragmentation
        give_back()
        grown = resident_bytes() > fresh + RECYCLE_GROWTH
    return frames.frame(frames.RESULT, frames.encode_result(stats, stored, grown), number)


def _main() -> None:
    # The server stops workers by closing their socket, after it drained its requests.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parser = argparse.ArgumentParser(description="cachesrv ingest worker (started by the server)")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--chunk", type=int, nargs=3, required=True)
    parser.add_argument("--level", type=int, required=True)
    parser.add_argument("--defer", action="store_true", help="leave compression to the server")
    parser.add_argument("--group-level", type=int, default=0, help="0: never group chunks")
    parser.add_argument("--hard-limit", type=int, default=0, help="bytes; 0: none")
    parser.add_argument("--pin-ttl", type=float, required=True)
    parser.add_argument("--store", default=None)
    parser.add_argument("--store-timeout", type=float, default=10.0)
    args = parser.parse_args()
    bound_heap()
    sock = socket.socket(fileno=args.fd)
    sock.setblocking(True)  # the server's end is non-blocking, and so was the fd
    try:
        worker_main(
            sock,
            args.data,
            ChunkParams(*args.chunk),
            args.level,
            defer=args.defer,
            hard_limit=args.hard_limit or None,
            pin_ttl=args.pin_ttl,
            store_url=args.store,
            store_timeout=args.store_timeout,
            group_level=args.group_level,
        )
    except ConnectionError:
        pass


if __name__ == "__main__":
    _main()
