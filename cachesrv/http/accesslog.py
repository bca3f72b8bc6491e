"""One record per request: its id, what it asked, what it got, how long it took.

:class:`RequestObserver` wraps the application: it gives each request an
:class:`Exchange` (also reachable from handlers through :func:`current`, so a
handler notes what only it knows, such as an upload's dedup numbers, with one
call), counts the bytes that pass both ways, sends the id back as
``Cachesrv-Request-Id``, and when the request is over hands the finished
exchange to its sinks: the access log line, the metrics, the recent activity.

hypercorn's own access log is off (``server.py``): it logs a request when it
starts and again when it ends; this logs each request once, at its end.
Credentials never reach a line: no header is logged, and the values of query
parameters that look like secrets are replaced.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

if TYPE_CHECKING:  # the CLI configures logging through this module: keep it light
    from cachesrv.ingest import IngestStats

access_log = logging.getLogger("cachesrv.access")

REQUEST_ID_HEADER = b"Cachesrv-Request-Id"
_SECRET_PARAM = re.compile(r"token|secret|passw|auth|credential|signature|sig$|key_?id", re.I)


@dataclass
class Exchange:
    """What one request did, filled in as it runs."""

    id: str
    method: str
    path: str
    query: str  # secrets redacted
    remote: str
    user_agent: str
    started: float  # time.time() at arrival
    clock: float  # perf_counter() at arrival
    status: int | None = None  # None: no response was started
    bytes_in: int = 0  # body bytes received (as sent, before Content-Encoding is removed)
    bytes_out: int = 0  # body bytes sent
    seconds: float = 0.0
    error: str | None = None  # why it ended early: an exception's name, "client gone"
    upload: IngestStats | None = None
    name: str | None = None  # the object path or cache key it stored or served
    match: str | None = None  # keyed restores: exact, partial or miss

    @property
    def dedup_fraction(self) -> float | None:
        stats = self.upload
        if stats is None or not stats.logical_bytes:
            return None
        return round(1 - stats.new_bytes / stats.logical_bytes, 4)

    def as_dict(self) -> dict[str, object]:
        record: dict[str, object] = {
            "request_id": self.id,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "duration_s": round(self.seconds, 6),
            "remote": self.remote,
        }
        if self.query:
            record["query"] = self.query
        if self.user_agent:
            record["user_agent"] = self.user_agent
        if self.name is not None:
            record["name"] = self.name
        if self.match is not None:
            record["match"] = self.match
        if self.upload is not None:
            record["upload_bytes"] = self.upload.logical_bytes
            record["upload_new_bytes"] = self.upload.new_bytes
            record["dedup_fraction"] = self.dedup_fraction
        if self.error is not None:
            record["error"] = self.error
        return record

    def as_text(self) -> str:
        query = f"?{self.query}" if self.query else ""
        line = (
            f'{self.remote} "{self.method} {self.path}{query}" {self.status or "-"} '
            f"in={self.bytes_in} out={self.bytes_out} {self.seconds * 1000:.1f}ms id={self.id}"
        )
        if self.upload is not None:
            line += f" dedup={self.dedup_fraction}"
        if self.match is not None:
            line += f" match={self.match}"
        if self.error is not None:
            line += f" error={self.error}"
        return line


_current: ContextVar[Exchange | None] = ContextVar("cachesrv_exchange", default=None)


def current() -> Exchange | None:
    """The exchange of the request this task serves (None outside a request)."""
    return _current.get()


def note_upload(stats: IngestStats) -> None:
    """An upload finished ingesting (its dedup numbers go to the log line and metrics)."""
    exchange = _current.get()
    if exchange is not None:
        exchange.upload = stats


def note_name(name: str) -> None:
    exchange = _current.get()
    if exchange is not None:
        exchange.name = name


def note_match(match: str, name: str | None = None) -> None:
    """A keyed restore's ``Cachesrv-Match`` (``exact``, ``partial``) or ``miss``."""
    exchange = _current.get()
    if exchange is not None:
        exchange.match = match
        if name is not None:
            exchange.name = name


def redact_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(k, "REDACTED" if _SECRET_PARAM.search(k) else v) for k, v in pairs])


def _remote(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "-"


Handler = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
Sink = Callable[[Exchange], None]


class RequestObserver:
    """Runs a request handler and reports each finished exchange to every sink."""

    def __init__(self, sinks: Iterable[Sink]) -> None:
        self.sinks = list(sinks)

    async def run(self, scope: dict[str, Any], receive: Any, send: Any, handler: Handler) -> None:
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        exchange = Exchange(
            id=secrets.token_hex(8),
            method=scope["method"],
            path=scope["path"],
            query=redact_query(scope.get("query_string", b"").decode("latin-1")),
            remote=_remote(scope),
            user_agent=headers.get(b"user-agent", b"").decode("latin-1")[:200],
            started=time.time(),
            clock=time.perf_counter(),
        )
        token = _current.set(exchange)

        async def counted_receive() -> dict[str, Any]:
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                exchange.bytes_in += len(message.get("body", b""))
            elif message["type"] == "http.disconnect" and exchange.status is None:
                exchange.error = "client gone"
            return message

        async def counted_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                message = {
                    **message,
                    "headers": [*message["headers"], (REQUEST_ID_HEADER, exchange.id.encode())],
                }
            elif message["type"] == "http.response.body":
                exchange.bytes_out += len(message.get("body", b""))
            elif message["type"] == "http.response.zerocopysend":  # cachesrv.http.zerocopy
                exchange.bytes_out += message["count"]
            await send(message)

        try:
            await handler(scope, counted_receive, counted_send)
        except BaseException as exc:
            exchange.error = type(exc).__name__
            if exchange.status is None:
                exchange.status = 500  # what hypercorn answers for an unhandled error
            raise
        finally:
            _current.reset(token)
            exchange.seconds = time.perf_counter() - exchange.clock
            for sink in self.sinks:
                try:
                    sink(exchange)
                except Exception:  # an observer's bug must not fail the request
                    logging.getLogger("cachesrv").exception("recording a request failed")


def log_exchange(exchange: Exchange) -> None:
    """The access log sink: the line's text is the record (for ``--log-format text``);
    the JSON formatter writes the fields instead."""
    if exchange.status is None and exchange.error is None:
        exchange.error = "no response"
    access_log.info(exchange.as_text(), extra={"access": exchange.as_dict()})


class JsonFormatter(logging.Formatter):
    """Every log line as one JSON object (``--log-format json``); access lines carry
    the exchange's fields at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            line.update(access)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, log_format: str, stream: Any) -> None:
    """The process's log handler: text lines or JSON lines (for a log collector)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
