"""The load benchmark: many CI clients at once against one server, on loopback.

N clients (default 24) for T seconds (default 20), each a thread with its own persistent
``http.client`` connection (no process per request), pick requests at random by weight:

* ``get``: GET of a 5 MB object (uploaded before the load starts), body read and counted;
* ``head``: HEAD of it;
* ``upload``: multipart ``POST /upload`` of 500 KB of new compressible bytes (~3x with
  zstd, never seen before: the costly path of a deduplicating store) to a path of the
  client's own (8 per client, rewritten in turn);
* ``keyed`` (the ``long`` profile): ``PUT /-/cache/<key>?replace=true`` of 500 KB, then
  ``GET /-/cache/<missing key>?restore-keys=<the client's prefix>`` (a fallback restore),
  timed as two kinds, ``cache_put`` and ``cache_restore``. The peer has no keyed caches:
  it skips that kind (its clients do only the others).

The same profile runs against the hypercorn ceiling app (to show that the client is not
the bottleneck: it answers every kind without doing any work), cachesrv (fresh store) and
go-simple-uploader (fresh directory) in the same run. Reported per server and kind:
requests completed, errors (transport errors, wrong lengths, unexpected statuses), 503
answers apart (a concurrency limit may answer 503 + Retry-After; the client then waits
min(Retry-After, 1 s)), p50/p99 latency; RSS of the server's process tree sampled every
0.5 s: peak, and the mean over the last minute (the last third if the load is shorter than
3 minutes) next to the first one, to show whether memory stays flat; the client's CPU use.

Everything is bounded: each client stops at the deadline or after ``max_requests``
requests, every request has a socket timeout, threads are joined with a timeout.

    python -m bench.load                         # default: 24 clients, 20 s
    python -m bench.load --profile long          # 48 clients, 180 s, with keyed restores
    python -m bench.load --profile uploads       # 24 clients, 20 s, uploads of 5 MB only
    python -m bench.load --clients 4 --duration 3 --no-peer --json /tmp/load.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import http.client
import json
import multiprocessing
import random
import signal
import statistics
import struct
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

if __package__ in (None, ""):  # `python bench/load.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import peer as peer_mod  # noqa: E402
from bench.procs import (  # noqa: E402
    MB,
    ServerProcess,
    free_port,
    fresh_dir,
    log,
    python_env,
    raise_on_sigterm,
)

OBJECT_PATH = "load/object-5mb.bin"
KINDS = ("get", "head", "upload", "cache_put", "cache_restore")
TARGETS = ("ceiling", "cachesrv", "peer")
_ALPHABET4 = bytes(b"ACGT"[i % 4] for i in range(256))  # 2 bits of entropy per byte


@dataclass(frozen=True)
class Profile:
    """What the clients do. ``weights``: op -> relative weight (get, head, upload, keyed)."""

    name: str
    clients: int
    duration: float
    weights: dict[str, float]
    object_bytes: int = 5_000_000
    upload_bytes: int = 500_000
    max_requests: int = 200_000  # per client: a bound even if the server is infinitely fast
    timeout: float = 30.0  # per request (socket timeout)
    client_procs: int = 1  # client processes the threads are spread over (GIL check)


PROFILES: dict[str, Profile] = {
    "default": Profile("default", 24, 20.0, {"get": 1.0, "head": 1.0, "upload": 1.0}),
    "long": Profile("long", 48, 180.0,
                    {"get": 1.0, "head": 1.0, "upload": 1.0, "keyed": 1.0}),
    # every client saving a cache at once: what uploads hold, per upload in flight
    "uploads": Profile("uploads", 24, 20.0, {"upload": 1.0}, upload_bytes=5_000_000),
}


def profile(name: str, clients: int | None = None, duration: float | None = None,
            weights: dict[str, float] | None = None, client_procs: int | None = None
            ) -> Profile:
    """A preset, optionally with other clients / duration / weights / client processes."""
    p = PROFILES[name]
    return replace(p, clients=clients or p.clients,
                   duration=duration if duration is not None else p.duration,
                   weights=weights or p.weights, client_procs=client_procs or p.client_procs)


def parse_weights(text: str) -> dict[str, float]:
    """``get=1,head=1,upload=1,keyed=0`` -> dict."""
    out: dict[str, float] = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        k = k.strip()
        if k not in ("get", "head", "upload", "keyed"):
            raise ValueError(f"unknown request kind {k!r}")
        out[k] = float(v)
    if not any(w > 0 for w in out.values()):
        raise ValueError("all weights are 0")
    return out


# --------------------------------------------------------------------------- the client


def compressible(rng: random.Random, n: int) -> bytes:
    """``n`` new bytes that zstd compresses ~3x."""
    return rng.randbytes(n).translate(_ALPHABET4)


_POOL_BYTES = 8 << 20
_pool: bytes | None = None
_pool_lock = threading.Lock()


def pool() -> bytes:
    """8 MiB of compressible bytes (made once per process) that uploads are cut from."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = compressible(random.Random("load-pool"), _POOL_BYTES)
        return _pool


