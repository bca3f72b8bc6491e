"""The Tekton cache steps, run for real: their scripts taken from the YAML in
deploy/tekton, params substituted the way Tekton does, run with dash (POSIX sh,
no bash) against a live cachesrv, with the real curl and tar.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Server, StartServer, free_port

TEKTON = Path(__file__).resolve().parent.parent / "deploy" / "tekton"
# dash, /bin/sh on Debian: POSIX sh without bash extensions. CACHESRV_TEST_SH runs
# the same tests under another shell (e.g. "busybox sh").
SHELL = os.environ.get("CACHESRV_TEST_SH") or shutil.which("dash") or "/bin/dash"
# Tekton variables (not shell command substitutions) left in a script after substitution.
TEKTON_VAR = re.compile(r"\$\((?:params|results|step|steps|workspaces|context|tasks)[.\[]")

GO_SUM = b"example.com/mod v1.0.0 h1:abc=\n"


@dataclass
class StepRun:
    rc: int
    output: str
    results: dict[str, str]


def step_spec(kind: str, source: str) -> dict[str, Any]:
    """The container part of a step: the StepAction spec, or the Task's one step."""
    if source == "stepaction":
        doc = yaml.safe_load(
            (TEKTON / "stepaction" / f"cache-{kind}" / "0.1" / f"cache-{kind}.yaml").read_text()
        )
        return {**doc["spec"], "results_var": "step.results"}
    doc = yaml.safe_load(
        (TEKTON / "task" / f"cache-{kind}" / "0.1" / f"cache-{kind}.yaml").read_text()
    )
    (step,) = doc["spec"]["steps"]
    return {
        **step,
        "params": doc["spec"]["params"],
        "results": doc["spec"]["results"],
        "results_var": "results",
    }


def substitute(text: str, values: dict[str, str]) -> str:
    def param(match: re.Match[str]) -> str:
        return values[match.group(1)]

    return re.sub(r"\$\(params\.([a-z0-9-]+)\)", param, text)


def run_step(
    kind: str,
    workdir: Path,
    params: dict[str, str],
    *,
    source: str = "stepaction",
    secret: str | None = None,
    token_secret: str | None = None,
    path_prefix: str | None = None,
    search_path: str | None = None,
) -> StepRun:
    """Run the cache-fetch or cache-upload script as Tekton would, with dash."""
    spec = step_spec(kind, source)
    values = {p["name"]: p.get("default") for p in spec["params"]}
    values.update(params)
    missing = [name for name, value in values.items() if value is None]
    assert not missing, f"required params not given: {missing}"

    run_dir = Path(workdir.parent / f".run-{kind}-{time.monotonic_ns()}")
    results_dir = run_dir / "results"
    results_dir.mkdir(parents=True)
    search = search_path or os.environ["PATH"]
    if path_prefix is not None:
        search = f"{path_prefix}:{search}"
    env = {"PATH": search, "HOME": str(run_dir), "TMPDIR": str(run_dir)}
    for item in spec["env"]:
        if "value" in item:
            env[item["name"]] = substitute(item["value"], values)
        else:  # an optional Secret: set when the test says it exists
            key = item["valueFrom"]["secretKeyRef"]["key"]
            value = secret if key == "UPLOADER_UPLOAD_CREDENTIALS" else token_secret
            if value is not None:
                env[item["name"]] = value

    script = spec["script"]
    for result in spec["results"]:
        script = script.replace(
            f"$({spec['results_var']}.{result['name']}.path)", str(results_dir / result["name"])
        )
    assert not TEKTON_VAR.search(script), "a Tekton variable was left in the script"
    script_file = run_dir / "script.sh"
    script_file.write_text(script)
    proc = subprocess.run(
        [*SHELL.split(), str(script_file)],
        env=env,
        cwd=run_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    results = {
        r["name"]: (results_dir / r["name"]).read_text()
        for r in spec["results"]
        if (results_dir / r["name"]).exists()
    }
    return StepRun(proc.returncode, proc.stdout + proc.stderr, results)


def key_files_hash(root: Path, rels: list[str]) -> str:
    """The documented key-files hash: sha256 of the sorted `sha256sum` listing."""
    listing = "".join(
        f"{hashlib.sha256((root / rel).read_bytes()).hexdigest()}  ./{rel}\n"
        for rel in sorted(rels)
    )
    return hashlib.sha256(listing.encode()).hexdigest()


def make_workspace(root: Path, go_sum: bytes = GO_SUM) -> Path:
    (root / "src" / "tools").mkdir(parents=True)
    (root / "src" / "go.sum").write_bytes(go_sum)
    (root / "src" / "tools" / "go.sum").write_bytes(b"tools\n")
    (root / "src" / "go.mod").write_bytes(b"module example.com/x\n")
    return root


def fill_cache(root: Path, seed: int = 0) -> None:
    build = root / "cache" / "go-build"
    for i in range(20):
        sub = build / f"{i:02x}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:064x}-d").write_bytes(os.urandom(1000 * i + seed))
    (build / "README").write_text(f"generation {seed}\n")
    (build / "trim.txt").write_text("1700000000\n")
    (build / "trim.txt").chmod(0o600)
    tool = build / "tool"
    tool.write_bytes(b"#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    (build / "empty-dir").mkdir(exist_ok=True)
    if not (build / "link").is_symlink():
        (build / "link").symlink_to("README")
    lint = root / "cache" / "golangci-lint"
    lint.mkdir(parents=True, exist_ok=True)
    (lint / "cache.bin").write_bytes(b"\x00\xff" * 5000 + bytes([seed % 256]))
    (lint / "ro").write_text("read only\n")
    (lint / "ro").chmod(0o444)


def tree(root: Path) -> dict[str, tuple[str, int, bytes]]:
    """Every entry under root: kind, permission bits and content (or link target)."""
    out: dict[str, tuple[str, int, bytes]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = path.relative_to(root).as_posix()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", 0, os.readlink(path).encode())
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), b"")
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return out


