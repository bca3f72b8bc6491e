"""The status page at /-/, in a real headless browser (Debian's chromium, installed here
when missing): it loads without console errors or failed requests, shows the names and
numbers of the store the test filled, and leaves screenshots under artifacts/."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import StartServer, http_request

from cachesrv.http.status_page import size

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


def _install_chromium() -> None:
    """Debian's package, as root, from Debian's registry only (no browser download)."""
    if os.path.exists(CHROMIUM):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail("chromium is missing and cannot be installed (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True)
        subprocess.run(install, env=env, check=True, capture_output=True)


@pytest.fixture(scope="session")
def chromium() -> str:
    _install_chromium()
    return CHROMIUM


def _browse(
    chromium: str, profile: Path, url: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _console(stderr: str) -> list[str]:
    # chromium logs every console message (errors, uncaught exceptions) as CONSOLE lines;
    # the page has no script, so any is a fault
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture
def profile(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "chromium-profile"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_console_check_sees_an_error(chromium: str, profile: Path) -> None:
    page = "data:text/html,<script>console.error('status-page-check')</script>"
    result = _browse(chromium, profile, page, "--dump-dom")
    assert any("status-page-check" in line for line in _console(result.stderr)), result.stderr


def test_status_page_shows_the_store_in_a_real_browser(
    chromium: str, profile: Path, start_server: StartServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_server(
        args=["--gc-interval", "1s", "--history-interval", "1s", "--max-size", "64M"],
        env={"CACHESRV_LOG_FORMAT": "json"},
    )
    base = os.urandom(1_500_000)
    for day in range(1, 4):
        body = base + os.urandom(300_000 * day)
        assert http_request("PUT", f"{server.url}/builds/go-cache-day{day}.tar", body)[0] == 201
        assert http_request("PUT", f"{server.url}/-/cache/go-linux-day{day}", body)[0] == 201
        http_request("GET", f"{server.url}/builds/go-cache-day{day}.tar")
        http_request("GET", f"{server.url}/-/cache/go-linux-?restore-keys=go-")
        http_request("GET", f"{server.url}/builds/missing-{day}.tar")
        time.sleep(1.1)  # a history point per round

    def stats() -> dict:  # type: ignore[type-arg]
        with urllib.request.urlopen(f"{server.url}/-/stats") as response:
            return json.load(response)  # type: ignore[no-any-return]

    deadline = time.monotonic() + 30
    while not (stats()["caches"]["marked_at"] and len(stats()["history"]) >= 3):
        assert time.monotonic() < deadline, "no GC mark or history in time"
        time.sleep(0.2)
    numbers = stats()
    logged = len(server.log_text().splitlines())

    result = _browse(chromium, profile, f"{server.url}/-/", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    assert _console(result.stderr) == []
    dom = result.stdout
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    for day in range(1, 4):
        assert f"builds/go-cache-day{day}.tar" in text and f"go-linux-day{day}" in text
    assert size(numbers["logical_bytes"]) in text and size(numbers["stored_bytes"]) in text
    assert f"{numbers['dedup_ratio']:.2f}×" in text
    assert "--max-size 64.0 MiB" in text and "hard limit 76.8 MiB" in text
    assert "Store growth" in dom and "<polyline" in dom and "<rect" in dom  # both charts
    assert "Recent uploads" in text and "Recent restores" in text and "partial" in text
    assert "No collection has run" not in text

    ARTIFACTS.mkdir(exist_ok=True)
    shots = {"laptop": "1280,2200", "phone": "412,3000"}
    for device, window in shots.items():
        path = ARTIFACTS / f"status-page-{device}.png"
        path.unlink(missing_ok=True)
        result = _browse(
            chromium,
            profile,
            f"{server.url}/-/",
            f"--screenshot={path}",
            f"--window-size={window}",
            "--hide-scrollbars",
        )
        assert result.returncode == 0 and path.stat().st_size > 10_000, result.stderr[-2000:]
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert _console(result.stderr) == []
        with capsys.disabled():
            print(f"\nstatus page screenshot ({device}): {path}")

    # every request the browser made was answered 2xx (no missing icon, style or image)
    browser = [
        json.loads(line)
        for line in server.log_text().splitlines()[logged:]
        if '"cachesrv.access"' in line
    ]
    browser = [r for r in browser if "HeadlessChrome" in str(r.get("user_agent", ""))]
    assert browser and all(200 <= int(r["status"]) < 300 for r in browser), browser
