"""Caches of many small files: the background compresses runs of new chunks together
into grouped frames (``--group-level``) where that stores less than compressing each
alone. Seen from outside: fewer stored bytes than with every chunk its own frame,
dedup across versions intact, every restore (plain, ranged, ``--compressed``)
byte-identical, a damaged group never served and found by fsck.
"""

from __future__ import annotations

import io
import random
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import zstandard
from conftest import SeaweedFS, Server, StartServer, curl, server_stats, settled

from cachesrv.store import Codec
from cachesrv.store.s3 import open_object_store

NO_HOT = ["--hot-cache-bytes", "0", "--gc-interval", "0"]  # restores decode the store
_WORDS = [f"w{n:03x}" for n in range(400)]


def _file(rng: random.Random, name: str) -> bytes:
    """A small source or manifest file: words of one vocabulary, like a package tree."""
    if name.endswith(".json"):
        fields = ", ".join(f'"{rng.choice(_WORDS)}": "{rng.choice(_WORDS)}"' for _ in range(12))
        return f'{{"name": "{name}", {fields}}}\n'.encode()
    lines = [
        f"export function {rng.choice(_WORDS)}({rng.choice(_WORDS)}) "
        f"{{ return {rng.choice(_WORDS)}.{rng.choice(_WORDS)}({rng.randrange(100)}); }}"
        for _ in range(rng.randrange(5, 60))
    ]
    return "\n".join(lines).encode()


