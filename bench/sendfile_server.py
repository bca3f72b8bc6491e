"""The sendfile baseline: a tiny stdlib server that answers every ``GET /<anything>`` with
one file's bytes, sent by ``os.sendfile`` (no copy through Python), labelled
``Content-Encoding: zstd`` (or ``--encoding``).

``bench.run`` gives it the exact zstd body cachesrv answered to ``curl -H 'Accept-Encoding:
zstd'`` for v2, so that ``curl --compressed`` against it measures what curl itself can
decode — the limit of any ``Content-Encoding: zstd`` restore on this machine.

* ``GET|HEAD /-/healthz``: 200 (readiness).
* ``GET|HEAD /<anything else>``: 200, the file, ``Content-Length`` = its size.

Run: ``python -m bench.sendfile_server --port P --file F [--encoding zstd]``.
Standard library only.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer has a Content-Length
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # quiet: logging costs the baseline time the real server would not spend

    def _small(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self) -> None:
        if self.path.split("?", 1)[0] == "/-/healthz":
            self._small(200, b"ok\n")
            return
        path, encoding = self.server.file, self.server.encoding
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/x-tar")
            if encoding:
                self.send_header("Content-Encoding", encoding)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if self.command == "HEAD":
                return
            self.wfile.flush()
            sock, offset = self.connection.fileno(), 0
            while offset < size:
                sent = os.sendfile(sock, f.fileno(), offset, size - offset)
                if sent == 0:
                    raise ConnectionError("client gone")
                offset += sent

    do_GET = _serve
    do_HEAD = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], file: Path, encoding: str) -> None:
        super().__init__(addr, _Handler)
        self.file = file
        self.encoding = encoding


def main(argv: list[str] | None = None) -> int:
    """CLI: serve ``--file`` on 127.0.0.1 until SIGTERM/SIGINT."""
    ap = argparse.ArgumentParser(prog="python -m bench.sendfile_server",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--file", type=Path, required=True)
    ap.add_argument("--encoding", default="zstd", help="Content-Encoding ('' for none)")
    args = ap.parse_args(argv)
    if not args.file.is_file():
        ap.error(f"no file {args.file}")
    server = _Server((args.host, args.port), args.file, args.encoding)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
