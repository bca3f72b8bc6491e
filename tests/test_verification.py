"""Every chunk is verified when read: damaged bytes are an error, never a 200 with wrong data."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from conftest import Server, StartServer, curl


def corrupt_chunk(data_dir: Path, nth: int) -> None:
    """Flip a byte inside the stored frame of the nth chunk of the index (by pack offset)."""
    index = sqlite3.connect(data_dir / "chunks" / "index.sqlite")
    rows = index.execute(
        "SELECT p.name, c.offset, c.length FROM chunks c JOIN packs p ON p.id = c.pack "
        "ORDER BY c.pack, c.offset"
    ).fetchall()
    index.close()
    name, offset, length = rows[nth]
    with open(data_dir / "chunks" / "packs" / name, "r+b") as pack:
        pack.seek(offset + length // 2)
        byte = pack.read(1)
        pack.seek(offset + length // 2)
        pack.write(bytes([byte[0] ^ 0xFF]))


def test_corrupt_first_chunk_is_a_clean_500(start_server: StartServer) -> None:
    server = start_server()
    data = os.urandom(2_000_000)
    assert curl("-f", "-T", "-", f"{server.url}/obj.bin", input=data).returncode == 0
    server.stop()
    corrupt_chunk(server.data, 0)
    server = start_server(data=server.data)
    result = curl("-w", "\n%{http_code}", f"{server.url}/obj.bin")
    body, _, status = result.stdout.rpartition(b"\n")
    assert status == b"500"
    assert "damaged" in json.loads(body)["message"]
    assert "content does not match" in server.log_text() or "undecodable" in server.log_text()


def test_corrupt_chunk_mid_body_fails_the_transfer(start_server: StartServer) -> None:
    server = start_server()
    data = os.urandom(30_000_000)
    assert curl("-f", "-T", "-", f"{server.url}/obj.bin", input=data).returncode == 0
    server.stop()
    corrupt_chunk(server.data, -1)  # the last chunk: the headers are long gone
    server = start_server(data=server.data)
    result = curl("-f", "-o", "-", f"{server.url}/obj.bin")
    assert result.returncode != 0, "curl must see a failed transfer"
    assert result.stdout != data
    assert len(result.stdout) < len(data)
    stats = json.loads(curl(f"{server.url}/-/stats").stdout)
    assert stats["since_start"]["corrupt_chunks"] >= 1


def test_undamaged_objects_still_serve(server: Server) -> None:
    data = os.urandom(100_000)
    curl("-f", "-T", "-", f"{server.url}/ok.bin", input=data)
    assert curl("-f", f"{server.url}/ok.bin").stdout == data
