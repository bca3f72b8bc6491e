"""Conditional requests and byte ranges (RFC 9110), pure functions of headers."""

from __future__ import annotations

import datetime
import email.utils
import math


def http_date(timestamp: float) -> str:
    """IMF-fixdate, e.g. ``Fri, 27 Nov 2026 17:20:47 GMT`` (what the seed's strptime parses)."""
    return email.utils.formatdate(math.floor(timestamp), usegmt=True)


def parse_http_date(value: str) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime and '-0000' dates: RFC 9110 says they are GMT
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _number(text: str) -> int:
    """A decimal of ASCII digits only (int() also takes '_', '+', spaces and other
    scripts' digits, which RFC 9110's ranges do not)."""
    if not (text.isascii() and text.isdigit()):
        raise ValueError(text)
    return int(text)


def _tags(header: str) -> list[str]:
    return [t.strip() for t in header.split(",") if t.strip()]


def _weak_match(header: str, etag: str) -> bool:
    bare = etag.removeprefix("W/")
    return any(t == "*" or t.removeprefix("W/") == bare for t in _tags(header))


def _strong_match(header: str, etag: str) -> bool:
    return any(t == "*" or (t == etag and not t.startswith("W/")) for t in _tags(header))


def precondition(headers: dict[str, str], etag: str, mtime: float) -> int | None:
    """The status a GET/HEAD must answer with instead of the content (412 or 304), if any.
    Evaluated in RFC 9110 section 13.2.2 order."""
    seconds = math.floor(mtime)
    if "if-match" in headers:
        if not _strong_match(headers["if-match"], etag):
            return 412
    elif "if-unmodified-since" in headers:
        since = parse_http_date(headers["if-unmodified-since"])
        if since is not None and seconds > since:
            return 412
    if "if-none-match" in headers:
        if _weak_match(headers["if-none-match"], etag):
            return 304
    elif "if-modified-since" in headers:
        since = parse_http_date(headers["if-modified-since"])
        if since is not None and seconds <= since:
            return 304
    return None


class Unsatisfiable(Exception):
    pass


def byte_range(
    headers: dict[str, str], size: int, etag: str, mtime: float
) -> tuple[int, int] | None:
    """The single range [start, end) to serve, or None for the whole body.

    Raises :class:`Unsatisfiable` (416). Several ranges, or a stale ``If-Range``,
    serve the whole body, which RFC 9110 allows.
    """
    header = headers.get("range")
    if header is None:
        return None
    if "if-range" in headers:
        validator = headers["if-range"].strip()
        if validator.startswith('"') or validator.startswith("W/"):
            if validator != etag:
                return None
        elif parse_http_date(validator) != math.floor(mtime):
            return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            suffix = _number(last)
            if suffix < 0:
                return None
            if suffix == 0 or size == 0:
                raise Unsatisfiable
            return max(size - suffix, 0), size
        start = _number(first)
        end = _number(last) + 1 if last else size
    except ValueError:
        return None
    if start < 0 or (last and end <= start):
        return None
    if start >= size:
        raise Unsatisfiable
    return start, min(end, size)


def accepts_zstd(headers: dict[str, str]) -> bool:
    for item in headers.get("accept-encoding", "").split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() == "zstd":
            quality = params.strip().removeprefix("q=")
            try:
                return not params or float(quality) > 0
            except ValueError:
                return False
    return False
