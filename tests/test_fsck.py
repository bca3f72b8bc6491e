"""fsck names what is broken; --repair quarantines it; a re-upload heals the object."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import StartServer, curl

from cachesrv.catalog import Catalog


def _fsck(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cachesrv", "fsck", "--data", str(data), *args],
        capture_output=True,
        text=True,
    )


def _chunk_location(data: Path, path: str) -> tuple[bytes, Path, int, int]:
    catalog = Catalog(data)
    ref = catalog.get(path)
    assert ref is not None
    # the object's first chunk: a damaged one is then met before the status line (a 500)
    pieces = catalog.manifest(ref.manifest_id).pieces
    chunk = next(p.chunk_id for p in pieces if p.chunk_id is not None)
    catalog.close()
    index = sqlite3.connect(data / "chunks" / "index.sqlite")
    pack, offset, length = index.execute(
        "SELECT p.name, c.offset, c.length FROM chunks c JOIN packs p ON p.id = c.pack "
        "WHERE c.id = ?",
        (chunk,),
    ).fetchone()
    index.close()
    return chunk, data / "chunks" / "packs" / pack, offset, length


def test_corrupt_chunk_is_named_quarantined_refused_and_healed_by_reupload(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(args=["--gc-interval", "0", "--hot-cache-bytes", "0"])
    damaged, intact = os.urandom(700 << 10), os.urandom(500 << 10)
    assert curl("-f", "-T", "-", f"{server.url}/a.bin", input=damaged).returncode == 0
    assert curl("-f", "-T", "-", f"{server.url}/b.bin", input=intact).returncode == 0
    server.stop()
    assert _fsck(server.data).returncode == 0

    chunk, pack, offset, length = _chunk_location(server.data, "a.bin")
    with open(pack, "r+b") as f:  # one flipped bit in the middle of the stored frame
        f.seek(offset + length // 2)
        byte = f.read(1)
        f.seek(offset + length // 2)
        f.write(bytes([byte[0] ^ 0x10]))

    result = _fsck(server.data)
    assert result.returncode == 1
    assert chunk.hex() in result.stderr
    assert "object 'a.bin': 1 of its chunks are corrupt" in result.stderr
    assert "b.bin" not in result.stderr

    repaired = _fsck(server.data, "--repair")
    assert f"quarantined chunk {chunk.hex()}" in json.loads(repaired.stdout)["repaired"]
    after = _fsck(server.data)
    assert after.returncode == 1 and "object 'a.bin'" in after.stderr
    assert "quarantined" in after.stderr

    server = start_server(args=["--gc-interval", "0", "--hot-cache-bytes", "0"], data=server.data)
    got = curl("-s", "-w", "\n%{http_code}", f"{server.url}/a.bin")
    body, _, status = got.stdout.rpartition(b"\n")
    assert status == b"500"
    assert "quarantined" in json.loads(body)["message"]
    assert curl("-f", f"{server.url}/b.bin").stdout == intact
    # the same bytes again: the quarantined chunk counts as missing, so it is stored anew
    assert curl("-f", "-T", "-", f"{server.url}/a.bin", input=damaged).returncode == 0
    assert curl("-f", f"{server.url}/a.bin").stdout == damaged
    server.stop()
    assert _fsck(server.data).returncode == 0


def test_torn_tail_is_a_note_and_repair_trims_it(start_server: StartServer) -> None:
    server = start_server(args=["--gc-interval", "0", "--hot-cache-bytes", "0"])
    data = os.urandom(300 << 10)
    assert curl("-f", "-T", "-", f"{server.url}/t.bin", input=data).returncode == 0
    server.stop()
    _, pack, _, _ = _chunk_location(server.data, "t.bin")
    size = pack.stat().st_size
    with open(pack, "ab") as f:  # what a crash mid-append leaves: half a record
        f.write(b"CSC1" + os.urandom(50))

    result = _fsck(server.data)
    assert result.returncode == 0, result.stderr
    assert any("torn tail" in note for note in json.loads(result.stdout)["notes"])
    assert _fsck(server.data, "--repair").returncode == 0
    assert pack.stat().st_size == size
    assert json.loads(_fsck(server.data).stdout)["notes"] == []
    server = start_server(args=["--gc-interval", "0", "--hot-cache-bytes", "0"], data=server.data)
    assert curl("-f", f"{server.url}/t.bin").stdout == data
