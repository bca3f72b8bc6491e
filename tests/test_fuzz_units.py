"""Fuzzing the pure parsers in-process: paths, keys, days, Range and conditionals,
multipart forms (fed by a fake body), the tar splitter. Hostile input may be
refused with an HttpError below 500; any other exception, or a result that
breaks the unit's promise, is a bug. Bounded: a few seconds per test.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import AsyncIterator
from io import BytesIO
from urllib.parse import quote, unquote

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachesrv.chunking import ChunkParams, Splitter
from cachesrv.http import conditional
from cachesrv.http.errors import HttpError, as_http_error
from cachesrv.http.forms import read_form
from cachesrv.http.limits import parse_days
from cachesrv.names import InvalidName, clean_key, clean_path

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# pieces that disguise "..", slashes and encodings, mixed with arbitrary text
TRICKS = st.sampled_from(
    [
        "..", ".", "/", "//", "\\", "%2e%2e", "%2E.", ".%2e", "%2f", "%5c", "%00", "\x00",
        "%c0%ae", "%c0%af", "%e0%80%ae", "..\\", "../", "/..", "....//", "%252e", "\u2025",
        "\uff0e\uff0e", "\u202e", "é", "\ufffd", "-", "-/", "a", "b",
    ]
)  # fmt: skip
PATHS = st.lists(st.one_of(TRICKS, st.text(max_size=6)), max_size=12).map("".join)


def _refused(exc: HttpError | InvalidName) -> None:
    error = as_http_error(exc)  # the one place errors become responses
    assert error is not None and 400 <= error.status < 500


@FAST
@given(PATHS, st.booleans(), st.booleans())
def test_clean_path_never_climbs_out_of_the_store(raw: str, for_write: bool, decode: bool) -> None:
    raw = unquote(raw, errors="replace") if decode else raw
    try:
        path = clean_path(raw, for_write=for_write)
    except InvalidName as exc:
        _refused(exc)
        return
    parts = path.split("/") if path else []
    assert all(part not in ("", ".", "..") for part in parts)
    assert "\x00" not in path and "\\" not in path and "\ufffd" not in path
    resolved = posixpath.normpath(posixpath.join("/store", path))
    assert resolved == "/store" or resolved.startswith("/store/")
    assert clean_path(path, for_write=False) == path  # idempotent
    if for_write:
        assert path and parts[0] != "-"


@FAST
@given(st.one_of(PATHS, st.text(alphabet="abc./-_:", max_size=20)))
def test_clean_key_accepts_only_the_documented_alphabet(raw: str) -> None:
    try:
        key = clean_key(raw)
    except InvalidName as exc:
        _refused(exc)
        return
    assert key == raw and 1 <= len(key) <= 512
    assert ".." not in key.split("/")
    assert set(key) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+=:@,/-"
    )


@FAST
@given(st.one_of(st.text(max_size=12), st.integers().map(str), st.floats().map(str)))
def test_days_is_a_whole_non_negative_number_or_a_400(raw: str) -> None:
    try:
        days = parse_days(raw)
    except HttpError as exc:
        _refused(exc)
        return
    assert 0 <= days <= 999999


RANGE_TEXT = st.one_of(
    st.text(max_size=30),
    st.builds(
        lambda unit, a, b: f"{unit}={a}-{b}",
        st.sampled_from(["bytes", "BYTES", " bytes", "items", ""]),
        st.one_of(st.just(""), st.integers(-5, 10**20).map(str), st.text(max_size=4)),
        st.one_of(st.just(""), st.integers(-5, 10**20).map(str), st.text(max_size=4)),
    ),
)
HEADER_VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(['"abc"', 'W/"abc"', "*", "Tue, 01 Dec 2026 20:55:18 GMT", "garbage, *"]),
)


@FAST
@given(
    RANGE_TEXT,
    st.integers(0, 10**12),
    st.dictionaries(
        st.sampled_from(
            ["if-range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since"]
        ),
        HEADER_VALUES,
    ),
    st.floats(0, 4e9),
)
def test_range_and_conditionals_never_raise_and_stay_inside_the_object(
    header: str, size: int, extra: dict[str, str], mtime: float
) -> None:
    headers = {"range": header, **extra}
    etag = '"abc"'
    status = conditional.precondition(headers, etag, mtime)
    assert status in (None, 304, 412)
    try:
        span = conditional.byte_range(headers, size, etag, mtime)
    except conditional.Unsatisfiable:
        return
    if span is not None:
        start, end = span
        assert 0 <= start < end <= size


@FAST
@given(st.text(max_size=60))
def test_accept_encoding_never_raises(value: str) -> None:
    assert conditional.accepts_zstd({"accept-encoding": value}) in (True, False)


async def _fake_body(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    prev = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        if cut > prev:
            yield data[prev:cut]
            prev = cut


def _form(fields: list[tuple[str, bytes]], boundary: str) -> bytes:
    out = b""
    for name, value in fields:
        filename = '; filename="f"' if name == "file" else ""
        out += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n\r\n'
            ).encode()
            + value
            + b"\r\n"
        )
    return out + f"--{boundary}--\r\n".encode()


FORM_FIELDS = st.lists(
    st.tuples(st.sampled_from(["path", "file", "targz", "x", ""]), st.binary(max_size=300)),
    max_size=5,
)


@SLOW
@given(
    FORM_FIELDS,
    st.lists(st.integers(0, 4000), max_size=8),
    st.one_of(st.none(), st.binary(max_size=200)),
    st.sampled_from(["b0undary", "----x", "a" * 70]),
)
def test_multipart_forms_parse_or_are_refused_never_crash(
    fields: list[tuple[str, bytes]], cuts: list[int], garbage: bytes | None, boundary: str
) -> None:
    body = _form(fields, boundary) if garbage is None else garbage
    received: list[bytes] = []

    async def sink(data: bytes) -> None:
        received.append(data)

    async def run() -> None:
        try:
            form = await read_form(
                f"multipart/form-data; boundary={boundary}", _fake_body(body, cuts), sink
            )
        except HttpError as exc:
            _refused(exc)
            return
        files = [value for name, value in fields if name == "file"]
        assert form.has_file == bool(files)
        if files and garbage is None and boundary.encode() not in files[0]:
            assert b"".join(received) == files[0]  # the first file part, byte for byte

    trio.run(run)


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name or "x")
            info.size = len(data)
            tar.addfile(info, BytesIO(data))
    return buf.getvalue()


@SLOW
@given(
    st.lists(st.tuples(st.text(min_size=1, max_size=120), st.binary(max_size=3000)), max_size=4),
    st.integers(0, 20000),
    st.binary(max_size=600),
    st.lists(st.integers(0, 30000), max_size=10),
)
def test_tar_splitter_reproduces_any_damaged_stream(
    members: list[tuple[str, bytes]], cut: int, noise: bytes, feeds: list[int]
) -> None:
    """A valid tar, cut short at any byte, with noise spliced in: the pieces are the bytes."""
    good = _tar(members)
    data = good[: cut % (len(good) + 1)] + noise + good[cut % (len(good) + 1) :][:512]
    params = ChunkParams(256, 1024, 4096)
    splitter = Splitter(params)
    pieces = []
    prev = 0
    for point in [*sorted(f % (len(data) + 1) for f in feeds), len(data)]:
        pieces += splitter.feed(data[prev:point])
        prev = max(prev, point)
    pieces += splitter.finish()
    assert b"".join(p.data for p in pieces) == data
    assert all(p.data for p in pieces)
    assert all(len(p.data) <= params.max_size for p in pieces)


def test_quote_round_trip_helper() -> None:
    # the HTTP fuzz sends clean_path's input percent-encoded; this is that encoding
    assert unquote(quote("a/..%/é", safe="/")) == "a/..%/é"
