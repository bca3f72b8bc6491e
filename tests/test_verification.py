"""Every byte served is verified: damaged bytes are an error, never a 200 with wrong data.

Chunks are stored as zstd frames, or raw where zstd does not pay; each is checked against
its id (plain restores) or its frame digest (``--compressed`` restores send stored frames
without decoding them). Recent objects are also kept decoded in the hot cache, checked by
a digest per span: a damaged span is a miss, and the store serves the bytes instead.
The upload paths run with restore worker processes (default) and in-process threads.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import struct
import time
from pathlib import Path

import pytest
import zstandard
from conftest import Server, StartServer, curl, settled
from conftest import server_stats as stats

from cachesrv.restore.hot import HotCache, SpanFiles

NO_HOT = ["--hot-cache-bytes", "0"]
WORKERS = pytest.mark.parametrize("workers", ["0", "1"], ids=["threads", "process"])


def compressible(size: int) -> bytes:
    """Bytes zstd halves (stored as zstd frames)."""
    return os.urandom(size // 2).hex().encode()[:size]


def corrupt_chunk(data_dir: Path, nth: int) -> None:
    """Flip a byte inside the stored bytes of the nth chunk of the index (by pack offset)."""
    index = sqlite3.connect(data_dir / "chunks" / "index.sqlite")
    rows = index.execute(
        "SELECT p.name, c.offset, c.length FROM chunks c JOIN packs p ON p.id = c.pack "
        "ORDER BY c.pack, c.offset"
    ).fetchall()
    index.close()
    name, offset, length = rows[nth]
    _flip(data_dir / "chunks" / "packs" / name, offset + length // 2)


def corrupt_hot_spans(data_dir: Path, only: int | None = None) -> int:
    """Flip a byte in every span of the hot cache (``only``: every span of that index);
    returns how many."""
    index = sqlite3.connect(data_dir / "hot" / "index.sqlite")
    rows = index.execute(
        "SELECT g.name, s.offset, s.length FROM spans s JOIN segments g ON g.id = s.segment"
        + ("" if only is None else f" WHERE s.idx = {only:d}")
    ).fetchall()
    index.close()
    for name, offset, length in rows:
        _flip(data_dir / "hot" / "segments" / name, offset + length // 2)
    return len(rows)


def _flip(path: Path, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


def codecs(data_dir: Path) -> set[int]:
    index = sqlite3.connect(data_dir / "chunks" / "index.sqlite")
    found = {row[0] for row in index.execute("SELECT DISTINCT codec FROM chunks")}
    index.close()
    return found


def upload_then_damage(start_server: StartServer, data: bytes, nth: int, workers: str) -> Server:
    server = start_server(args=[*NO_HOT, "--restore-workers", workers])
    assert curl("-f", "-T", "-", f"{server.url}/obj.bin", input=data).returncode == 0
    settled(server)  # compressed: what is damaged is the stored frame a restore sends
    server.stop()
    corrupt_chunk(server.data, nth)
    return start_server(args=[*NO_HOT, "--restore-workers", workers], data=server.data)


@WORKERS
@pytest.mark.parametrize("kind", ["zstd", "raw"])
def test_damaged_first_chunk_is_a_clean_500_plain_range_and_compressed(
    start_server: StartServer, workers: str, kind: str
) -> None:
    data = compressible(2_000_000) if kind == "zstd" else os.urandom(2_000_000)
    server = upload_then_damage(start_server, data, 0, workers)
    assert codecs(server.data) == ({0} if kind == "zstd" else {1})
    for extra in ([], ["-r", "0-999"], ["--compressed"]):
        result = curl(*extra, "-w", "\n%{http_code}", f"{server.url}/obj.bin")
        body, _, status = result.stdout.rpartition(b"\n")
        assert status == b"500", extra
        assert "damaged" in json.loads(body)["message"]
    assert "does not match" in server.log_text() or "undecodable" in server.log_text()
    assert stats(server)["since_start"]["corrupt_chunks"] >= 3  # type: ignore[index]


@WORKERS
@pytest.mark.parametrize("kind", ["zstd", "raw"])
def test_damaged_chunk_mid_body_fails_the_transfer(
    start_server: StartServer, workers: str, kind: str
) -> None:
    data = compressible(30_000_000) if kind == "zstd" else os.urandom(30_000_000)
    server = upload_then_damage(start_server, data, -1, workers)  # the headers are long gone
    for extra in ([], ["--compressed"], ["-r", "1000000-"]):
        result = curl("-f", *extra, "-o", "-", f"{server.url}/obj.bin")
        assert result.returncode != 0, f"curl {extra} must see a failed transfer"
        assert len(result.stdout) < len(data)
        assert not data.startswith(result.stdout) or len(result.stdout) < len(data) - 1000
    assert stats(server)["since_start"]["corrupt_chunks"] >= 3  # type: ignore[index]


@WORKERS
def test_every_codec_and_encoding_restores_byte_identical(
    start_server: StartServer, workers: str
) -> None:
    # no grouping: a run of these chunks can save ~2% of its raw bytes together, at
    # GROUP_GAIN's line (1 of 30 simulated uploads grouped one); grouped frames are
    # tests/test_grouped_frames.py's
    server = start_server(args=["--restore-workers", workers, "--group-level", "0"])
    squeezable, random = compressible(3_000_000), os.urandom(1_500_000)
    data = squeezable + random + squeezable[:700_000]
    assert curl("-f", "-T", "-", f"{server.url}/mix.bin", input=data).returncode == 0
    settled(server)  # the new chunks compressed in the background
    assert codecs(server.data) == {0, 1}
    assert curl("-f", f"{server.url}/mix.bin").stdout == data
    assert (
        curl("-f", "-r", "1048570-3100000", f"{server.url}/mix.bin").stdout
        == (data[1048570:3100001])
    )
    zstd_body = curl("-f", "-H", "Accept-Encoding: zstd", f"{server.url}/mix.bin").stdout
    assert zstandard.ZstdDecompressor().decompressobj().decompress(zstd_body) != b""
    assert curl("-f", "--compressed", f"{server.url}/mix.bin").stdout == data
    assert len(zstd_body) < len(data) * 0.9  # stored frames were sent, not the raw bytes


@WORKERS
def test_a_damaged_hot_span_is_never_served_the_store_serves_instead(
    start_server: StartServer, workers: str
) -> None:
    server = start_server(args=["--restore-workers", workers])
    data = compressible(5_000_000)
    assert curl("-f", "-T", "-", f"{server.url}/hot.bin", input=data).returncode == 0
    settled(server)  # the new version is decoded into the hot cache in the background
    assert curl("-f", f"{server.url}/hot.bin").stdout == data
    assert stats(server)["since_start"]["hot_span_hits"] == 5  # type: ignore[index]
    assert stats(server)["hot_bytes"] >= len(data)  # type: ignore[operator]
    server.stop()
    assert corrupt_hot_spans(server.data) == 10  # 5 spans, and their zstd form
    server = start_server(args=["--restore-workers", workers], data=server.data)
    assert curl("-f", "--compressed", f"{server.url}/hot.bin").stdout == data
    assert curl("-f", f"{server.url}/hot.bin").stdout == data  # from the chunk store
    assert (
        curl("-f", "-r", "2000000-2999999", f"{server.url}/hot.bin").stdout
        == (data[2000000:3000000])
    )
    numbers = stats(server)["since_start"]
    assert numbers["hot_span_hits"] >= 1  # type: ignore[index]  # spans re-added by the first GET
    assert numbers["hot_span_misses"] >= 5  # type: ignore[index]
    assert "does not match its digest" in server.log_text()


def hot_object(start_server: StartServer, name: str) -> tuple[Server, bytes]:
    """A server holding a 5-span object ``name``, all hot once the warm-up is done."""
    server = start_server()
    data = compressible(5_000_000)
    assert curl("-f", "-T", "-", f"{server.url}/{name}", input=data).returncode == 0
    settled(server)
    return server, data


def hot_digest(server: Server, name: str) -> bytes:
    """The digest the hot cache files the object under (its ETag is the first half)."""
    headers = curl("-fsI", f"{server.url}/{name}").stdout.decode()
    etag = next(line for line in headers.splitlines() if line.lower().startswith("etag:"))
    index = sqlite3.connect(server.data / "hot" / "index.sqlite")
    keys = [row[0] for row in index.execute("SELECT DISTINCT object FROM spans")]
    index.close()
    (digest,) = [key for key in keys if key.hex()[:32] == etag.split('"')[1]]
    return bytes(digest)


def test_a_span_damaged_mid_object_is_served_from_the_store_from_there_on(
    start_server: StartServer,
) -> None:
    # a restore that is all hot is sent by the server process itself (not a job): the
    # span that fails its digest is dropped, and the rest comes from a job, verified
    server, data = hot_object(start_server, "mid.bin")
    before = stats(server)["since_start"]
    assert corrupt_hot_spans(server.data, only=2) == 2  # the plain span, and its zstd form
    assert curl("-f", f"{server.url}/mid.bin").stdout == data
    after = stats(server)["since_start"]
    # spans 0 and 1 sent here (sendfile), 3 and 4 hot in the job, 2 decoded from the store
    assert after["hot_span_hits"] - before["hot_span_hits"] == 4  # type: ignore[index, operator]
    assert after["hot_span_sendfiles"] - before["hot_span_sendfiles"] == 2  # type: ignore[index, operator]
    assert after["hot_span_misses"] - before["hot_span_misses"] == 1  # type: ignore[index, operator]
    assert "does not match its digest" in server.log_text()
    assert (
        curl("-f", "-r", "1500000-3499999", f"{server.url}/mid.bin").stdout
        == (data[1500000:3500000])
    )
    assert curl("-f", f"{server.url}/mid.bin").stdout == data


def test_hot_spans_out_of_the_page_cache_are_read_off_the_event_loop_and_whole(
    start_server: StartServer,
) -> None:
    server, data = hot_object(start_server, "cold.bin")
    os.sync()  # clean pages can be dropped: the segments then need the disk
    for segment in (server.data / "hot" / "segments").iterdir():
        fd = os.open(segment, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    # what the server asks before it reads a span on its event loop (cachestat(2))
    hot = HotCache(server.data, 1 << 30)
    spans = hot.lookup(hot_digest(server, "cold.bin"))
    assert len(spans) == 5
    assert not any(hot.in_page_cache(span) for span in spans.values())
    before = stats(server)["since_start"]
    assert curl("-f", f"{server.url}/cold.bin").stdout == data
    after = stats(server)["since_start"]
    assert after["hot_span_hits"] - before["hot_span_hits"] == 5  # type: ignore[index, operator]
    assert after["hot_span_sendfiles"] - before["hot_span_sendfiles"] == 5  # type: ignore[index, operator]
    # read in a thread, from the disk: in the page cache again (where the kernel can
    # tell; where it cannot, every span is read in a thread)
    cached = [hot.in_page_cache(span) for span in spans.values()]
    assert cached == [hot.knows_the_page_cache] * 5
    hot.close()


def test_hot_restores_go_out_with_sendfile_byte_identical_whole_and_in_ranges(
    start_server: StartServer,
) -> None:
    server, data = hot_object(start_server, "sent.bin")
    # (curl's options, the body, hot spans sent with sendfile, hot spans sent any way)
    cases = [
        ([], data, 5, 5),
        (["-0"], data, 5, 5),  # HTTP/1.0
        (["-r", "1500000-3499999"], data[1500000:3500000], 3, 3),  # spans 1-3, ends cut
        (["-r", "2100000-2100099"], data[2100000:2100100], 1, 1),
        # HTTP/2 has no file path: each span is one bytes object (hypercorn copies none)
        (["--http2-prior-knowledge"], data, 0, 5),
        (["--http2-prior-knowledge", "-r", "1500000-3499999"], data[1500000:3500000], 0, 3),
        (["--compressed"], data, 0, None),  # the hot zstd form, sent by a job
    ]
    for extra, expected, sendfiles, spans in cases:
        before = stats(server)["since_start"]
        result = curl("-f", "-D", "-", *extra, f"{server.url}/sent.bin")
        head, _, body = result.stdout.partition(b"\r\n\r\n")
        assert body == expected, extra
        if "--compressed" not in extra:
            assert f"content-length: {len(expected)}".encode() in head.lower(), extra
        after = stats(server)["since_start"]
        sent, hits = (after[k] - before[k] for k in ("hot_span_sendfiles", "hot_span_hits"))  # type: ignore[index, operator]
        assert sent == sendfiles, extra
        assert spans is None or hits == spans, extra
    assert f'"GET /sent.bin" 200 in=0 out={len(data)} ' in server.log_text()


def _segment_descriptors(server: Server) -> int:
    """How many descriptors the server process holds open on hot-cache segments."""
    segments = str(server.data / "hot" / "segments")
    held = 0
    for fd in os.listdir(f"/proc/{server.proc.pid}/fd"):
        try:
            held += os.readlink(f"/proc/{server.proc.pid}/fd/{fd}").startswith(segments)
        except FileNotFoundError:
            pass  # closed while listed
    return held


def test_clients_that_hang_up_mid_sendfile_leave_no_descriptor_open(
    start_server: StartServer,
) -> None:
    server = start_server()
    data = compressible(24_000_000)
    assert curl("-f", "-T", "-", f"{server.url}/big.bin", input=data).returncode == 0
    settled(server)
    assert curl("-f", f"{server.url}/big.bin").stdout == data  # segments opened once
    baseline = _segment_descriptors(server)  # the cache's own, kept for cachestat
    for _ in range(8):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            got = 0
            while got < 2_000_000:  # mid-body: the server is blocked on a full socket
                got += len(sock.recv(1 << 16))
            # a reset, not a clean close: sendfile fails with ECONNRESET or EPIPE
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    deadline = time.monotonic() + 20
    while _segment_descriptors(server) > baseline and time.monotonic() < deadline:
        time.sleep(0.05)  # each hung-up response ends as its sendfile fails
    assert _segment_descriptors(server) <= baseline
    assert curl("-f", f"{server.url}/big.bin").stdout == data
    assert server.proc.poll() is None


def test_a_span_being_sent_outlives_its_segment_and_a_damaged_one_is_not_sent(
    tmp_path: Path,
) -> None:
    hot = HotCache(tmp_path, 1 << 30)
    spans = [os.urandom(100_000), os.urandom(200_000)]
    written = [hot.append(index, span) for index, span in enumerate(spans)]
    assert all(written)
    hot.record(b"object", [w for w in written if w is not None])
    files = SpanFiles(hot)
    found = hot.lookup(b"object")
    part = files.verified(b"object", 1, found[1])
    assert part is not None and len(part) == 200_000
    hot.trim(0)  # the cache drops the segment (its file is unlinked) while it is sent
    assert not list((tmp_path / "hot" / "segments").iterdir())
    assert os.pread(part.fd, part.count, part.offset) == spans[1]
    assert os.pread(part.fd, 1000, part.part(5, 1005).offset) == spans[1][5:1005]
    files.close()
    hot.close()

    hot = HotCache(tmp_path / "again", 1 << 30)
    written = [hot.append(0, spans[0])]
    hot.record(b"object", [w for w in written if w is not None])
    (segment,) = (tmp_path / "again" / "hot" / "segments").iterdir()
    _flip(segment, 50_000)
    files = SpanFiles(hot)
    assert files.verified(b"object", 0, hot.lookup(b"object")[0]) is None
    assert hot.lookup(b"object") == {}  # dropped: the store serves it from now on
    files.close()
    hot.close()


def test_a_hot_cache_of_an_older_format_is_dropped_at_start_and_refilled(
    start_server: StartServer,
) -> None:
    # its spans carry BLAKE3 digests (user_version 0): checked as XXH3 they would all be
    # misses logged as damage, and their segments would hold disk nobody counts
    server, data = hot_object(start_server, "old.bin")
    server.stop()
    index = sqlite3.connect(server.data / "hot" / "index.sqlite")
    index.execute("PRAGMA user_version = 0")
    index.close()
    assert list((server.data / "hot" / "segments").iterdir())
    server = start_server(data=server.data)
    assert not list((server.data / "hot" / "segments").iterdir())
    assert stats(server)["hot_bytes"] == 0
    assert "dropped 1 segments of index version 0" in server.log_text()
    assert curl("-f", f"{server.url}/old.bin").stdout == data  # decoded, and hot again
    assert curl("-f", f"{server.url}/old.bin").stdout == data
    assert stats(server)["since_start"]["hot_span_hits"] == 5  # type: ignore[index]
    assert "does not match its digest" not in server.log_text()


def test_undamaged_objects_still_serve(server: Server) -> None:
    data = os.urandom(100_000)
    curl("-f", "-T", "-", f"{server.url}/ok.bin", input=data)
    assert curl("-f", f"{server.url}/ok.bin").stdout == data
