"""Processes of a benchmark run: free loopback ports, server subprocesses that are always
stopped (process group SIGTERM, then SIGKILL; also on errors and Ctrl-C), and RSS sampling
of a server's whole process tree. Shared by ``bench.run`` and ``bench.load``."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000


def log(msg: str) -> None:
    """A progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port that was free a moment ago (bind to port 0 and let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """A small GET with the standard library (stats, health): status and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def python_env() -> dict[str, str]:
    """os.environ with the repository on PYTHONPATH (for ``python -m bench.*`` servers)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


@contextlib.contextmanager
def fresh_dir(root: Path | None, prefix: str = "cachesrv-bench-") -> Iterator[Path]:
    """A new empty directory under ``root`` (default TMPDIR), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: unwind like Ctrl-C so that every server is stopped."""
    raise KeyboardInterrupt(f"signal {signum}")


class RssSampler:
    """Samples the summed RSS of a process and all its descendants every ``interval`` s.

    ``take_peak`` gives the peak since its previous call (phases); with ``timeline_every``
    a ``(seconds since start, bytes)`` point is also kept at most that often (bounded by
    ``max_points``) for memory-over-time figures."""

    def __init__(self, pid: int, interval: float = 0.05, timeline_every: float | None = None,
                 max_points: int = 10_000) -> None:
        self.pid = pid
        self.interval = interval
        self.timeline_every = timeline_every
        self.max_points = max_points
        self.timeline: list[tuple[float, int]] = []
        self._peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._procs: dict[int, psutil.Process] = {}
        self._t0 = time.monotonic()

    def _sample(self) -> int:
        try:
            root = self._procs.get(self.pid) or psutil.Process(self.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        procs: dict[int, psutil.Process] = {}
        total = 0
        for p in tree:
            p = self._procs.get(p.pid, p)  # reuse the object: cheaper and pid-reuse safe
            try:
                total += p.memory_info().rss
                procs[p.pid] = p
            except psutil.Error:
                pass
        self._procs = procs
        return total

    def _loop(self) -> None:
        last_point = -1e9
        while not self._stop.is_set():
            rss = self._sample()
            now = time.monotonic() - self._t0
            with self._lock:
                self._peak = max(self._peak, rss)
                if (self.timeline_every is not None and now - last_point >= self.timeline_every
                        and len(self.timeline) < self.max_points):
                    self.timeline.append((now, rss))
                    last_point = now
            self._stop.wait(self.interval)

    def start(self) -> None:
        """Start sampling in a daemon thread."""
        self._t0 = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join(timeout=2)

    def take_peak(self) -> int:
        """Peak bytes since the last call (includes one fresh sample), and reset it."""
        rss = self._sample()
        with self._lock:
            peak, self._peak = max(self._peak, rss), 0
        return peak

    def points_since(self, t: float) -> list[tuple[float, int]]:
        """Timeline points taken at or after ``t`` seconds since the start."""
        with self._lock:
            return [p for p in self.timeline if p[0] >= t]

    def at(self, monotonic: float) -> float:
        """A ``time.monotonic()`` value on the timeline's clock."""
        return monotonic - self._t0

    def now(self) -> float:
        """Seconds since sampling started (the timeline's clock)."""
        return time.monotonic() - self._t0


class ServerProcess:
    """A server subprocess in its own process group: started, awaited, always stopped.

    Ready when ``GET ready_path`` answers ``ready_status`` (``None``: any HTTP answer,
    e.g. a 404 from a server without a health endpoint)."""

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path,
                 env: dict[str, str] | None = None, ready_status: int | None = 200,
                 ready_path: str = "/-/healthz", timeline_every: float | None = None) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.env = env
        self.ready_status = ready_status
        self.ready_path = ready_path
        self.timeline_every = timeline_every
        self.proc: subprocess.Popen[bytes] | None = None
        self.sampler: RssSampler | None = None
        self.store_url: str | None = None  # the object store it serves from, if any

    def __enter__(self) -> ServerProcess:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> None:
        """Start the process and return once it answers on ``ready_path``."""
        with open(self.log_path, "ab") as log_f:
            self.proc = subprocess.Popen(
                self.argv, stdout=log_f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT, env=self.env, start_new_session=True,
            )
        self.sampler = RssSampler(self.proc.pid, timeline_every=self.timeline_every)
        self.sampler.start()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before "
                                   f"it was ready; log:\n{self.log_tail()}")
            try:
                status, _ = http_get(self.port, self.ready_path, timeout=1.0)
                if self.ready_status is None or status == self.ready_status:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s; log:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``grace`` seconds."""
        if self.sampler is not None:
            self.sampler.stop()
        proc = self.proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the group is ours alone
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)  # also any worker that outlived its parent
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        self.proc = None

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines of the server's output."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def peak_rss(self) -> int:
        """Peak RSS of the process tree since the previous call."""
        assert self.sampler is not None
        return self.sampler.take_peak()