def get_entry(server: Server, key: str, query: str = "") -> tuple[int, dict[str, str], bytes]:
    url = f"{server.url}/-/cache/{key}{query}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def put_raw(server: Server, key: str, body: bytes) -> int:
    request = urllib.request.Request(f"{server.url}/-/cache/{key}", data=body, method="PUT")
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(response.status)


def go_params(server_url: str, workdir: Path, **extra: str) -> dict[str, str]:
    params = {
        "server-url": server_url,
        "key": "go-linux-",
        "key-files": "src/**/go.sum",
        "restore-keys": "go-linux-",
        "paths": "cache/go-build\ncache/golangci-lint",
        "workdir": str(workdir),
    }
    params.update(extra)
    return params


def upload_params(server_url: str, workdir: Path, **extra: str) -> dict[str, str]:
    params = go_params(server_url, workdir)
    del params["restore-keys"]
    params.update(extra)
    return params


@pytest.mark.parametrize("source", ["stepaction", "task"])
def test_miss_upload_then_exact_hit_restores_the_tree(
    start_server: StartServer, tmp_path: Path, source: str
) -> None:
    server = start_server()
    first = make_workspace(tmp_path / "first")
    key = "go-linux-" + key_files_hash(first, ["src/go.sum", "src/tools/go.sum"])

    miss = run_step("fetch", first, go_params(server.url, first), source=source)
    assert miss.rc == 0, miss.output
    assert miss.results == {"fetched": "false", "matched-key": "", "key": key}
    assert not (first / "cache").exists()
    assert not list(first.glob(".cache-fetch.*")), "staging directory left behind"

    fill_cache(first)
    saved = run_step("upload", first, upload_params(server.url, first), source=source)
    assert saved.rc == 0, saved.output
    assert saved.results == {"uploaded": "true", "key": key}
    status, headers, _ = get_entry(server, key, "?exact=true")
    assert status == 200 and headers["Cachesrv-Key"] == key

    # A fresh checkout elsewhere, with a stale cache directory to be replaced.
    second = make_workspace(tmp_path / "second")
    (second / "cache" / "go-build").mkdir(parents=True)
    (second / "cache" / "go-build" / "stale").write_text("old\n")
    hit = run_step("fetch", second, go_params(server.url, second), source=source)
    assert hit.rc == 0, hit.output
    assert hit.results == {"fetched": "true", "matched-key": key, "key": key}
    assert "exact match" in hit.output
    assert tree(second / "cache") == tree(first / "cache")
    assert not list(second.glob(".cache-fetch.*"))

    again = run_step("upload", second, upload_params(server.url, second), source=source)
    assert again.rc == 0, again.output
    assert again.results["uploaded"] == "false"
    assert "already saved" in again.output


