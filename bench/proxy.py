"""A counting, rate-limiting TCP proxy: what crossed the wire, measured outside the client.

``Proxy(upstream_port, rate=12_500_000)`` listens on a free loopback port and forwards
every connection to ``127.0.0.1:upstream_port``, counting bytes each way
(``up``: client to server, ``down``: server to client) and, given ``rate`` (bytes per
second, shared by all connections in each direction), holding traffic to it as a link
of that speed would (100 Mbit/s is 12.5 MB/s). Used by tests/test_push_pull.py and by
bench/push.py; run alone it proxies until interrupted::

    python -m bench.proxy --upstream 8080 --port 9090 --mbit 100
"""

from __future__ import annotations

import argparse
import socket
import threading
import time


class _Bucket:
    """A token bucket of ``rate`` bytes per second (None: no limit), thread-safe."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.lock = threading.Lock()
        self.next_free = time.monotonic()

    def take(self, n: int) -> None:
        if self.rate is None:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_free)
            self.next_free = start + n / self.rate
            wait = self.next_free - now
        if wait > 0:
            time.sleep(wait)  # the link is busy: this is what the proxy simulates


class Proxy:
    def __init__(self, upstream_port: int, rate: float | None = None, port: int = 0) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port: int = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.up = 0
        self.down = 0
        self._buckets = {"up": _Bucket(rate), "down": _Bucket(rate)}
        self._lock = threading.Lock()
        self._watchers: list[tuple[int, threading.Event]] = []
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        with self._lock:
            self.up = self.down = 0

    def when_up(self, nbytes: int) -> threading.Event:
        """An event set once ``nbytes`` more have gone client to server."""
        event = threading.Event()
        with self._lock:
            self._watchers.append((self.up + nbytes, event))
        return event

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            for src, dst, way in ((client, server, "up"), (server, client, "down")):
                threading.Thread(target=self._pipe, args=(src, dst, way), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, way: str) -> None:
        bucket = self._buckets[way]
        try:
            while data := src.recv(64 * 1024):
                bucket.take(len(data))
                dst.sendall(data)
                self._count(way, len(data))
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _count(self, way: str, n: int) -> None:
        with self._lock:
            if way == "down":
                self.down += n
                return
            self.up += n
            fired = [w for w in self._watchers if w[0] <= self.up]
            self._watchers = [w for w in self._watchers if w[0] > self.up]
        for _, event in fired:
            event.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", type=int, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mbit", type=float, help="link speed (default: unlimited)")
    args = parser.parse_args()
    rate = args.mbit * 1e6 / 8 if args.mbit else None
    with Proxy(args.upstream, rate, args.port) as proxy:
        print(f"proxying {proxy.url} -> 127.0.0.1:{args.upstream}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