def fresh_upload(rng: random.Random, n: int, stamp: bytes) -> bytearray:
    """``n`` compressible bytes no server has seen: a window of the pool with a 16-byte
    stamp unique to this request every 4 KiB, so that every content-defined chunk is new
    (cheap for the client: ~50 us instead of ~1.4 ms to generate new bytes)."""
    src = pool()
    off = rng.randrange(0, len(src) - n)
    buf = bytearray(src[off : off + n])
    for i in range(0, n - 16, 4096):
        buf[i : i + 16] = stamp
    return buf


def multipart_body(path: str, data: bytes | bytearray, boundary: str) -> bytes:
    """A ``multipart/form-data`` body with fields ``path`` and ``file``, as curl -F sends."""
    b = boundary.encode()
    return b"".join([
        b"--", b, b'\r\nContent-Disposition: form-data; name="path"\r\n\r\n',
        path.encode(), b"\r\n--", b,
        b'\r\nContent-Disposition: form-data; name="file"; filename="blob.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n", data, b"\r\n--", b, b"--\r\n",
    ])


@dataclass
class KindStats:
    """What one client saw of one kind of request."""

    ok: int = 0
    errors: int = 0
    unavailable: int = 0  # 503 answers
    latencies: list[float] = field(default_factory=list)  # seconds, completed requests
    error_samples: list[str] = field(default_factory=list)