def test_new_key_falls_back_to_the_newest_restore_key_entry(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server()
    old = make_workspace(tmp_path / "old", go_sum=b"old deps\n")
    fill_cache(old, seed=1)
    saved = run_step("upload", old, upload_params(server.url, old))
    assert saved.rc == 0 and saved.results["uploaded"] == "true", saved.output
    old_key = saved.results["key"]

    other = make_workspace(tmp_path / "other", go_sum=b"unrelated\n")
    fill_cache(other, seed=2)
    assert run_step("upload", other, upload_params(server.url, other, key="npm-linux-")).rc == 0

    new = make_workspace(tmp_path / "new", go_sum=b"new deps\n")
    got = run_step("fetch", new, go_params(server.url, new))
    assert got.rc == 0, got.output
    assert got.results["fetched"] == "true"
    assert got.results["matched-key"] == old_key
    assert got.results["key"] != old_key
    assert "partial match" in got.output
    assert tree(new / "cache") == tree(old / "cache")

    status, headers, _ = get_entry(server, got.results["key"], "?restore-keys=go-linux-")
    assert status == 200
    assert headers["Cachesrv-Match"] == "partial"
    assert headers["Cachesrv-Key"] == old_key


def test_max_age_keeps_a_young_entry_and_replaces_an_old_one(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server()
    ws = make_workspace(tmp_path / "ws")
    fill_cache(ws, seed=1)
    first = run_step("upload", ws, upload_params(server.url, ws, **{"max-age": "3600"}))
    assert first.rc == 0 and first.results["uploaded"] == "true", first.output
    key = first.results["key"]
    _, _, body_before = get_entry(server, key)

    fill_cache(ws, seed=2)
    young = run_step("upload", ws, upload_params(server.url, ws, **{"max-age": "3600"}))
    assert young.rc == 0, young.output
    assert young.results["uploaded"] == "false"
    assert "less than max-age" in young.output
    assert get_entry(server, key)[2] == body_before

    old = run_step("upload", ws, upload_params(server.url, ws, **{"max-age": "0"}))
    assert old.rc == 0, old.output
    assert old.results["uploaded"] == "true"
    assert "replacing" in old.output
    assert get_entry(server, key)[2] != body_before

    restored = make_workspace(tmp_path / "restored")
    got = run_step("fetch", restored, go_params(server.url, restored))
    assert got.results["fetched"] == "true", got.output
    assert tree(restored / "cache") == tree(ws / "cache")
    assert (restored / "cache" / "go-build" / "README").read_text() == "generation 2\n"


def test_force_upload_replaces_always(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server()
    ws = make_workspace(tmp_path / "ws")
    fill_cache(ws, seed=1)
    assert run_step("upload", ws, upload_params(server.url, ws)).results["uploaded"] == "true"
    fill_cache(ws, seed=3)
    kept = run_step("upload", ws, upload_params(server.url, ws, **{"max-age": "3600"}))
    assert kept.results["uploaded"] == "false", kept.output
    forced = run_step(
        "upload", ws, upload_params(server.url, ws, **{"max-age": "3600", "force-upload": "true"})
    )
    assert forced.rc == 0 and forced.results["uploaded"] == "true", forced.output

    restored = make_workspace(tmp_path / "restored")
    got = run_step("fetch", restored, go_params(server.url, restored))
    assert (restored / "cache" / "go-build" / "README").read_text() == "generation 3\n", got.output


@pytest.mark.parametrize("source", ["stepaction", "task"])
def test_server_down_never_fails_the_pipeline(tmp_path: Path, source: str) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    ws = make_workspace(tmp_path / "ws")
    got = run_step("fetch", ws, go_params(down, ws), source=source)
    assert got.rc == 0, got.output
    assert got.results["fetched"] == "false"
    assert got.results["matched-key"] == ""
    assert "unreachable" in got.output

    fill_cache(ws)
    before = tree(ws)
    put = run_step("upload", ws, upload_params(down, ws), source=source)
    assert put.rc == 0, put.output
    assert put.results["uploaded"] == "false"
    assert "unreachable" in put.output
    strict = run_step("upload", ws, upload_params(down, ws, **{"fail-on-error": "true"}))
    assert strict.rc == 1, strict.output
    assert tree(ws) == before


def broken_archives() -> dict[str, bytes]:
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = os.urandom(200_000)
        info = tarfile.TarInfo("cache/go-build/big")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    whole = buf.getvalue()
    return {
        "garbage": os.urandom(5000),
        "truncated": whole[: len(whole) // 2],
        "empty": b"",
    }


@pytest.mark.parametrize("name", ["garbage", "truncated", "empty"])
def test_broken_archive_is_a_miss_and_leaves_the_tree_alone(
    start_server: StartServer, tmp_path: Path, name: str
) -> None:
    server = start_server()
    ws = make_workspace(tmp_path / "ws")
    key = "go-linux-" + key_files_hash(ws, ["src/go.sum", "src/tools/go.sum"])
    assert put_raw(server, key, broken_archives()[name]) == 201
    (ws / "cache" / "go-build").mkdir(parents=True)
    (ws / "cache" / "go-build" / "mine").write_text("keep me\n")
    before = tree(ws)

    got = run_step("fetch", ws, go_params(server.url, ws))
    assert got.rc == 0, got.output
    assert got.results["fetched"] == "false"
    assert got.results["matched-key"] == ""
    assert tree(ws) == before, "a broken archive changed the workspace"


def test_credentials_from_param_or_secret(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(env={"UPLOADER_UPLOAD_CREDENTIALS": "ci:s3cret"})
    ws = make_workspace(tmp_path / "ws")
    fill_cache(ws)

    anonymous = run_step("upload", ws, upload_params(server.url, ws))
    assert anonymous.rc == 0 and anonymous.results["uploaded"] == "false"
    assert "401" in anonymous.output
    strict = run_step("upload", ws, upload_params(server.url, ws, **{"fail-on-error": "true"}))
    assert strict.rc == 1, strict.output

    from_secret = run_step("upload", ws, upload_params(server.url, ws), secret="ci:s3cret")
    assert from_secret.results["uploaded"] == "true", from_secret.output
    from_param = run_step(
        "upload",
        ws,
        upload_params(server.url, ws, credentials="ci:s3cret", **{"force-upload": "true"}),
        secret="wrong:one",
    )
    assert from_param.results["uploaded"] == "true", from_param.output

    restored = make_workspace(tmp_path / "restored")
    got = run_step("fetch", restored, go_params(server.url, restored))
    assert got.results["fetched"] == "true", got.output


def test_keys_without_key_files_and_restore_key_lists(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server()
    ws = make_workspace(tmp_path / "ws")
    fill_cache(ws)
    params = upload_params(server.url, ws, key="lint+v1.62=linux@amd64", **{"key-files": ""})
    saved = run_step("upload", ws, params)
    assert saved.results == {"uploaded": "true", "key": "lint+v1.62=linux@amd64"}, saved.output

    restored = make_workspace(tmp_path / "restored")
    # Comma- and newline-separated restore keys, tried in order; "+" and "=" survive the query.
    got = run_step(
        "fetch",
        restored,
        go_params(
            server.url,
            restored,
            key="lint+v1.63=linux@amd64",
            **{"key-files": "", "restore-keys": "nothing-here-, \n lint+v1.62=\n"},
        ),
    )
    assert got.results["fetched"] == "true", got.output
    assert got.results["matched-key"] == "lint+v1.62=linux@amd64"
    assert tree(restored / "cache") == tree(ws / "cache")


def test_unmatched_key_files_and_invalid_keys(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server()
    ws = make_workspace(tmp_path / "ws")
    got = run_step("fetch", ws, go_params(server.url, ws, **{"key-files": "**/Cargo.lock"}))
    assert got.rc == 0 and got.results["key"] == "go-linux-", got.output
    assert "no file matches" in got.output

    for bad in ("has space", "a/../b", "x" * 513):
        got = run_step("fetch", ws, go_params(server.url, ws, key=bad, **{"key-files": ""}))
        assert got.rc == 0 and got.results["fetched"] == "false", got.output
        assert "invalid key" in got.output
        put = run_step("upload", ws, upload_params(server.url, ws, key=bad, **{"key-files": ""}))
        assert put.rc == 0 and put.results["uploaded"] == "false", put.output


def test_key_files_patterns_match_at_any_depth(tmp_path: Path) -> None:
    """'**/' is zero or more directories; the hash covers names and contents."""
    ws = make_workspace(tmp_path / "ws")
    (ws / "vendor" / "a" / "b").mkdir(parents=True)
    (ws / "vendor" / "a" / "b" / "go.sum").write_bytes(b"deep\n")
    (ws / "go.sum").write_bytes(b"top\n")
    down = f"http://127.0.0.1:{free_port()}"

    def key_for(patterns: str) -> str:
        run = run_step("fetch", ws, go_params(down, ws, key="k-", **{"key-files": patterns}))
        return run.results["key"]

    every = ["go.sum", "src/go.sum", "src/tools/go.sum", "vendor/a/b/go.sum"]
    assert key_for("**/go.sum") == "k-" + key_files_hash(ws, every)
    assert key_for("src/**/go.sum") == "k-" + key_files_hash(ws, every[1:3])
    assert key_for("./go.sum,src/go.mod") == "k-" + key_files_hash(ws, ["go.sum", "src/go.mod"])
    assert key_for("vendor/**/b/go.sum\n**/tools/go.sum") == "k-" + key_files_hash(
        ws, ["src/tools/go.sum", "vendor/a/b/go.sum"]
    )


TOKENS = "team-a-token-0123 write go-\nreader-token-4567 read\n"


@pytest.mark.parametrize("source", ["stepaction", "task"])
def test_a_token_from_param_or_secret(
    start_server: StartServer, tmp_path: Path, source: str
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    server = start_server(
        args=["--tokens", str(tokens), "--read-auth"],
        env={"UPLOADER_UPLOAD_CREDENTIALS": "ci:s3cret"},
    )
    ws = make_workspace(tmp_path / "ws")
    fill_cache(ws)

    anonymous = run_step("upload", ws, upload_params(server.url, ws), source=source)
    assert anonymous.results["uploaded"] == "false" and "401" in anonymous.output
    reader = run_step(
        "upload", ws, upload_params(server.url, ws), source=source, token_secret="reader-token-4567"
    )
    assert reader.results["uploaded"] == "false" and "403" in reader.output
    saved = run_step(
        "upload", ws, upload_params(server.url, ws), source=source, token_secret="team-a-token-0123"
    )
    assert saved.results["uploaded"] == "true", saved.output
    # the token goes in a config file: never on curl's command line, never in the output
    assert "team-a-token-0123" not in saved.output

    restored = make_workspace(tmp_path / "restored")
    denied = run_step("fetch", restored, go_params(server.url, restored), source=source)
    assert denied.results["fetched"] == "false" and "401" in denied.output
    got = run_step(
        "fetch",
        restored,
        {**go_params(server.url, restored), "token": "reader-token-4567"},
        source=source,
        secret="wrong:one",
    )
    assert got.results["fetched"] == "true", got.output


# -- client mode: cachesrv push / pull when the image has them --------------------------

CLIENT_BIN = str(Path(sys.executable).parent)  # where this environment's cachesrv is


@pytest.mark.parametrize("source", ["stepaction", "task"])
def test_client_mode_saves_and_restores_the_same_tree_as_curl_mode(
    start_server: StartServer, tmp_path: Path, source: str
) -> None:
    assert shutil.which("cachesrv", path=CLIENT_BIN), "the cachesrv command is not installed"
    server = start_server()
    first = make_workspace(tmp_path / "first")
    fill_cache(first)
    saved = run_step(
        "upload", first, upload_params(server.url, first), source=source, path_prefix=CLIENT_BIN
    )
    assert saved.rc == 0 and saved.results["uploaded"] == "true", saved.output
    assert "with cachesrv push" in saved.output  # auto: the client, since it is there
    key = saved.results["key"]
    # an ordinary entry: the curl mode restores it
    plain = make_workspace(tmp_path / "plain")
    got = run_step("fetch", plain, go_params(server.url, plain, mode="curl"), source=source)
    assert got.results["fetched"] == "true", got.output
    assert tree(plain / "cache") == tree(first / "cache")

    second = make_workspace(tmp_path / "second")
    (second / "cache" / "go-build").mkdir(parents=True)
    (second / "cache" / "go-build" / "stale").write_text("old\n")
    (second / "src" / "kept.go").write_text("package x\n")  # not a cached path
    params = go_params(server.url, second, mode="client")
    hit = run_step("fetch", second, params, source=source, path_prefix=CLIENT_BIN)
    assert hit.rc == 0, hit.output
    assert hit.results == {"fetched": "true", "matched-key": key, "key": key}
    assert "with cachesrv pull" in hit.output and "exact match" in hit.output
    assert tree(second / "cache") == tree(first / "cache")
    assert (second / "src" / "kept.go").exists()

    again = run_step(
        "upload", second, upload_params(server.url, second), source=source, path_prefix=CLIENT_BIN
    )
    assert again.rc == 0 and again.results["uploaded"] == "false", again.output
    assert "already saved" in again.output


def test_client_mode_without_the_client_fails_as_configured(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server()
    work = make_workspace(tmp_path / "w")
    fill_cache(work)
    dirs = os.environ["PATH"].split(os.pathsep)
    bare = os.pathsep.join(d for d in dirs if not shutil.which("cachesrv", path=d))
    up = run_step("upload", work, upload_params(server.url, work, mode="client"), search_path=bare)
    assert up.rc == 0 and up.results["uploaded"] == "false"
    assert "no cachesrv command" in up.output
    strict = upload_params(server.url, work, mode="client", **{"fail-on-error": "true"})
    assert run_step("upload", work, strict, search_path=bare).rc == 1
    fetch = go_params(server.url, work, mode="client")
    down = run_step("fetch", work, fetch, search_path=bare)
    assert down.rc == 0 and down.results["fetched"] == "false"
