"""A restore worker process: takes jobs from the server, runs each in a thread of its own.

Started by :class:`cachesrv.restore.workers.RestorePool` as
``python -m cachesrv.restore.process``; see that module for why.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cachesrv.db import Database
from cachesrv.restore.job import Job, Source, run
from cachesrv.store import RELEASE_INTERVAL

log = logging.getLogger(__name__)

JOB_THREADS = 32  # concurrent jobs per worker process (more wait for a thread)


def worker_main(control: socket.socket, source: Source) -> None:
    """Take jobs until the server closes the control socket."""
    stop = threading.Event()
    threading.Thread(
        target=_release_unused, args=(source, stop), name="release", daemon=True
    ).start()
    try:
        with ThreadPoolExecutor(JOB_THREADS, thread_name_prefix="restore") as threads:
            while True:
                message, fds, _, _ = socket.recv_fds(control, 1 << 16, 1)
                if not message:
                    return
                out = socket.socket(fileno=fds[0])
                threads.submit(serve_job, source, Job.decode(message), out)
    finally:
        stop.set()


def _release_unused(source: Source, stop: threading.Event) -> None:
    """Close this process's read handles on packs that are gone, as the server does."""
    while not stop.wait(RELEASE_INTERVAL):
        try:
            source.store.release_unused()
        except Exception:
            log.exception("closing handles on removed packs failed; retried")


def serve_job(source: Source, job: Job, out: socket.socket) -> None:
    with out:
        out.setblocking(True)
        run(source, job, out)


def _main() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the server stops it: EOF on its socket
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parser = argparse.ArgumentParser(description="cachesrv restore worker (started by the server)")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--hot-bytes", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--store", default=None)
    parser.add_argument("--store-timeout", type=float, default=10.0)
    args = parser.parse_args()
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s restore-worker %(levelname)s %(message)s"
    )
    from cachesrv.malloc import bound_heap

    bound_heap()
    # Each job thread has its own connections to three databases; they read little.
    Database.cache_kib = 256
    source = open_source(args.data, args.hot_bytes, args.store, args.store_timeout)
    control = socket.socket(fileno=args.fd)
    control.setblocking(True)  # the server's end is non-blocking, and so was the fd
    try:
        worker_main(control, source)
    except (ConnectionError, KeyboardInterrupt):
        pass
    finally:
        close_source(source)


def open_source(
    data: Path | None, hot_bytes: int, store: str | None = None, store_timeout: float = 10.0
) -> Source:
    from cachesrv.backends import open_catalog, open_chunk_store
    from cachesrv.restore.hot import HotCache

    hot = HotCache(data, hot_bytes) if data is not None and hot_bytes > 0 else None
    chunks = open_chunk_store(data, store, store_timeout)
    return Source(chunks, open_catalog(data, store, store_timeout), hot)


def close_source(source: Source) -> None:
    source.store.close()
    source.catalog.close()
    if source.hot is not None:
        source.hot.close()


if __name__ == "__main__":
    _main()
