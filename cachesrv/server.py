"""Running the app on hypercorn's trio worker, with a graceful SIGTERM."""

from __future__ import annotations

import logging
import signal
from typing import Any

import hypercorn.trio.tcp_server
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from cachesrv import malloc
from cachesrv.config import Config
from cachesrv.http import zerocopy
from cachesrv.http.app import App
from cachesrv.http.auth import Authorizer, TokensFile, TokensFileError
from cachesrv.lifecycle import service as lifecycle_service
from cachesrv.repository import Repository

log = logging.getLogger("cachesrv")
HEAP_TRIM_INTERVAL = 1.0  # seconds
# Bytes hypercorn asks of a connection's socket per read (its own is 64 KiB, a module
# constant with no setting). Each read is an h11 event, an ASGI message and a trio
# checkpoint. Server CPU-seconds receiving the Go v1 tar (736 MB, multipart) / v2
# (1058 MB), alternated runs: 64 KiB 1.72-1.94 / 2.66-3.00, 128 KiB 1.39-1.52 /
# 1.73-2.39, 256 KiB 0.97-1.36 / 1.66-1.88. But a read allocates its size: under
# bench.load's 24 clients the server's RSS peaked at 149.8-153.2 MB at 64 KiB,
# 149.9-150.1 at 128 KiB and 153.1-154.7 at 256 KiB (mean of the last 6.7 s 140-145,
# 143, 146-148), and memory is one budget of 150 MB. 1 MiB was slower still.
RECV_BYTES = 128 << 10


def hypercorn_config(config: Config) -> HypercornConfig:
    hypercorn.trio.tcp_server.MAX_RECV = RECV_BYTES  # read when each read is made
    if zerocopy.install():  # hot restores go out with sendfile(2)
        log.info("HTTP/1.1 restores of hot spans are sent with sendfile(2)")
    hc = HypercornConfig()
    host = f"[{config.host}]" if ":" in config.host else config.host
    hc.bind = [f"{host}:{config.port}"]
    hc.graceful_timeout = config.grace_period
    # hypercorn logs a request at its start and again at its end; the app logs each
    # request once, with its id and numbers (cachesrv.http.accesslog)
    hc.accesslog = None
    hc.errorlog = logging.getLogger("cachesrv.error")
    # Request line + headers beyond this are refused by h11 without reaching the app.
    hc.h11_max_incomplete_size = 64 * 1024
    hc.keep_alive_timeout = 75
    return hc


async def _until_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info(
                "%s: no new connections; in-flight requests have up to the grace period",
                signal.Signals(signum).name,
            )
            return


def serve(config: Config) -> None:
    """Serve until SIGTERM/SIGINT, then drain in-flight requests and return."""
    try:
        tokens = TokensFile(config.tokens) if config.tokens is not None else None
        authorizer = Authorizer(config.credentials, tokens, config.read_auth)
    except TokensFileError as exc:
        raise SystemExit(f"cachesrv: {exc}") from exc
    repo = Repository.open(config)
    try:
        where = config.store or config.local_dir
        log.info("cachesrv serving %s on http://%s:%d", where, config.host, config.port)
        app: Any = App(repo, authorizer)  # an ASGI callable; hypercorn's type for it is narrower
        trio.run(_serve_with_lifecycle, app, repo, config)
    finally:
        repo.close()


async def _give_back_heap() -> None:
    """Return the heap's free pages to the system every second: the server keeps restore
    frames on its heap (cachesrv.malloc), and under a mix of uploads and restores the
    freed holes between live blocks otherwise stay resident."""
    while True:
        await trio.sleep(HEAP_TRIM_INTERVAL)
        malloc.give_back()


async def _serve_with_lifecycle(app: Any, repo: Repository, config: Config) -> None:
    """The HTTP server, the worker pools and the lifecycle task (GC, access times) in one
    nursery: when serving ends (in-flight requests drained) the lifecycle task is
    cancelled between two increments and the workers' sockets are closed."""
    async with trio.open_nursery() as nursery:
        await nursery.start(repo.restores.run)
        await nursery.start(repo.ingest.run)
        await nursery.start(lifecycle_service.run, repo)
        nursery.start_soon(_give_back_heap)
        await hypercorn_serve(app, hypercorn_config(config), shutdown_trigger=_until_signal)
        nursery.cancel_scope.cancel()