def _tree(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _versions() -> tuple[dict[str, bytes], dict[str, bytes]]:
    rng = random.Random(7)
    v1 = {}
    for n in range(2000):
        name = f"node_modules/pkg{n // 10}/{'package.json' if n % 10 == 0 else f'lib/m{n}.js'}"
        v1[name] = _file(rng, name)
    v2 = dict(v1)
    for name in list(v1)[::40]:  # a few dependency bumps
        v2[name] = _file(rng, name)
    return v1, v2


def _upload(server: Server, path: str, tar: bytes, tmp: Path) -> None:
    file = tmp / path
    file.write_bytes(tar)
    result = curl("-f", "-F", f"path={path}", "-F", f"file=@{file}", f"{server.url}/upload")
    assert result.returncode == 0, result.stderr


def _grouped_rows(data: Path) -> list[tuple[bytes, int, int, int]]:
    index = sqlite3.connect(data / "chunks" / "index.sqlite")
    rows = index.execute(
        "SELECT id, pack, offset, span FROM chunks WHERE codec = ?", (int(Codec.GROUP),)
    ).fetchall()
    index.close()
    return rows


def _fsck(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "cachesrv", "fsck", "--data", str(data), *args]
    return subprocess.run(command, capture_output=True, text=True)


def _restores_match(server: Server, path: str, tar: bytes) -> None:
    url = f"{server.url}/{path}"
    assert curl("-f", url).stdout == tar
    assert curl("-f", "--compressed", url).stdout == tar
    middle = len(tar) // 3
    assert curl("-f", "-r", f"{middle}-{middle + 99_999}", url).stdout == tar[middle:][:100_000]


def _save_both_and_restore(
    server: Server, v1: dict[str, bytes], v2: dict[str, bytes], tmp: Path
) -> int:
    """Upload both versions, check that v2 brought only what changed (dedup survives
    grouping) and that both restore identical; returns the stored bytes."""
    tars = {"v1.tar": _tree(v1), "v2.tar": _tree(v2)}
    _upload(server, "v1.tar", tars["v1.tar"], tmp)
    new_v1 = server_stats(server)["since_start"]["upload_new_bytes"]  # type: ignore[index]
    _upload(server, "v2.tar", tars["v2.tar"], tmp)
    numbers = settled(server)
    new_v2 = numbers["since_start"]["upload_new_bytes"] - new_v1  # type: ignore[index]
    changed = sum(len(v2[n]) for n in v2 if v2[n] != v1[n])
    assert changed <= new_v2 <= changed * 1.1
    for path, tar in tars.items():
        _restores_match(server, path, tar)
    return int(numbers["stored_bytes"])  # type: ignore[call-overload]


def test_small_files_share_frames_store_less_and_restore_identical(
    start_server: StartServer, tmp_path: Path
) -> None:
    v1, v2 = _versions()
    stored = {}
    for level in ("9", "0"):
        server = start_server(args=[*NO_HOT, "--group-level", level])
        stored[level] = _save_both_and_restore(server, v1, v2, tmp_path)
        server.stop()
        rows = _grouped_rows(server.data)
        if level == "9":
            assert len(rows) > 0.9 * len(set(v1.values()) | set(v2.values()))  # nearly all
            assert len({(pack, offset) for _, pack, offset, _ in rows}) <= 10
            packs = list((server.data / "chunks" / "packs").iterdir())
            assert len(packs) <= 0.01 * len(v1)  # files per tar member
        else:
            assert rows == []
        check = _fsck(server.data)
        assert check.returncode == 0, check.stdout + check.stderr
    assert stored["9"] < 0.8 * stored["0"]


def test_on_an_object_store_uploads_group_small_files_as_they_come(
    start_server: StartServer, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    """The S3 store compresses new chunks during the upload (a deferred write would be
    PUT twice): its uploads group them there, by the background's rule."""
    v1, v2 = _versions()
    stored = {}
    for level in ("9", "0"):
        url = seaweedfs.new_store_url()
        server = start_server(args=[*NO_HOT, "--store", url, "--group-level", level])
        stored[level] = _save_both_and_restore(server, v1, v2, tmp_path)
        server.stop()
        objects = open_object_store(url, timeout=10).child("chunks/")
        packs = list(objects.listing("packs/"))
        assert 1 <= len(packs) <= 0.01 * len(v1)  # objects per tar member
        command = [sys.executable, "-m", "cachesrv", "fsck", "--store", url]
        check = subprocess.run(command, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    assert stored["9"] < 0.8 * stored["0"]


def test_pieces_that_do_not_shrink_alone_are_grouped_where_they_shrink_together(
    start_server: StartServer, tmp_path: Path
) -> None:
    """Jars are deflated already: each alone is stored raw, yet two jars with entries in
    common shrink together. Here: random files, each a near copy of the one before (a
    byte changed every 4 KiB, so no chunk of one is a chunk of another)."""
    rng = random.Random(11)
    base = rng.randbytes(90_000)
    files = {}
    for n in range(6):
        near = bytearray(base)
        for at in range(n * 97, len(near), 4096):
            near[at] ^= 0xFF
        files[f"repo/lib{n}/lib{n}.jar"] = bytes(near)
    tar = _tree(files)
    stored = {}
    for level in ("9", "0"):
        server = start_server(args=[*NO_HOT, "--group-level", level])
        _upload(server, "jars.tar", tar, tmp_path)
        stored[level] = int(settled(server)["stored_bytes"])  # type: ignore[call-overload]
        _restores_match(server, "jars.tar", tar)
        server.stop()
        assert (_grouped_rows(server.data) != []) == (level == "9")
        check = _fsck(server.data)
        assert check.returncode == 0, check.stdout + check.stderr
    assert stored["0"] > 0.95 * sum(map(len, files.values()))  # alone: raw, every one
    assert stored["9"] < 0.4 * stored["0"]


def test_a_damaged_grouped_frame_is_never_served_and_fsck_finds_it(
    start_server: StartServer, tmp_path: Path
) -> None:
    v1, _ = _versions()
    tar = _tree(v1)
    server = start_server(args=NO_HOT)
    _upload(server, "v1.tar", tar, tmp_path)
    settled(server)
    server.stop()
    rows = _grouped_rows(server.data)
    _, pack, offset, span = rows[0]
    index = sqlite3.connect(server.data / "chunks" / "index.sqlite")
    (name,) = index.execute("SELECT name FROM packs WHERE id = ?", (pack,)).fetchone()
    index.close()
    with open(server.data / "chunks" / "packs" / name, "r+b") as f:  # one bit, mid-frame
        f.seek(offset + span // 2)
        byte = f.read(1)[0]
        f.seek(offset + span // 2)
        f.write(bytes([byte ^ 0x10]))
    server = start_server(args=NO_HOT, data=server.data)  # nothing decoded before
    url = f"{server.url}/v1.tar"
    for args in ([], ["--compressed"]):
        result = curl("-f", *args, url)
        assert result.returncode != 0 and result.stdout != tar  # a failure, never wrong bytes
    server.stop()
    check = _fsck(server.data)
    assert check.returncode != 0
    damaged = {cid for cid, p, o, _ in rows if (p, o) == (pack, offset)}
    assert all(cid.hex() in check.stdout + check.stderr for cid in damaged)
    assert _fsck(server.data, "--repair").returncode != 0  # reported, then quarantined
    server = start_server(args=NO_HOT, data=server.data)
    _upload(server, "v1.tar", tar, tmp_path)  # a re-upload stores the lost chunks anew
    settled(server)
    _restores_match(server, "v1.tar", tar)


def test_a_hot_version_restores_compressed_from_its_zstd_spans(
    start_server: StartServer, tmp_path: Path
) -> None:
    """The warm-up keeps each span's zstd form: a --compressed restore of a tree of
    grouped chunks is a hot read per span, not a decode and a re-encode per piece."""
    v1, _ = _versions()
    tar = _tree(v1)
    server = start_server(args=["--gc-interval", "0"])
    _upload(server, "v1.tar", tar, tmp_path)
    settled(server)  # the warm-up included
    before = server_stats(server)["since_start"]["hot_span_hits"]  # type: ignore[index]
    body = curl("-f", "-H", "Accept-Encoding: zstd", f"{server.url}/v1.tar").stdout
    spans = -(-len(tar) // (1 << 20))
    assert server_stats(server)["since_start"]["hot_span_hits"] == before + spans  # type: ignore[index]
    assert len(body) < len(tar) / 3
    frames = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True)
    assert frames.read() == tar  # a frame per span, concatenated
    assert curl("-f", "--compressed", f"{server.url}/v1.tar").stdout == tar
