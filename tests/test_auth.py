"""Tokens with scopes and prefixes, beside the old user:pass, spoken with real curl."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Server, StartServer, clean_env, curl, free_port

from cachesrv.http.auth import Scope, TokensFileError, parse_tokens

WRITE_A = "tA-3f9c1e77d2b84a0f"
READ_A = "rA-5d1b2c3a4e5f6071"
READ_ALL = "rX-0a1b2c3d4e5f6a7b"
ADMIN = "ad-99aa88bb77cc66dd"
LEGACY = "ci:legacy-pass-4242"

TOKENS = f"""# team A writes under team-a/ only
{WRITE_A} write team-a/
{READ_A}  read  /team-a/   # a leading / is ignored
{READ_ALL} read
{ADMIN} admin
"""


def code(*args: str, input: bytes | None = None) -> tuple[int, bytes]:
    result = curl("-w", "\n%{http_code}", *args, input=input)
    body, _, status = result.stdout.rpartition(b"\n")
    return int(status or 0), body


def bearer(token: str) -> list[str]:
    return ["-H", f"Authorization: Bearer {token}"]


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(TOKENS)
    return path


@pytest.fixture
def secured(start_server: StartServer, tokens_file: Path) -> Server:
    return start_server(
        env={"CACHESRV_TOKENS_FILE": str(tokens_file), "UPLOADER_UPLOAD_CREDENTIALS": LEGACY}
    )


def test_writes_need_a_credential_and_a_token_is_held_to_its_prefix(secured: Server) -> None:
    url = secured.url
    result = curl("-D", "-", "-T", "-", f"{url}/team-a/x", input=b"x")
    final = result.stdout.rsplit(b"HTTP/1.1 ", 1)[1]  # after any "100 Continue"
    assert final.startswith(b"401 ")
    assert b'WWW-Authenticate: basic realm="Restricted"' in result.stdout
    assert result.stdout.endswith(b'{"message": "Unauthorized"}\n')

    assert code(*bearer(WRITE_A), "-T", "-", f"{url}/team-a/x", input=b"one")[0] == 201
    # the same token as a Basic password, any user name: `curl -u` lines keep working
    assert code("-u", f"anyone:{WRITE_A}", "-T", "-", f"{url}/team-a/y", input=b"y")[0] == 201
    status, body = code(*bearer(WRITE_A), "-T", "-", f"{url}/team-b/x", input=b"evil")
    assert status == 403 and "prefix" in json.loads(body)["message"]
    # a name that only starts like the prefix is outside it, and so is climbing out
    assert code(*bearer(WRITE_A), "-T", "-", f"{url}/team-ab", input=b"z")[0] == 403
    assert code(*bearer(WRITE_A), "-T", "-", f"{url}/team-a/../team-b/x", input=b"z")[0] in (
        403,
        404,  # curl itself may squash the ../ before sending
    )
    assert code(f"{url}/team-b/x")[0] == 404  # nothing stored by the refused writes

    assert code("-u", f"x:{READ_ALL}", "-T", "-", f"{url}/team-a/x", input=b"r")[0] == 403
    assert code("-u", "x:not-a-token", "-T", "-", f"{url}/team-a/x", input=b"r")[0] == 401
    assert code(*bearer("not-a-token"), "-T", "-", f"{url}/team-a/x", input=b"r")[0] == 401
    assert curl("-f", f"{url}/team-a/x").stdout == b"one"  # reads stay open

    # the old user:pass still writes everywhere
    assert code("-u", LEGACY, "-T", "-", f"{url}/team-b/x", input=b"legacy")[0] == 201
    assert code("-u", "ci:wrong", "-T", "-", f"{url}/team-b/x", input=b"no")[0] == 401
    assert curl("-f", f"{url}/team-b/x").stdout == b"legacy"


def test_keyed_caches_follow_the_prefix(secured: Server) -> None:
    url = secured.url
    assert code(*bearer(WRITE_A), "-T", "-", f"{url}/-/cache/team-a/go-1", input=b"c")[0] == 201
    assert code(*bearer(WRITE_A), "-T", "-", f"{url}/-/cache/team-b/go-1", input=b"c")[0] == 403
    assert code(*bearer(WRITE_A), "-X", "DELETE", f"{url}/-/cache/team-b/go-1")[0] == 403
    assert code(*bearer(WRITE_A), "-X", "DELETE", f"{url}/-/cache/team-a/go-1")[0] == 202


def test_a_form_whose_path_comes_after_the_file_is_discarded_on_403(secured: Server) -> None:
    url = secured.url
    assert (
        code("-u", LEGACY, "-F", "path=team-b/f", "-F", "file=@-", f"{url}/upload", input=b"v1")[0]
        == 201
    )
    # curl sends fields in command-line order: the path arrives after the whole file
    status, _ = code(
        *bearer(WRITE_A), "-F", "file=@-", "-F", "path=team-b/f", f"{url}/upload", input=b"v2"
    )
    assert status == 403
    assert curl("-f", f"{url}/team-b/f").stdout == b"v1"
    # and a query path is checked before the body is read
    assert (
        code(*bearer(WRITE_A), "-F", "file=@-", f"{url}/upload?path=team-b/f", input=b"v3")[0]
        == 403
    )
    assert code(*bearer(WRITE_A), "-F", "file=@-", "-F", "path=team-a/f", f"{url}/upload")[0] in (
        201,
        400,
    )


def test_deletes_need_admin(secured: Server) -> None:
    url = secured.url
    assert code(*bearer(WRITE_A), "-T", "-", f"{url}/team-a/d/x", input=b"x")[0] == 201
    assert code(*bearer(WRITE_A), "-X", "DELETE", f"{url}/upload?path=team-a/d")[0] == 403
    assert code(*bearer(WRITE_A), "-X", "DELETE", f"{url}/delete?path=team-a&days=0")[0] == 403
    assert curl("-f", f"{url}/team-a/d/x").stdout == b"x"
    assert code("-X", "DELETE", f"{url}/upload?path=team-a/d")[0] == 401
    assert code(*bearer(ADMIN), "-X", "DELETE", f"{url}/upload?path=team-a/d")[0] == 202
    assert code(*bearer(WRITE_A), "-T", "-", f"{url}/team-a/e", input=b"e")[0] == 201
    assert code("-u", LEGACY, "-X", "DELETE", f"{url}/delete?path=team-a&days=0")[0] == 202


def test_read_auth_closes_reads_but_not_healthz(
    start_server: StartServer, tokens_file: Path
) -> None:
    server = start_server(args=["--tokens", str(tokens_file), "--read-auth"])
    url = server.url
    assert code(*bearer(WRITE_A), "-T", "-", f"{url}/team-a/x", input=b"a")[0] == 201
    assert code(*bearer(ADMIN), "-T", "-", f"{url}/team-b/x", input=b"b")[0] == 201
    assert code(*bearer(ADMIN), "-T", "-", f"{url}/-/cache/team-b/k", input=b"k")[0] == 201

    status, body = code(f"{url}/team-a/x")
    assert status == 401 and json.loads(body) == {"message": "Unauthorized"}
    assert code("-I", f"{url}/team-a/x")[0] == 401
    assert code(*bearer(READ_A), f"{url}/team-a/x") == (200, b"a")
    assert code(*bearer(WRITE_A), f"{url}/team-a/x") == (200, b"a")  # write implies read
    assert code(*bearer(READ_A), f"{url}/team-b/x")[0] == 403
    assert code(*bearer(READ_ALL), f"{url}/team-b/x") == (200, b"b")
    # a restore key outside the prefix is refused, not quietly searched
    assert code(*bearer(READ_A), f"{url}/-/cache/team-a/k?restore-keys=team-b/")[0] == 403
    assert code(*bearer(READ_ALL), f"{url}/-/cache/team-a/k?restore-keys=team-b/")[0] == 200

    assert code(f"{url}/-/healthz")[0] == 200
    for page in ("/-/metrics", "/-/", "/-/stats"):
        assert code(f"{url}{page}")[0] == 401, page
        assert code(*bearer(READ_A), f"{url}{page}")[0] == 200, page
    # every name in the store: only a token without a prefix
    assert code(*bearer(READ_A), f"{url}/-/stats?objects=1")[0] == 403
    assert code(*bearer(READ_ALL), f"{url}/-/stats?objects=1")[0] == 200


def test_tokens_reload_when_a_kubernetes_secret_swaps_its_symlink(
    start_server: StartServer, tmp_path: Path
) -> None:
    # the layout kubelet writes for a Secret volume: files behind an atomically swapped link
    volume = tmp_path / "secret-volume"
    first = volume / "..2026_01_01_00_00_00.000000001"
    first.mkdir(parents=True)
    (first / "tokens").write_text("old-token-1111 write\n")
    os.symlink(first.name, volume / "..data")
    os.symlink("..data/tokens", volume / "tokens")
    server = start_server(args=["--tokens", str(volume / "tokens")])
    url = server.url
    assert code(*bearer("old-token-1111"), "-T", "-", f"{url}/x", input=b"1")[0] == 201
    assert code(*bearer("new-token-2222"), "-T", "-", f"{url}/x", input=b"2")[0] == 401

    second = volume / "..2026_01_01_00_05_00.000000002"
    second.mkdir()
    (second / "tokens").write_text("new-token-2222 write\n")
    os.symlink(second.name, volume / "..data_tmp")
    os.replace(volume / "..data_tmp", volume / "..data")  # rename(2): the atomic swap

    assert code(*bearer("new-token-2222"), "-T", "-", f"{url}/x", input=b"2")[0] == 201
    assert code(*bearer("old-token-1111"), "-T", "-", f"{url}/x", input=b"3")[0] == 401
    assert curl("-f", f"{url}/x").stdout == b"2"

    # a broken file keeps the tokens in force, and says so by line number only
    third = volume / "..2026_01_01_00_10_00.000000003"
    third.mkdir()
    (third / "tokens").write_text("new-token-2222 write\nbroken-secret-3333 writ\n")
    os.symlink(third.name, volume / "..data_tmp")
    os.replace(volume / "..data_tmp", volume / "..data")
    assert code(*bearer("new-token-2222"), "-T", "-", f"{url}/x", input=b"4")[0] == 201
    log = server.log_text()
    assert "line 2: scope must be read, write or admin" in log
    assert "broken-secret-3333" not in log


def test_tokens_and_passwords_never_reach_the_log(secured: Server) -> None:
    url = secured.url
    code(*bearer(WRITE_A), "-T", "-", f"{url}/team-a/x", input=b"x")
    code(*bearer(WRITE_A), "-T", "-", f"{url}/team-b/x", input=b"x")
    code("-u", f"u:{READ_ALL}", "-T", "-", f"{url}/team-a/x", input=b"x")
    code("-u", LEGACY, "-T", "-", f"{url}/team-a/x", input=b"x")
    code("-u", "ci:wrong-password-777", "-T", "-", f"{url}/team-a/x", input=b"x")
    code(*bearer("guessed-token-888"), "-X", "DELETE", f"{url}/upload?path=team-a/x")
    secured.stop()
    log = secured.log_text()
    assert "PUT /team-a/x" in log  # the access log is there
    for secret in (WRITE_A, READ_A, READ_ALL, ADMIN, "legacy-pass-4242", "wrong-password-777"):
        assert secret not in log
    assert "guessed-token-888" not in log


def test_a_bad_tokens_file_stops_the_server_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# ok\nsecret-aaaa write\nsecret-bbbb superuser\n")
    command = [sys.executable, "-m", "cachesrv", "serve", "--port", str(free_port())]
    command += ["--data", str(tmp_path / "d"), "--tokens", str(path)]
    result = subprocess.run(command, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "line 3: scope must be read, write or admin" in result.stderr
    assert "secret-bbbb" not in result.stderr and "secret-aaaa" not in result.stderr
    missing = [*command[:-1], str(tmp_path / "absent")]
    result = subprocess.run(missing, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "cannot read tokens file" in result.stderr


def test_parse_tokens() -> None:
    grants = parse_tokens("a read\n\n  # c\nb write /x/  # team x\nc ADMIN\n")
    assert [(g.scope, g.prefix) for _, g in grants] == [
        (Scope.READ, ""),
        (Scope.WRITE, "x/"),
        (Scope.ADMIN, ""),
    ]
    for bad, message in (
        ("a", "line 1: expected"),
        ("a write x y", "line 1: expected"),
        ("a read\na write", "line 2: the token of line 1 again"),
    ):
        with pytest.raises(TokensFileError, match=message):
            parse_tokens(bad)


def test_reload_happens_without_waiting(start_server: StartServer, tmp_path: Path) -> None:
    """An edit in place (a new mtime or size, same inode) is picked up on the next request."""
    path = tmp_path / "tokens"
    path.write_text("first-token-aaaa write\n")
    server = start_server(args=["--tokens", str(path)])
    with open(path, "a") as f:
        f.write("second-token-bbbb write\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert code(*bearer("second-token-bbbb"), "-T", "-", f"{server.url}/y", input=b"y")[0] == 201
