"""The baseline: a minimal raw ASGI app on hypercorn's trio worker, the same stack cachesrv
runs on, doing no work. What it reaches is the ceiling of this machine + stack, measured
in the same run as the server so that ratios compare like with like.

* ``PUT /<anything>``: the body is received and discarded unparsed → **PUT receive ceiling**.
* ``POST /upload``: the multipart body is received and discarded unparsed →
  **multipart receive ceiling** (the client's framing differs from PUT, so it is measured
  on its own).
* ``GET /<anything>``: the bytes of ``--serve-file`` (read into RAM at start) are sent in
  1 MiB pieces → **send ceiling**.
* ``GET /-/healthz``: 200 (readiness).

Run: ``python -m bench.baseline --port P [--serve-file FILE]``.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PIECE = 1 << 20


class BaselineApp:
    """Raw ASGI app: discards request bodies, serves one in-RAM blob to every GET."""

    def __init__(self, blob: bytes) -> None:
        self.length = len(blob)
        # Pre-cut so that serving costs no copy: the send ceiling, not a memcpy benchmark.
        self.pieces = [blob[i : i + PIECE] for i in range(0, len(blob), PIECE)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        received = 0
        while True:  # drain whatever body there is, unparsed
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            received += len(msg.get("body", b""))
            if not msg.get("more_body", False):
                break
        if method in ("PUT", "POST"):
            await self._small(send, 201, b"%d\n" % received)
        elif method in ("GET", "HEAD") and path == "/-/healthz":
            await self._small(send, 200, b"ok\n")
        elif method in ("GET", "HEAD"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/octet-stream"),
                        (b"content-length", str(self.length).encode()),
                    ],
                }
            )
            if method == "GET":
                for piece in self.pieces:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await self._small(send, 405, b"method not allowed\n")

    @staticmethod
    async def _small(send: Send, status: int, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})


async def _main(app: BaselineApp, config: Config) -> None:
    shutdown = trio.Event()

    async def on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                shutdown.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signal)
        await serve(app, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    """CLI: serve the baseline app on 127.0.0.1 until SIGTERM/SIGINT."""
    ap = argparse.ArgumentParser(prog="python -m bench.baseline",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--serve-file", type=Path, help="bytes every GET returns (read into RAM)")
    args = ap.parse_args(argv)
    blob = args.serve_file.read_bytes() if args.serve_file else b""
    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    trio.run(_main, BaselineApp(blob), config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