class Client:
    """One CI client: a thread with a persistent connection, doing requests until the
    deadline or ``profile.max_requests``."""

    def __init__(self, cid: int, port: int, prof: Profile, ops: list[str],
                 op_weights: list[float], start_at: float, deadline: float) -> None:
        self.cid = cid
        self.port = port
        self.prof = prof
        self.ops = ops
        self.op_weights = op_weights
        self.start_at = start_at  # time.monotonic() values (CLOCK_MONOTONIC: one clock
        self.deadline = deadline  # for every process of the machine)
        self.rng = random.Random(f"load-client-{cid}")
        self.stats = {k: KindStats() for k in KINDS}
        self.conn: http.client.HTTPConnection | None = None
        self.buf = bytearray(1 << 20)
        self.boundary = f"----cachesrv-bench-{cid}-{self.rng.getrandbits(48):x}"
        self.n = 0
        # the ceiling app answers every GET with its one blob: lengths of keyed restores
        # are checked against the upload only on real servers (http.client checks
        # Content-Length everywhere)
        self.check_restore_len = True
        self.thread = threading.Thread(target=self._run, name=f"load-client-{cid}",
                                       daemon=True)

    # -- plumbing
    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                   timeout=self.prof.timeout)
        return self.conn

    def _drop(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()
            self.conn = None

    def _request(self, kind: str, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None, ok: tuple[int, ...] = (200,),
                 expect_len: int | None = None) -> bool:
        """One timed request; True if it completed as expected."""
        st = self.stats[kind]
        t0 = time.monotonic()
        try:
            conn = self._connection()
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            got = 0
            view = memoryview(self.buf)
            while n := resp.readinto(view):
                got += n
            status = resp.status
            retry_after = resp.getheader("Retry-After")
            if resp.will_close:
                self._drop()
        except (OSError, http.client.HTTPException) as exc:
            self._drop()
            st.errors += 1
            if len(st.error_samples) < 5:
                st.error_samples.append(f"{type(exc).__name__}: {exc}")
            return False
        elapsed = time.monotonic() - t0
        if status == 503:
            st.unavailable += 1
            try:
                wait = min(float(retry_after or 0.1), 1.0)
            except ValueError:
                wait = 0.1
            time.sleep(max(0.0, min(wait, self.deadline - time.monotonic())))
            return False
        if status not in ok or (expect_len is not None and got != expect_len):
            st.errors += 1
            if len(st.error_samples) < 5:
                st.error_samples.append(f"{method} {path}: HTTP {status}, {got} bytes")
            return False
        st.ok += 1
        st.latencies.append(elapsed)
        return True

    # -- the ops
    def _get(self) -> None:
        self._request("get", "GET", "/" + OBJECT_PATH, expect_len=self.prof.object_bytes)

    def _head(self) -> None:
        self._request("head", "HEAD", "/" + OBJECT_PATH)

    def _stamp(self) -> bytes:
        return struct.pack(">QQ", self.cid, self.n)

    def _upload(self) -> None:
        path = f"load/c{self.cid:03d}/u{self.n % 8}.bin"
        body = multipart_body(path, fresh_upload(self.rng, self.prof.upload_bytes,
                                                 self._stamp()), self.boundary)
        self._request("upload", "POST", "/upload", body,
                      {"Content-Type": f"multipart/form-data; boundary={self.boundary}"},
                      ok=(200, 201))

    def _keyed(self) -> None:
        prefix = f"load/c{self.cid:03d}/k"
        body = bytes(fresh_upload(self.rng, self.prof.upload_bytes, self._stamp()))
        if self._request("cache_put", "PUT", f"/-/cache/{prefix}{self.n % 8}?replace=true",
                         body, {"Content-Type": "application/octet-stream"},
                         ok=(200, 201)):
            self._request("cache_restore", "GET",
                          f"/-/cache/load/c{self.cid:03d}/missing?restore-keys={prefix}",
                          expect_len=self.prof.upload_bytes if self.check_restore_len
                          else None)

    def _run(self) -> None:
        time.sleep(max(0.0, min(self.start_at - time.monotonic(), 60.0)))
        ops = {"get": self._get, "head": self._head, "upload": self._upload,
               "keyed": self._keyed}
        try:
            while self.n < self.prof.max_requests and time.monotonic() < self.deadline:
                op = self.rng.choices(self.ops, self.op_weights)[0]
                ops[op]()
                self.n += 1
        finally:
            self._drop()


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[k]


def _drive_local(port: int, prof: Profile, cids: Sequence[int], ops: list[str],
                 op_weights: list[float], start_at: float, deadline: float,
                 check_restore_len: bool = True) -> dict[str, object]:
    """Run clients ``cids`` as threads of this process; their raw counts and latencies."""
    pool()  # made before the clock starts
    clients = [Client(i, port, prof, ops, op_weights, start_at, deadline) for i in cids]
    for c in clients:
        c.check_restore_len = check_restore_len
    cpu0 = time.process_time()
    for c in clients:
        c.thread.start()
    for c in clients:  # bounded: the deadline + one request timeout (+ a connect) at most
        c.thread.join(timeout=max(0.0, deadline - time.monotonic()) + 2 * prof.timeout + 5)
    kinds = {}
    for kind in KINDS:
        sts = [c.stats[kind] for c in clients]
        kinds[kind] = {
            "ok": sum(s.ok for s in sts), "errors": sum(s.errors for s in sts),
            "503": sum(s.unavailable for s in sts),
            "latencies": [x for s in sts for x in s.latencies],
            "error_samples": [e for s in sts for e in s.error_samples][:5],
        }
    return {"kinds": kinds, "cpu_s": time.process_time() - cpu0, "end": time.monotonic(),
            "stuck": sum(1 for c in clients if c.thread.is_alive())}


def drive(port: int, prof: Profile, keyed: bool = True, client_procs: int = 1,
          check_restore_len: bool = True) -> dict[str, object]:
    """Run the profile's clients against ``port`` (as threads of ``client_procs``
    processes); returns counts, latency percentiles and the client's CPU use."""
    weights = {k: w for k, w in prof.weights.items() if w > 0 and (keyed or k != "keyed")}
    ops, op_weights = list(weights), list(weights.values())
    procs = max(1, min(client_procs, prof.clients))
    groups = [list(range(i, prof.clients, procs)) for i in range(procs)]
    raws: list[dict[str, object]] = []
    if procs == 1:
        start_at = time.monotonic() + 0.2
        deadline = start_at + prof.duration
        raws.append(_drive_local(port, prof, groups[0], ops, op_weights, start_at, deadline,
                                 check_restore_len))
    else:
        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded process
        with concurrent.futures.ProcessPoolExecutor(procs, mp_context=ctx) as ex:
            start_at = time.monotonic() + 3.0  # time for the workers to start and import
            deadline = start_at + prof.duration
            futs = [ex.submit(_drive_local, port, prof, g, ops, op_weights, start_at,
                              deadline, check_restore_len) for g in groups]
            limit = deadline - time.monotonic() + 2 * prof.timeout + 30
            for f in futs:
                raws.append(f.result(timeout=max(1.0, limit)))
    end = max(float(r["end"]) for r in raws)  # type: ignore[arg-type]
    wall = end - start_at
    cpu = sum(float(r["cpu_s"]) for r in raws)  # type: ignore[arg-type]
    kinds: dict[str, dict[str, object]] = {}
    for kind in KINDS:
        parts = [r["kinds"][kind] for r in raws]  # type: ignore[index]
        ok, errors, unavailable = (sum(p["ok"] for p in parts), sum(p["errors"] for p in parts),
                                   sum(p["503"] for p in parts))
        if not (ok or errors or unavailable):
            continue
        lat = [x for p in parts for x in p["latencies"]]
        p50, p99 = _percentile(lat, 0.50), _percentile(lat, 0.99)
        kinds[kind] = {
            "completed": ok, "errors": errors, "503": unavailable,
            "p50_ms": None if p50 is None else round(p50 * 1000, 2),
            "p99_ms": None if p99 is None else round(p99 * 1000, 2),
            "mean_ms": round(statistics.fmean(lat) * 1000, 2) if lat else None,
            "error_samples": [e for p in parts for e in p["error_samples"]][:5],
        }
    total = sum(int(k["completed"]) for k in kinds.values())  # type: ignore[call-overload]
    return {
        "t_start_mono": start_at, "t_end_mono": end,
        "clients": prof.clients, "client_procs": procs, "duration_s": prof.duration,
        "wall_s": round(wall, 2), "ops": ops, "kinds": kinds, "completed": total,
        "errors": sum(int(k["errors"]) for k in kinds.values()),  # type: ignore[call-overload]
        "503": sum(int(k["503"]) for k in kinds.values()),  # type: ignore[call-overload]
        "requests_per_s": round(total / wall, 1) if wall > 0 else None,
        "client_cpu_fraction": round(cpu / wall, 3) if wall > 0 else None,
        "clients_still_running": sum(int(r["stuck"]) for r in raws),  # type: ignore[call-overload]
    }


# --------------------------------------------------------------------------- the servers


def _seed(port: int, obj: bytes) -> None:
    """Upload the GET object (multipart, as every server here takes it) and check it."""
    boundary = "----cachesrv-bench-seed"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/upload", body=multipart_body(OBJECT_PATH, obj, boundary),
                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        resp = conn.getresponse()
        resp.read()
        if resp.status not in (200, 201):
            raise RuntimeError(f"seeding the load object: HTTP {resp.status}")
        conn.request("GET", "/" + OBJECT_PATH)
        resp = conn.getresponse()
        if resp.status != 200 or len(resp.read()) != len(obj):
            raise RuntimeError("the load object does not read back")
    finally:
        conn.close()


def _rss_figures(srv: ServerProcess, t_start: float, t_end: float) -> dict[str, object]:
    assert srv.sampler is not None
    points = [(t, r) for t, r in srv.sampler.points_since(t_start) if t <= t_end + 0.5]
    if not points:
        return {}
    # the last minute; for a load shorter than 3 minutes, the last third (so that the first
    # window and the last one differ and show whether memory grows)
    window = min(60.0, (t_end - t_start) / 3)
    last = [r for t, r in points if t >= t_end - window]
    first = [r for t, r in points if t <= t_start + window]
    step = max(1, len(points) // 120)  # at most ~120 points in the JSON
    return {
        "rss_peak_MB": round(max(r for _, r in points) / MB, 1),
        "rss_last_minute_mean_MB": round(statistics.fmean(last) / MB, 1) if last else None,
        "rss_first_minute_mean_MB": round(statistics.fmean(first) / MB, 1) if first else None,
        "rss_window_s": round(window, 1),
        "rss_timeline_MB": [[round(t - t_start, 1), round(r / MB, 1)]
                            for t, r in points[::step]],
    }


def run_target(target: str, prof: Profile, obj_file: Path, python: str,
               peer_binary: Path | None, data_root: Path | None, log_dir: Path
               ) -> dict[str, object]:
    """Start one server fresh, seed it, drive the load, stop it; the result document."""
    obj = obj_file.read_bytes()
    with fresh_dir(data_root, prefix=f"cachesrv-bench-load-{target}-") as root:
        port = free_port()
        keyed = True
        env, ready, ready_path = python_env(), 200, "/-/healthz"
        if target == "ceiling":
            argv = [python, "-m", "bench.baseline", "--port", str(port),
                    "--serve-file", str(obj_file)]
        elif target == "cachesrv":
            argv = [python, "-m", "cachesrv", "serve", "--host", "127.0.0.1",
                    "--port", str(port), "--data", str(root / "data")]
        else:
            assert peer_binary is not None
            (root / "pub").mkdir()
            (root / "tmp").mkdir()
            argv = [str(peer_binary)]
            env = peer_mod.serve_env(port, root / "pub", root / "tmp")
            ready, ready_path, keyed = None, "/", False
        with ServerProcess(f"load-{target}", argv, port, log_dir / f"load-{target}.log",
                           env=env, ready_status=ready, ready_path=ready_path,
                           timeline_every=0.5) as srv:
            assert srv.sampler is not None
            _seed(port, obj)
            time.sleep(0.5)
            result = drive(port, prof, keyed=keyed, client_procs=prof.client_procs,
                           check_restore_len=target != "ceiling")
            t_start = srv.sampler.at(float(result.pop("t_start_mono")))  # type: ignore[arg-type]
            t_end = srv.sampler.at(float(result.pop("t_end_mono")))  # type: ignore[arg-type]
            result.update(_rss_figures(srv, t_start, t_end))
        if not keyed and prof.weights.get("keyed", 0) > 0:
            result["kinds_skipped"] = {"keyed": "go-simple-uploader has no keyed caches"}
        return result


def run_all(prof: Profile, python: str = sys.executable, peer_binary: Path | None = None,
            data_root: Path | None = None, log_dir: Path | None = None,
            targets: Sequence[str] = TARGETS) -> dict[str, object]:
    """The profile against the ceiling app, cachesrv and (with a binary) the peer."""
    with fresh_dir(data_root, prefix="cachesrv-bench-load-") as tmp:
        log_dir = log_dir or tmp
        obj_file = tmp / "object.bin"
        obj_file.write_bytes(compressible(random.Random("load-object"), prof.object_bytes))
        doc: dict[str, object] = {"profile": asdict(prof), "targets": {}, "skipped": {}}
        for target in targets:
            if target == "peer" and peer_binary is None:
                doc["skipped"]["peer"] = "no go-simple-uploader binary"  # type: ignore[index]
                continue
            log(f"load: {prof.clients} clients x {prof.duration:g} s against {target}")
            try:
                doc["targets"][target] = run_target(  # type: ignore[index]
                    target, prof, obj_file, python, peer_binary, data_root, log_dir)
            except (RuntimeError, OSError, concurrent.futures.TimeoutError) as exc:
                log(f"load against {target} failed: {exc}")
                doc["skipped"][target] = f"failed: {exc}"[:2000]  # type: ignore[index]
    doc["checks"] = checks(doc)
    return doc


# --------------------------------------------------------------------------- reporting

#: figure name -> (target, path in the target's document)
FIGURE_SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {}
for _t, _p in (("ceiling", "load_ceiling_"), ("cachesrv", "load_"), ("peer", "load_peer_")):
    FIGURE_SOURCES.update({
        f"{_p}requests": (_t, ("completed",)),
        f"{_p}get_p99_ms": (_t, ("kinds", "get", "p99_ms")),
        f"{_p}errors": (_t, ("errors",)),
        f"{_p}503": (_t, ("503",)),
    })
    if _t != "ceiling":
        FIGURE_SOURCES.update({
            f"{_p}peak_rss_MB": (_t, ("rss_peak_MB",)),
            f"{_p}rss_last_minute_MB": (_t, ("rss_last_minute_mean_MB",)),
        })


def _dig(doc: object, path: Sequence[str]) -> object:
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


def figure_values(doc: dict[str, object]) -> dict[str, float]:
    """The load figures bench.run reports, from a ``run_all`` document."""
    out: dict[str, float] = {}
    for name, (target, path) in FIGURE_SOURCES.items():
        v = _dig(doc, ("targets", target, *path))
        if isinstance(v, int | float):
            out[name] = float(v)
    return out


def checks(doc: dict[str, object]) -> dict[str, object]:
    """The targets: cachesrv requests >= 0.6x the peer's, GET p99 <= 2x the peer's, zero
    errors; and the client check (the ceiling app must do better than both)."""
    v = figure_values(doc)
    out: dict[str, object] = {}
    if "load_requests" in v and v.get("load_peer_requests"):
        r = v["load_requests"] / v["load_peer_requests"]
        out["requests_vs_peer"] = {"ratio": round(r, 3), "target": ">= 0.6", "ok": r >= 0.6}
    if "load_get_p99_ms" in v and v.get("load_peer_get_p99_ms"):
        r = v["load_get_p99_ms"] / v["load_peer_get_p99_ms"]
        out["get_p99_vs_peer"] = {"ratio": round(r, 3), "target": "<= 2", "ok": r <= 2}
    if "load_errors" in v:
        out["errors"] = {"value": v["load_errors"], "target": "== 0", "ok": v["load_errors"] == 0}
    ceiling = v.get("load_ceiling_requests")
    notes = []
    procs = _dig(doc, ("profile", "client_procs"))
    cores = float(procs) if isinstance(procs, int) and procs > 0 else 1.0
    for t in TARGETS:
        cpu = _dig(doc, ("targets", t, "client_cpu_fraction"))
        if isinstance(cpu, float) and cpu >= 0.9 * cores:
            notes.append(f"against {t} the client used {cpu:.2f} cores of its {cores:g} "
                         "process(es), near the GIL's limit: its figures may be the client's "
                         "(try --client-procs 2)")
    if ceiling and v.get("load_requests", 0) >= 0.9 * ceiling:
        notes.append(f"cachesrv reached {v['load_requests'] / ceiling:.2f} of the ceiling "
                     "app's requests: its figure may be the stack's or the client's limit")
    if ceiling or notes:
        out["client_check"] = {
            "ceiling_requests": ceiling,
            "client_cpu_fraction": {t: _dig(doc, ("targets", t, "client_cpu_fraction"))
                                    for t in TARGETS},
            "verdict": "; ".join(notes) or "the client stayed below 0.9 of a core against "
                       "every server and cachesrv below 0.9 of the ceiling app: the client "
                       "was not the bottleneck",
        }
    return out


def format_table(doc: dict[str, object]) -> str:
    """Per server and kind: completed, errors, 503, p50, p99; then RSS and the checks."""
    targets = doc.get("targets") or {}
    assert isinstance(targets, dict)
    rows = [("server", "kind", "completed", "errors", "503", "p50 ms", "p99 ms")]
    for t, res in targets.items():
        for kind, k in res["kinds"].items():
            rows.append((t, kind, str(k["completed"]), str(k["errors"]), str(k["503"]),
                         "" if k["p50_ms"] is None else f"{k['p50_ms']:.1f}",
                         "" if k["p99_ms"] is None else f"{k['p99_ms']:.1f}"))
        rows.append((t, "all", str(res["completed"]), str(res["errors"]), str(res["503"]),
                     f"{res['requests_per_s']} req/s", f"client cpu {res['client_cpu_fraction']}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    for t, res in targets.items():
        if "rss_peak_MB" in res:
            lines.append(f"{t}: RSS peak {res['rss_peak_MB']} MB, mean of the first / last "
                         f"{res['rss_window_s']} s {res['rss_first_minute_mean_MB']} / "
                         f"{res['rss_last_minute_mean_MB']} MB")
        for kind, why in (res.get("kinds_skipped") or {}).items():
            lines.append(f"{t}: {kind} not run: {why}")
    for t, why in (doc.get("skipped") or {}).items():  # type: ignore[union-attr]
        lines.append(f"{t}: not measured: {why}")
    for name, c in (doc.get("checks") or {}).items():  # type: ignore[union-attr]
        if "ok" in c:
            lines.append(f"target {name}: {c.get('ratio', c.get('value'))} {c['target']} "
                         f"{'ok' if c['ok'] else 'MISS'}")
        else:
            lines.append(f"{name}: {c['verdict']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: run the load profile against the ceiling app, cachesrv and the peer."""
    ap = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", choices=list(PROFILES), default="default")
    ap.add_argument("--clients", type=int, help="clients (threads); default from the profile")
    ap.add_argument("--duration", type=float, help="seconds of load per server")
    ap.add_argument("--weights", type=parse_weights,
                    help="relative weights, e.g. get=1,head=1,upload=1,keyed=1")
    ap.add_argument("--client-procs", type=int,
                    help="spread the client threads over this many processes (default 1); "
                         "if the figures change with it, the client was the bottleneck")
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help="comma-separated subset of ceiling,cachesrv,peer")
    ap.add_argument("--no-peer", action="store_true", help="do not build or measure the peer")
    ap.add_argument("--peer-tarball", type=Path, default=None)
    ap.add_argument("--python", default=sys.executable, help="interpreter for the servers")
    ap.add_argument("--data-root", type=Path, help="where fresh stores are made (default TMPDIR)")
    ap.add_argument("--log-dir", type=Path, help="where server logs go (default a temp dir)")
    ap.add_argument("--json", type=Path, help="write the result document here")
    args = ap.parse_args(argv)
    prof = profile(args.profile, args.clients, args.duration, args.weights,
                   args.client_procs)
    if not 1 <= prof.clients <= 1000 or not 0 < prof.duration <= 3600:
        ap.error("clients must be 1..1000 and duration 0..3600 s")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if unknown := set(targets) - set(TARGETS):
        ap.error(f"unknown targets {sorted(unknown)}")
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    peer_binary: Path | None = None
    skipped_peer = None
    if "peer" in targets and not args.no_peer:
        try:
            peer_binary = peer_mod.build(args.peer_tarball, log=log)
        except peer_mod.PeerUnavailable as exc:
            skipped_peer = f"go-simple-uploader cannot be built here: {exc}"
            log(skipped_peer)
    elif "peer" in targets:
        skipped_peer = "--no-peer"
    log_dir = args.log_dir
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
    try:
        doc = run_all(prof, args.python, peer_binary, args.data_root, log_dir, targets)
    except KeyboardInterrupt:
        log("interrupted; servers stopped")
        return 130
    if skipped_peer:
        doc["skipped"]["peer"] = skipped_peer  # type: ignore[index]
    print(format_table(doc))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
