"""Specification of cachesrv.http.conditional: validators and Range headers in, a decision out.

Pure functions of the request headers (lower-case names, as the app passes them), the
object's ETag as sent (quoted) and its mtime; no server needed.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachesrv.http.conditional import (
    Unsatisfiable,
    accepts_zstd,
    byte_range,
    http_date,
    parse_http_date,
    precondition,
)

ETAG = '"0123456789abcdef"'
MTIME = 1_700_000_000.75  # served as Last-Modified with whole seconds
LAST_MODIFIED = "Tue, 14 Nov 2023 22:13:20 GMT"
EARLIER = "Tue, 14 Nov 2023 22:13:19 GMT"
LATER = "Tue, 14 Nov 2023 22:13:21 GMT"
SIZE = 1000


def served(headers: dict[str, str], size: int = SIZE) -> tuple[int, int] | None | int:
    """What byte_range decides: the range, None for the whole body, or 416."""
    try:
        return byte_range(headers, size, ETAG, MTIME)
    except Unsatisfiable:
        return 416


# -- dates -------------------------------------------------------------------------------


def test_last_modified_is_an_imf_fixdate_of_whole_seconds() -> None:
    assert http_date(MTIME) == LAST_MODIFIED
    assert parse_http_date(LAST_MODIFIED) == 1_700_000_000


@pytest.mark.parametrize(
    "value",
    ["Tue, 14 Nov 2023 22:13:20 GMT", "Tuesday, 14-Nov-23 22:13:20 GMT"],
    ids=["imf-fixdate", "rfc850"],
)
def test_every_http_date_format_is_understood(value: str) -> None:
    assert parse_http_date(value) == 1_700_000_000


@pytest.mark.parametrize("value", ["", "yesterday", "Tue, 99 Nov 2023 22:13:20 GMT", "1700000000"])
def test_an_invalid_date_is_none(value: str) -> None:
    assert parse_http_date(value) is None


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0, max_value=2**33, allow_nan=False))
def test_http_date_round_trips_to_the_whole_second(timestamp: float) -> None:
    assert parse_http_date(http_date(timestamp)) == int(timestamp)


# -- preconditions (RFC 9110 section 13.2.2) ----------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        # If-Match: strong comparison; a weak tag never matches
        ({"if-match": ETAG}, None),
        ({"if-match": '"other", ' + ETAG}, None),
        ({"if-match": "*"}, None),
        ({"if-match": '"other"'}, 412),
        ({"if-match": "W/" + ETAG}, 412),
        # If-Unmodified-Since: judged on whole seconds; an invalid date is ignored
        ({"if-unmodified-since": LAST_MODIFIED}, None),
        ({"if-unmodified-since": LATER}, None),
        ({"if-unmodified-since": EARLIER}, 412),
        ({"if-unmodified-since": "not a date"}, None),
        # ... and ignored when If-Match is there
        ({"if-match": ETAG, "if-unmodified-since": EARLIER}, None),
        # If-None-Match: weak comparison
        ({"if-none-match": ETAG}, 304),
        ({"if-none-match": "W/" + ETAG}, 304),
        ({"if-none-match": '"a", "b",' + ETAG}, 304),
        ({"if-none-match": "*"}, 304),
        ({"if-none-match": '"other"'}, None),
        # If-Modified-Since: whole seconds; invalid ignored
        ({"if-modified-since": LAST_MODIFIED}, 304),
        ({"if-modified-since": LATER}, 304),
        ({"if-modified-since": EARLIER}, None),
        ({"if-modified-since": "garbage"}, None),
        # ... and ignored when If-None-Match is there
        ({"if-none-match": '"other"', "if-modified-since": LATER}, None),
        ({"if-none-match": ETAG, "if-modified-since": EARLIER}, 304),
        # a failed If-Match wins over a matching If-None-Match
        ({"if-match": '"other"', "if-none-match": ETAG}, 412),
        ({"if-unmodified-since": EARLIER, "if-modified-since": LATER}, 412),
    ],
)
def test_precondition(headers: dict[str, str], expected: int | None) -> None:
    assert precondition(headers, ETAG, MTIME) == expected


def test_a_weak_etag_of_ours_still_fails_if_match_and_matches_if_none_match() -> None:
    weak = "W/" + ETAG
    assert precondition({"if-match": weak}, weak, MTIME) == 412
    assert precondition({"if-none-match": ETAG}, weak, MTIME) == 304


# -- Range (RFC 9110 section 14) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-0", (0, 1)),
        ("bytes=0-499", (0, 500)),
        ("bytes=500-999", (500, 1000)),
        ("bytes=500-", (500, 1000)),
        ("bytes=999-", (999, 1000)),
        ("bytes=500-5000", (500, 1000)),  # the end is clipped to the object
        ("BYTES=10-19", (10, 20)),  # the unit is case-insensitive
        ("bytes=10-19 ", (10, 20)),
        # suffix ranges: the last N bytes, all of them if N is larger than the object
        ("bytes=-1", (999, 1000)),
        ("bytes=-10", (990, 1000)),
        ("bytes=-1000", (0, 1000)),
        ("bytes=-5000", (0, 1000)),
    ],
)
def test_a_single_range_is_served(header: str, expected: tuple[int, int]) -> None:
    assert served({"range": header}) == expected


@pytest.mark.parametrize(
    "header",
    [
        "bytes=0-1,5-9",  # several ranges: the whole body, which RFC 9110 allows
        "bytes=0-1, 5-",
        "bytes=-5,-10",
        "items=0-9",  # a unit we do not know
        "bytes 0-9",
        "bytes=",
        "bytes=-",
        "bytes=9",
        "bytes=9-5",  # last before first
        "bytes=9-8",
        "bytes=--5",
        "bytes=a-b",
        "bytes=0x10-0x20",
        "bytes=1.5-3",
        "=0-9",
    ],
)
def test_multiple_ranges_and_bad_syntax_serve_the_whole_body(header: str) -> None:
    assert served({"range": header}) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=1000-", SIZE),  # first byte past the end
        ("bytes=1000-2000", SIZE),
        ("bytes=5000-", SIZE),
        ("bytes=-0", SIZE),  # an empty suffix
        ("bytes=0-", 0),  # nothing can be satisfied in an empty object
        ("bytes=-5", 0),
    ],
)
def test_unsatisfiable_ranges_are_416(header: str, size: int) -> None:
    assert served({"range": header}, size) == 416


def test_no_range_header_serves_the_whole_body() -> None:
    assert served({}) is None
    assert served({"if-range": ETAG}) is None


@pytest.mark.parametrize(
    ("if_range", "expected"),
    [
        (ETAG, (0, 10)),  # the same representation: the range
        ('"stale"', None),  # changed since: the whole body
        ("W/" + ETAG, None),  # a weak tag never validates a range
        (LAST_MODIFIED, (0, 10)),  # the exact Last-Modified date
        (LATER, None),  # a date must match exactly, not just be later
        (EARLIER, None),
        ("not a date", None),
    ],
)
def test_if_range(if_range: str, expected: tuple[int, int] | None) -> None:
    assert served({"range": "bytes=0-9", "if-range": if_range}) == expected


def test_a_stale_if_range_serves_the_whole_body_even_for_an_unsatisfiable_range() -> None:
    assert served({"range": "bytes=5000-", "if-range": '"stale"'}) is None
    assert served({"range": "bytes=5000-", "if-range": ETAG}) == 416


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 5000), st.integers(0, 5000), st.integers(0, 3000))
def test_a_served_range_is_the_slice_the_header_names(first: int, length: int, size: int) -> None:
    """Against a model: the bytes of ``bytes=first-last`` in a list of ``size`` bytes."""
    last = first + length
    data = list(range(size))
    span = served({"range": f"bytes={first}-{last}"}, size)
    if first >= size:
        assert span == 416
    else:
        assert isinstance(span, tuple) and span[1] <= size
        assert data[span[0] : span[1]] == data[first : last + 1]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 5000), st.integers(0, 3000))
def test_a_suffix_range_is_the_last_bytes(suffix: int, size: int) -> None:
    data = list(range(size))
    span = served({"range": f"bytes=-{suffix}"}, size)
    if suffix == 0 or size == 0:
        assert span == 416
    else:
        assert isinstance(span, tuple)
        assert data[span[0] : span[1]] == data[-suffix:]


# -- Accept-Encoding -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("zstd", True),
        ("gzip, deflate, br, zstd", True),
        ("ZSTD", True),
        ("zstd;q=0.5", True),
        ("gzip;q=1.0, zstd; q=0.1", True),
        ("zstd;q=0", False),
        ("zstd;q=0.0", False),
        ("zstd;q=nonsense", False),
        ("gzip, br", False),
        ("zstdx", False),
        ("", False),
    ],
)
def test_accepts_zstd(header: str, expected: bool) -> None:
    assert accepts_zstd({"accept-encoding": header}) is expected


def test_no_accept_encoding_means_identity() -> None:
    assert accepts_zstd({}) is False


@pytest.mark.parametrize(
    "header", ["bytes=1_0-2_0", "bytes=+1-+2", "bytes=-+5", "bytes=\u0661-\u0662"]
)
def test_range_numbers_are_ascii_digits_only_else_the_header_is_ignored(header: str) -> None:
    # RFC 9110 14.1.1: positions are 1*DIGIT; int() also takes '_', signs, other scripts
    assert byte_range({"range": header}, 100, '"e"', 0) is None


def test_an_asctime_date_is_gmt_whatever_the_servers_time_zone() -> None:
    code = (
        "import os, time; os.environ['TZ'] = 'America/New_York'; time.tzset();"
        "from cachesrv.http.conditional import parse_http_date;"
        "print(parse_http_date('Sun Nov  6 08:49:37 1994'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) == 784111777.0  # RFC 9110 5.6.7: asctime-date is GMT
