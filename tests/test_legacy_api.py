"""Every row of LEGACY-API.md, spoken with real curl to a real server."""

from __future__ import annotations

import gzip
import io
import json
import os
import select
import socket
import tarfile
import time
from pathlib import Path

import pytest
import zstandard
from conftest import Server, StartServer, curl, free_port, status


@pytest.fixture(params=[0, 2], ids=["ingest-workers-0", "ingest-workers-2"])
def server(request: pytest.FixtureRequest, start_server: StartServer) -> Server:
    """Uploads run in threads of the server (0) and in worker processes (2)."""
    return start_server(args=["--ingest-workers", str(request.param)])


def upload(server: Server, path: str, data: bytes, *extra: str) -> tuple[int, bytes]:
    result = curl(
        "-w",
        "\n%{http_code}",
        "-F",
        f"path={path}",
        "-F",
        "file=@-",
        *extra,
        f"{server.url}/upload",
        input=data,
    )
    body, _, status = result.stdout.rpartition(b"\n")
    return int(status), body


def get(server: Server, path: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    dump = [] if "-I" in args else ["-D", "-"]
    result = curl(*dump, *args, f"{server.url}/{path.lstrip('/')}")
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def test_post_upload_answers_201_with_the_old_body_text(server: Server) -> None:
    status, body = upload(server, "some/dir/file.bin", b"hello")
    assert status == 201
    assert body.decode() == "File has been uploaded to some/dir/file.bin 🚀\n"
    result = curl(
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-F",
        "path=x",
        "-F",
        "file=@-",
        f"{server.url}/upload",
        input=b"x",
    )
    assert b"Content-Type: text/html; charset=UTF-8" in result.stdout


def test_upload_then_get_returns_exact_bytes_with_honest_headers(server: Server) -> None:
    data = os.urandom(300_000)
    assert upload(server, "cache.tar", data)[0] == 201
    status, headers, body = get(server, "cache.tar")
    assert status == 200
    assert body == data
    assert headers["content-length"] == str(len(data))
    assert headers["content-type"] == "application/x-tar"
    assert headers["accept-ranges"] == "bytes"
    assert headers["etag"].startswith('"') and headers["etag"].endswith('"')
    time.strptime(headers["last-modified"], "%a, %d %b %Y %X %Z")


def test_overwrite_replaces_silently(server: Server) -> None:
    upload(server, "f", b"one")
    upload(server, "f", b"two two")
    assert get(server, "f")[2] == b"two two"


def test_leading_slash_and_query_path_are_accepted(server: Server) -> None:
    assert upload(server, "/lead/x.txt", b"a")[0] == 201
    assert get(server, "lead/x.txt")[2] == b"a"
    assert (
        status(
            "-F",
            "file=@-",
            f"{server.url}/upload?path=q/y.txt",
            input=b"qq",
        )
        == 201
    )
    assert get(server, "q/y.txt")[2] == b"qq"


def test_missing_object_is_404_json_and_head_404_empty(server: Server) -> None:
    status, _, body = get(server, "nope.tar")
    assert status == 404
    assert json.loads(body) == {"message": "Not Found"}
    head = curl("-I", "-w", "%{http_code}", "-o", "/dev/null", f"{server.url}/nope.tar")
    assert head.stdout == b"404"
    assert curl("-fsI", f"{server.url}/nope.tar").returncode == 22


def test_head_sends_exactly_the_headers_of_get(server: Server) -> None:
    upload(server, "h/x.tar", b"z" * 1000)
    _, get_headers, _ = get(server, "h/x.tar")
    status, head_headers, body = get(server, "h/x.tar", "-I")
    assert status == 200 and body == b""
    for volatile in ("date", "cachesrv-request-id"):  # per response
        get_headers.pop(volatile, None)
        head_headers.pop(volatile, None)
    assert head_headers == get_headers


def test_last_modified_header_is_spelled_for_sed(server: Server) -> None:
    # The seed pipeline greps the raw header name case-sensitively.
    upload(server, "golang-cache.tar", b"x")
    raw = curl("-fsI", f"{server.url}/golang-cache.tar").stdout.decode()
    assert any(line.startswith("Last-Modified: ") for line in raw.split("\r\n")), raw


def test_range_requests(server: Server) -> None:
    data = bytes(range(256)) * 1000
    upload(server, "r.bin", data)
    status, headers, body = get(server, "r.bin", "-r", "100-199")
    assert status == 206 and body == data[100:200]
    assert headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert get(server, "r.bin", "-r", "255000-")[2] == data[255000:]
    assert get(server, "r.bin", "-H", "Range: bytes=-10")[2] == data[-10:]
    status, headers, _ = get(server, "r.bin", "-H", f"Range: bytes={len(data)}-")
    assert status == 416 and headers["content-range"] == f"bytes */{len(data)}"


def test_conditionals(server: Server) -> None:
    upload(server, "c.bin", b"conditional")
    _, headers, _ = get(server, "c.bin")
    etag, modified = headers["etag"], headers["last-modified"]
    assert get(server, "c.bin", "-H", f"If-None-Match: {etag}")[0] == 304
    assert get(server, "c.bin", "-H", f"If-Modified-Since: {modified}")[0] == 304
    assert get(server, "c.bin", "-H", 'If-None-Match: "other"')[0] == 200
    old = "Thu, 01 Jan 2015 00:00:00 GMT"
    assert get(server, "c.bin", "-H", f"If-Modified-Since: {old}")[0] == 200
    # If-Range: a matching validator honours Range, a stale one sends everything.
    assert get(server, "c.bin", "-r", "0-3", "-H", f"If-Range: {etag}")[2] == b"cond"
    status, _, body = get(server, "c.bin", "-r", "0-3", "-H", 'If-Range: "stale"')
    assert status == 200 and body == b"conditional"
    assert get(server, "c.bin", "-H", 'If-Match: "stale"')[0] == 412


def test_compressed_download_is_identical(server: Server) -> None:
    data = b"compressible text " * 50_000
    upload(server, "z.txt", data)
    status, headers, body = get(server, "z.txt", "--compressed")
    assert status == 200 and body == data
    assert headers["content-encoding"] == "zstd"
    assert headers["vary"] == "Accept-Encoding"
    plain_etag = get(server, "z.txt")[1]["etag"]
    assert headers["etag"] != plain_etag


def test_directory_redirect_and_index_html(server: Server) -> None:
    upload(server, "site/index.html", b"<h1>preview</h1>")
    status, headers, _ = get(server, "site")
    assert status == 301 and headers["location"] == "/site/"
    status, headers, body = get(server, "site/")
    assert status == 200 and body == b"<h1>preview</h1>"
    assert headers["content-type"].startswith("text/html")
    upload(server, "bare/file", b"x")
    assert get(server, "bare/")[0] == 404


def _targz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        directory = tarfile.TarInfo("emptydir")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
    return buffer.getvalue()


@pytest.mark.parametrize("targz_first", [True, False])
def test_targz_extracts_each_member_merging_with_what_is_there(
    server: Server, targz_first: bool
) -> None:
    upload(server, "preview/old.txt", b"old")
    archive = _targz({"index.html": b"<p>hi</p>", "css/site.css": b"body{}"})
    fields = ["-F", "path=preview", "-F", "file=@-"]
    fields = (["-F", "targz=true"] + fields) if targz_first else (fields + ["-F", "targz=1"])
    result = curl("-w", "\n%{http_code}", *fields, f"{server.url}/upload", input=archive)
    body, _, status = result.stdout.rpartition(b"\n")
    assert status == b"201"
    assert body.decode() == "File has been uploaded to preview 🚀\n"
    assert get(server, "preview/index.html")[2] == b"<p>hi</p>"
    assert get(server, "preview/css/site.css")[2] == b"body{}"
    assert get(server, "preview/old.txt")[2] == b"old"
    assert get(server, "preview/")[2] == b"<p>hi</p>"


def test_failed_targz_extraction_changes_nothing(server: Server) -> None:
    archive = _targz({"a.txt": b"a" * 5000, "b.txt": b"b" * 5000})
    broken = archive[: len(archive) // 2]
    status, body = upload(server, "broken", broken, "-F", "targz=1")
    assert status == 400 and "message" in json.loads(body)
    assert get(server, "broken/a.txt")[0] == 404
    status, body = upload(server, "notgz", b"not a gzip", "-F", "targz=1")
    assert status == 400


@pytest.mark.parametrize("path", ["../x", "a/../../x", "../../etc/passwd", "/../x"])
def test_traversal_is_403_and_writes_nothing(server: Server, path: str) -> None:
    status, body = upload(server, path, b"evil")
    assert status == 403
    assert "message" in json.loads(body)
    stats = json.loads(curl(f"{server.url}/-/stats").stdout)
    assert stats["objects"] == 0
    assert get(server, "x")[0] == 404


def test_percent_encoded_traversal_in_the_url_is_refused_and_writes_nothing(
    server: Server,
) -> None:
    # The server sees the URL path decoded: %2e%2e is "..", %2F is "/", %5c a backslash.
    for target, expected in [
        ("%2e%2e/x", 403),
        ("a/%2e%2e/%2E%2E/x", 403),
        ("..%2Fx", 403),
        ("a%2F..%2F..%2Fx", 403),
        ("%2e%2e%5cx", 400),
        ("x%00y", 400),
    ]:
        url = f"{server.url}/{target}"
        assert status("--path-as-is", "-T", "-", url, input=b"evil") == expected, target
        assert status("--path-as-is", url) == expected, target
    assert json.loads(curl(f"{server.url}/-/stats").stdout)["objects"] == 0


def test_dotdot_inside_the_root_resolves_like_the_old_server(server: Server) -> None:
    assert upload(server, "a/../b.txt", b"b")[0] == 201
    assert get(server, "b.txt")[2] == b"b"


def test_file_and_directory_conflicts_are_409(server: Server) -> None:
    upload(server, "a", b"file")
    status, body = upload(server, "a/b", b"below a file")
    assert status == 409 and "message" in json.loads(body)
    upload(server, "d/e", b"x")
    status, _ = upload(server, "d", b"over a directory")
    assert status == 409
    assert get(server, "a")[2] == b"file" and get(server, "d/e")[2] == b"x"


@pytest.mark.parametrize(
    "args",
    [
        ["-F", "path=x"],  # no file
        ["-F", "path=", "-F", "file=@-"],  # empty path
        ["-F", "file=@-"],  # no path at all
        ["--data-binary", "@-", "-H", "Content-Type: application/octet-stream"],  # not multipart
        ["-F", "path=-/stats", "-F", "file=@-"],  # reserved namespace
    ],
)
def test_bad_forms_are_4xx_json_and_store_nothing(server: Server, args: list[str]) -> None:
    result = curl("-w", "\n%{http_code}", *args, f"{server.url}/upload", input=b"data")
    body, _, status = result.stdout.rpartition(b"\n")
    assert 400 <= int(status) < 500
    assert json.loads(body)["message"]
    assert json.loads(curl(f"{server.url}/-/stats").stdout)["objects"] == 0


def test_truncated_multipart_is_400_and_stores_nothing(server: Server) -> None:
    boundary = "XyZ"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="path"\r\n\r\nt.bin\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + os.urandom(100_000)
    result = curl(
        "-w",
        "\n%{http_code}",
        "-H",
        f"Content-Type: multipart/form-data; boundary={boundary}",
        "--data-binary",
        "@-",
        f"{server.url}/upload",
        input=body,
    )
    out, _, status = result.stdout.rpartition(b"\n")
    assert status == b"400", out
    assert "truncated" in json.loads(out)["message"]
    assert get(server, "t.bin")[0] == 404


def test_delete_upload_removes_recursively(server: Server) -> None:
    upload(server, "tree/a", b"1")
    upload(server, "tree/sub/b", b"2")
    result = curl("-w", "\n%{http_code}", "-X", "DELETE", "-F", "path=tree", f"{server.url}/upload")
    body, _, status = result.stdout.rpartition(b"\n")
    assert status == b"202"
    assert body.decode() == "File tree has been deleted 💇"
    assert get(server, "tree/a")[0] == 404 and get(server, "tree/sub/b")[0] == 404
    result = curl(
        "-w", "%{http_code}", "-o", "/dev/null", "-X", "DELETE", f"{server.url}/upload?path=tree"
    )
    assert result.stdout == b"404"


def test_delete_upload_with_empty_path_is_400_and_deletes_nothing(server: Server) -> None:
    upload(server, "keep", b"1")
    assert (
        status(
            "-X",
            "DELETE",
            "-F",
            "path=",
            f"{server.url}/upload",
        )
        == 400
    )
    assert get(server, "keep")[2] == b"1"


def test_delete_old_files(server: Server) -> None:
    upload(server, "logs/a.txt", b"a")
    upload(server, "logs/sub/b.txt", b"b")
    url = f"{server.url}/delete?path=logs&days=1"
    result = curl("-w", "\n%{http_code}", "-X", "DELETE", url)
    body, _, code = result.stdout.rpartition(b"\n")
    assert code == b"202"
    assert body.decode() == "There are NO Old Files more than 1 days to be deleted 💇"
    result = curl("-w", "\n%{http_code}", "-X", "DELETE", f"{server.url}/delete?path=logs&days=0")
    body, _, _ = result.stdout.rpartition(b"\n")
    assert body.decode() == "Old Files more than 0 days has been deleted 💇"
    assert get(server, "logs/a.txt")[0] == 404
    assert get(server, "logs/sub/b.txt")[0] == 200  # directories only with recursive
    result = curl(
        "-w",
        "\n%{http_code}",
        "-X",
        "DELETE",
        f"{server.url}/delete?path=logs&days=0&recursive=true",
    )
    body, _, _ = result.stdout.rpartition(b"\n")
    assert body.decode() == "Old Files/child directories more than 0 days has been deleted 💇"
    assert get(server, "logs/sub/b.txt")[0] == 404
    assert (
        status(
            "-X",
            "DELETE",
            f"{server.url}/delete?path=logs&days=0&recursive=maybe",
        )
        == 400
    )


def test_unknown_methods_are_405_with_allow(server: Server) -> None:
    result = curl("-D", "-", "-X", "PATCH", f"{server.url}/x")
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert b" 405" in head.split(b"\r\n")[0]
    assert b"allow:" in head.lower()
    assert json.loads(body) == {"message": "Method Not Allowed"}


def test_put_raw_body_content_length_and_chunked(server: Server) -> None:
    data = os.urandom(200_000)
    # curl -T - sends chunked
    assert status("-T", "-", f"{server.url}/p/chunked.bin", input=data) == 201
    assert get(server, "p/chunked.bin")[2] == data
    url = f"{server.url}/p/length.bin"
    assert status("-X", "PUT", "--data-binary", "@-", url, input=data) == 201
    assert get(server, "p/length.bin")[2] == data


def test_put_with_gzip_content_encoding_stores_the_decoded_stream(server: Server) -> None:
    data = b"tar-ish content " * 10_000
    assert (
        status(
            "-X",
            "PUT",
            "-H",
            "Content-Encoding: gzip",
            "--data-binary",
            "@-",
            f"{server.url}/g.tar",
            input=gzip.compress(data),
        )
        == 201
    )
    assert get(server, "g.tar")[2] == data


def test_put_with_zstd_content_encoding_of_several_frames(server: Server) -> None:
    data = b"zstd framed tar " * 20_000
    body = b"".join(
        zstandard.ZstdCompressor().compress(data[i : i + 100_000])
        for i in range(0, len(data), 100_000)
    )
    assert (
        status(
            "-X",
            "PUT",
            "-H",
            "Content-Encoding: zstd",
            "--data-binary",
            "@-",
            f"{server.url}/z.tar",
            input=body,
        )
        == 201
    )
    assert get(server, "z.tar")[2] == data
    assert (
        status(
            "-X",
            "PUT",
            "-H",
            "Content-Encoding: gzip",
            "--data-binary",
            "@-",
            f"{server.url}/bad.tar",
            input=b"not gzip at all",
        )
        == 400
    )
    assert get(server, "bad.tar")[0] == 404


def test_own_endpoints_live_under_dash(server: Server) -> None:
    assert json.loads(curl(f"{server.url}/-/healthz").stdout)["status"] == "ok"
    stats = json.loads(curl(f"{server.url}/-/stats").stdout)
    for name in ("objects", "logical_bytes", "stored_bytes", "chunks"):
        assert name in stats
    assert b"cachesrv" in curl(f"{server.url}/-/").stdout
    curl("-f", "-T", "-", f"{server.url}/m.bin", input=b"metrics " * 1000)
    metrics = curl("-f", f"{server.url}/-/metrics").stdout.decode()
    assert "cachesrv_objects 1.0" in metrics
    assert "cachesrv_uploads_total 1.0" in metrics
    result = curl(
        "-w", "%{http_code}", "-o", "/dev/null", "-T", "-", f"{server.url}/-/x", input=b"x"
    )
    assert result.stdout == b"400"


HEADER_LIMIT = 64 * 1024  # request line + headers, as the server configures h11


def _exchange(server: Server, *writes: bytes) -> bytes:
    """Everything the server answers on one raw connection, until it closes it.

    Between two writes the server gets a moment to answer early (a refusal of what it
    holds so far); a server that rightly waits for more is never failed by that moment.
    """
    reply = bytearray()
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, data in enumerate(writes):
            if i:
                select.select([sock], [], [], 0.5)
            sock.sendall(data)
        while received := sock.recv(65536):
            reply += received
    return bytes(reply)


def _padded_head(size: int, target: str, end: bytes) -> bytes:
    """A GET request line and headers of exactly ``size`` bytes, ``end`` included."""
    start = f"GET /{target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: ".encode()
    return start + b"a" * (size - len(start) - len(end)) + end


def test_headers_up_to_64_kib_are_served_normally(server: Server) -> None:
    upload(server, "big-headers.bin", b"served despite the headers")
    request = _padded_head(HEADER_LIMIT, "big-headers.bin", b"\r\n\r\n")
    assert len(request) == HEADER_LIMIT
    # In two writes, so that the server holds an incomplete block of almost 64 KiB for a
    # moment: that is what its limit applies to (a complete block read at once is parsed).
    head, _, body = _exchange(server, request[:-2], request[-2:]).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert body == b"served despite the headers"


def test_headers_over_64_kib_are_refused_with_431_and_the_server_lives_on(
    server: Server,
) -> None:
    upload(server, "big-headers.bin", b"still here")
    # One byte over the limit and the header block not even finished: the server answers
    # at once instead of buffering more, and closes the connection.
    request = _padded_head(HEADER_LIMIT + 1, "big-headers.bin", b"\r\n")
    head, _, body = _exchange(server, request).partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    assert lines[0].startswith(b"http/1.1 431"), head
    assert b"content-length: 0" in lines and b"connection: close" in lines
    assert body == b""
    status, _, body = get(server, "big-headers.bin")
    assert (status, body) == (200, b"still here")


class TestCredentials:
    @pytest.fixture
    def secured(self, start_server: StartServer) -> Server:
        return start_server(env={"UPLOADER_UPLOAD_CREDENTIALS": "ci:s3cr:et"})

    def test_writes_need_basic_auth(self, secured: Server) -> None:
        result = curl(
            "-D", "-", "-F", "path=a", "-F", "file=@-", f"{secured.url}/upload", input=b"x"
        )
        head, _, body = result.stdout.partition(b"\r\n\r\n")
        assert b" 401" in head.split(b"\r\n")[0]
        assert b'WWW-Authenticate: basic realm="Restricted"' in head
        assert json.loads(body) == {"message": "Unauthorized"}
        for args in (
            ["-T", "-", f"{secured.url}/p"],
            ["-X", "DELETE", f"{secured.url}/upload?path=a"],
            ["-u", "ci:wrong", "-T", "-", f"{secured.url}/p"],
        ):
            assert curl("-w", "%{http_code}", "-o", "/dev/null", *args, input=b"x").stdout == b"401"

    def test_password_may_contain_colons_and_reads_stay_open(self, secured: Server) -> None:
        assert (
            status(
                "-u",
                "ci:s3cr:et",
                "-F",
                "path=a",
                "-F",
                "file=@-",
                f"{secured.url}/upload",
                input=b"x",
            )
            == 201
        )
        assert curl("-f", f"{secured.url}/a").stdout == b"x"
        assert curl("-fsI", f"{secured.url}/a").returncode == 0


# -- configuration precedence: flag > CACHESRV_* > UPLOADER_* > default ---------------------
# Each case leaves out the fixture's own flag for the setting under test and is observed
# from outside: where the objects land on disk, which port answers, which password works.

_DATA_CASES = {
    # case: (flag?, CACHESRV_DATA?, UPLOADER_DIRECTORY?) -> the directory that must win
    "flag": ((True, True, True), "flag"),
    "cachesrv-env": ((False, True, True), "new"),
    "uploader-env": ((False, False, True), "legacy"),
    "default": ((False, False, False), "pub"),
}


@pytest.mark.parametrize("case", _DATA_CASES)
def test_data_directory_precedence(start_server: StartServer, tmp_path: Path, case: str) -> None:
    (flag, new, legacy), winner = _DATA_CASES[case]
    dirs = {name: tmp_path / name for name in ("flag", "new", "legacy", "pub")}
    env = {}
    if new:
        env["CACHESRV_DATA"] = str(dirs["new"])
    if legacy:
        env["UPLOADER_DIRECTORY"] = str(dirs["legacy"])
    args = ["--data", str(dirs["flag"])] if flag else []
    server = start_server(
        env=env, args=args, data=dirs[winner], pass_data=False, cwd=tmp_path
    )  # ./pub, the default, is relative to the working directory
    assert upload(server, "where.txt", case.encode())[0] == 201
    assert server.stop() == 0
    assert [name for name, path in dirs.items() if path.exists()] == [winner]
    # The objects are really there: a server given that directory serves them.
    reader = start_server(data=dirs[winner])
    status, _, body = get(reader, "where.txt")
    assert (status, body) == (200, case.encode())


def test_port_precedence(start_server: StartServer) -> None:
    flag, new, legacy = free_port(), free_port(), free_port()
    assert len({flag, new, legacy}) == 3
    both = {"CACHESRV_PORT": str(new), "UPLOADER_PORT": str(legacy)}
    for env, args, winner in (
        (both, ["--port", str(flag)], flag),
        (both, [], new),
        ({"UPLOADER_PORT": str(legacy)}, [], legacy),
    ):
        # The fixture waits for the server on the winning port only.
        server = start_server(env=env, args=args, port=winner, pass_port=False)
        for port in {flag, new, legacy} - {winner}:
            refused = curl("-o", "/dev/null", f"http://127.0.0.1:{port}/-/healthz")
            assert refused.returncode == 7, (port, refused.stderr)  # couldn't connect
        assert server.stop() == 0
    # (The default, 8080, is not tried: on a shared machine someone else may hold it.)


_CREDENTIAL_CASES = {
    # case: (flag?, CACHESRV_UPLOAD_CREDENTIALS?, UPLOADER_UPLOAD_CREDENTIALS?) -> winner
    "flag": ((True, True, True), "flag:pw1"),
    "cachesrv-env": ((False, True, True), "new:pw2"),
    "uploader-env": ((False, False, True), "legacy:pw3"),
    "default": ((False, False, False), None),  # no credentials: writes are open
}


@pytest.mark.parametrize("case", _CREDENTIAL_CASES)
def test_credentials_precedence(start_server: StartServer, case: str) -> None:
    (flag, new, legacy), winner = _CREDENTIAL_CASES[case]
    env = {}
    if new:
        env["CACHESRV_UPLOAD_CREDENTIALS"] = "new:pw2"
    if legacy:
        env["UPLOADER_UPLOAD_CREDENTIALS"] = "legacy:pw3"
    server = start_server(env=env, args=["--credentials", "flag:pw1"] if flag else [])

    def put(*auth: str) -> int:
        return status(*auth, "-T", "-", f"{server.url}/auth.bin", input=b"x")

    for candidate in ("flag:pw1", "new:pw2", "legacy:pw3"):
        expected = 201 if winner in (candidate, None) else 401
        assert put("-u", candidate) == expected, candidate
    assert put() == (201 if winner is None else 401)
