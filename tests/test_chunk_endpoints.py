"""The chunk endpoints behind cachesrv push / pull, over real sockets: nothing a client
says is trusted, auth applies as to uploads and reads, and a pushed object is an
ordinary object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import blake3
import zstandard
from conftest import Server, StartServer, curl

from cachesrv import wire
from cachesrv.manifest import Manifest, Piece
from cachesrv.store import Codec, Frame, chunk_id, decode_frame


def call(
    method: str, url: str, body: bytes | None = None, token: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def frame(data: bytes) -> Frame:
    return Frame(zstandard.ZstdCompressor().compress(data), len(data), Codec.ZSTD)


def batch(*chunks: bytes) -> bytes:
    return b"".join(wire.encode_record(chunk_id(c), frame(c)) for c in chunks)


def manifest_of(*parts: bytes | tuple[bytes]) -> Manifest:
    """Pieces: bytes are inline, a 1-tuple is a chunk."""
    pieces, whole = [], b""
    for part in parts:
        if isinstance(part, tuple):
            pieces.append(Piece(len(part[0]), chunk_id=chunk_id(part[0])))
            whole += part[0]
        else:
            pieces.append(Piece(len(part), inline=part))
            whole += part
    return Manifest(len(whole), blake3.blake3(whole).digest(), tuple(pieces))


def stats(server: Server) -> dict[str, object]:
    return json.loads(curl("-f", f"{server.url}/-/stats", check=True).stdout)


A, B = os.urandom(100_000), os.urandom(70_000)


def test_settings_are_the_servers_chunking(start_server: StartServer) -> None:
    server = start_server(
        args=["--chunk-min", "8192", "--chunk-avg", "32768", "--chunk-max", "131072"]
    )
    status, _, body = call("GET", f"{server.url}/-/chunks/settings")
    settings = json.loads(body)
    assert status == 200
    assert (settings["chunk_min"], settings["chunk_avg"], settings["chunk_max"]) == (
        8192,
        32768,
        131072,
    )


def test_pushed_object_is_an_ordinary_object(server: Server) -> None:
    url = server.url
    ids = wire.encode_ids([chunk_id(A), chunk_id(B)])
    status, _, body = call("POST", f"{url}/-/chunks/missing?path=p.tar", ids)
    assert status == 200 and wire.decode_ids(body) == [chunk_id(A), chunk_id(B)]
    status, _, body = call("POST", f"{url}/-/chunks/upload?path=p.tar", batch(A, B))
    assert status == 200 and json.loads(body)["stored"] == 2
    assert call("POST", f"{url}/-/chunks/missing?path=p.tar", ids)[2] == b""
    manifest = manifest_of(b"head", (A,), b"mid", (B,), b"tail")
    status, _, body = call("PUT", f"{url}/-/manifest?path=p.tar", manifest.encode())
    assert status == 201, body
    whole = b"head" + A + b"mid" + B + b"tail"
    etag = blake3.blake3(whole).digest()[:16].hex()
    assert json.loads(body)["etag"] == f'"{etag}"'
    result = curl("-f", "-D", "-", f"{url}/p.tar", check=True)
    head, _, got = result.stdout.partition(b"\r\n\r\n")
    assert got == whole and f'ETag: "{etag}"'.encode() in head


def test_chunk_that_does_not_match_its_id_is_refused_and_nothing_changes(server: Server) -> None:
    url = server.url
    before = stats(server)["chunks"]
    forged = wire.encode_record(chunk_id(A), frame(B))  # B's bytes under A's id
    status, _, body = call("POST", f"{url}/-/chunks/upload?path=p", batch(B) + forged)
    assert status == 400 and b"does not match" in body
    assert stats(server)["chunks"] == before  # not even the good chunk of the batch
    ids = wire.encode_ids([chunk_id(A), chunk_id(B)])
    assert len(call("POST", f"{url}/-/chunks/missing?path=p", ids)[2]) == 64
    truncated = batch(A)[:-1]
    assert call("POST", f"{url}/-/chunks/upload?path=p", truncated)[0] == 400


def test_manifest_naming_missing_chunks_is_refused_and_the_old_version_stays(
    server: Server,
) -> None:
    url = server.url
    assert curl("-f", "-T", "-", f"{url}/p", input=b"version 1").returncode == 0
    call("POST", f"{url}/-/chunks/upload?path=p", batch(A))
    status, _, body = call("PUT", f"{url}/-/manifest?path=p", manifest_of((A,), (B,)).encode())
    assert status == 409 and b"not stored" in body
    assert curl("-f", f"{url}/p").stdout == b"version 1"


def test_manifest_whose_digest_or_sizes_lie_is_refused(server: Server) -> None:
    url = server.url
    call("POST", f"{url}/-/chunks/upload?path=p", batch(A))
    honest = manifest_of(b"x", (A,))
    lying = Manifest(honest.size, bytes(32), honest.pieces)
    assert call("PUT", f"{url}/-/manifest?path=p", lying.encode())[0] == 400
    wrong_size = Manifest(
        5, blake3.blake3(b"x" + A[:4]).digest(), (honest.pieces[0], Piece(4, chunk_id(A)))
    )
    assert call("PUT", f"{url}/-/manifest?path=p", wrong_size.encode())[0] == 400
    assert call("PUT", f"{url}/-/manifest?path=p", b"not a manifest")[0] == 400
    assert curl("-s", "-o", "/dev/null", "-w", "%{http_code}", f"{url}/p").stdout == b"404"


def test_keyed_push_follows_the_keyed_save_rule(server: Server) -> None:
    url = server.url
    call("POST", f"{url}/-/chunks/upload?key=go-1", batch(A))
    manifest = manifest_of((A,)).encode()
    assert call("PUT", f"{url}/-/manifest?key=go-1", manifest)[0] == 201
    assert call("PUT", f"{url}/-/manifest?key=go-1", manifest)[0] == 409
    status, headers, body = call("GET", f"{url}/-/manifest?key=go-zzz&restore-keys=go-")
    assert status == 200 and headers["Cachesrv-Match"] == "partial"
    assert headers["Cachesrv-Key"] == "go-1" and Manifest.decode(body).chunk_ids() == {chunk_id(A)}
    assert curl("-f", f"{url}/-/cache/go-1").stdout == A


def test_fetch_serves_only_chunks_of_the_named_version(server: Server) -> None:
    url = server.url
    call("POST", f"{url}/-/chunks/upload?path=a", batch(A, B))
    call("PUT", f"{url}/-/manifest?path=a", manifest_of((A,)).encode())
    call("PUT", f"{url}/-/manifest?path=b", manifest_of((B,)).encode())
    status, headers, _ = call("GET", f"{url}/-/manifest?path=a")
    mid = headers["Cachesrv-Manifest"]
    fetch = f"{url}/-/chunks/fetch?path=a&manifest={mid}"
    status, _, body = call("POST", fetch, chunk_id(A))
    reader = wire.BatchReader()
    records = list(reader.feed(body))
    assert status == 200 and [cid for cid, _ in records] == [chunk_id(A)]
    assert decode_frame(chunk_id(A), records[0][1]) == A
    assert call("POST", fetch, chunk_id(B))[0] == 403  # B is b's, not a's
    other = f"{url}/-/chunks/fetch?path=b&manifest={mid}"
    assert call("POST", other, chunk_id(B))[0] == 409  # b's version is not that manifest


def test_tokens_apply_to_every_chunk_endpoint(start_server: StartServer, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("wa write team-a/\nrb read team-b/\n")
    server = start_server(args=["--tokens", str(tokens), "--read-auth"])
    url = server.url
    upload = f"{url}/-/chunks/upload?path=team-a/x"
    assert call("POST", upload, batch(A))[0] == 401
    assert call("POST", f"{url}/-/chunks/upload?path=team-b/x", batch(A), "wa")[0] == 403
    assert call("POST", upload, batch(A), "wa")[0] == 200
    assert (
        call("PUT", f"{url}/-/manifest?path=team-b/x", manifest_of((A,)).encode(), "wa")[0] == 403
    )
    assert (
        call("PUT", f"{url}/-/manifest?path=team-a/x", manifest_of((A,)).encode(), "wa")[0] == 201
    )
    status, headers, _ = call("GET", f"{url}/-/manifest?path=team-a/x", token="wa")
    mid = headers["Cachesrv-Manifest"]
    assert call("GET", f"{url}/-/manifest?path=team-a/x", token="rb")[0] == 403
    fetch = f"{url}/-/chunks/fetch?path=team-a/x&manifest={mid}"
    assert call("POST", fetch, chunk_id(A))[0] == 401
    assert call("POST", fetch, chunk_id(A), "rb")[0] == 403
    assert call("POST", fetch, chunk_id(A), "wa")[0] == 200


def test_pushed_chunks_no_manifest_names_yet_survive_gc(server: Server) -> None:
    url = server.url
    assert call("POST", f"{url}/-/chunks/upload?path=p", batch(A, B))[0] == 200
    gc = subprocess.run(
        [sys.executable, "-m", "cachesrv", "gc", "--data", str(server.data)],
        capture_output=True,
        timeout=120,
    )
    assert gc.returncode == 0, gc.stderr
    status, _, body = call("PUT", f"{url}/-/manifest?path=p", manifest_of((A,), (B,)).encode())
    assert status == 201, body
    assert curl("-f", f"{url}/p").stdout == A + B


def test_a_chunk_claiming_more_than_the_largest_chunk_is_refused(server: Server) -> None:
    huge = wire.RECORD.pack(chunk_id(A), 0, 1 << 30, 10) + bytes(10)
    assert call("POST", f"{server.url}/-/chunks/upload?path=p", huge)[0] == 400
