"""The ASGI zero-copy send extension, taught to hypercorn's HTTP/1.1 path.

A hot restore's bytes are in the page cache already (:mod:`cachesrv.restore.hot`).
Sent as ``bytes``, each MiB cost this process a copy out of the page cache (a
``pread``) and another into the socket (``send``): ~0.1 ms each, the two largest
items of a hot GET's profile. ``sendfile(2)`` hands the socket the cached pages
themselves. hypercorn does not implement the extension that lets an ASGI app ask
for it (``http.response.zerocopysend``,
https://asgi.readthedocs.io/en/latest/extensions.html#zero-copy-send), but h11 is
built for it: its body writers only take a body's ``len()`` and pass the object
on (``Connection.send_with_data_passthrough``). So three of hypercorn's classes get
a subclass each, and :func:`install` puts them where hypercorn's trio worker looks
them up:

* the stream offers the extension on plain-text HTTP/1.x connections and turns a
  ``zerocopysend`` message into a :class:`FileBody` event;
* the HTTP/1.1 protocol hands h11 a placeholder of the body's length (h11 checks it
  against ``Content-Length``) and passes the file range on as a :class:`RawFile`;
* the TCP server sends a :class:`RawFile` with ``os.sendfile``, under the same lock
  and shield as its ``send_all`` of bytes.

Everything else is hypercorn's own code. :func:`install` checks that the classes it
extends have the shape read here (hypercorn 0.18) and otherwise changes nothing:
the app then sees no extension and sends ``bytes`` as before.
"""

from __future__ import annotations

import errno
import importlib.metadata
import logging
import os
from dataclasses import dataclass
from typing import Any, cast

import h11
import hypercorn.protocol
import hypercorn.protocol.h11
import hypercorn.trio.run
import trio
from hypercorn.events import Closed, RawData
from hypercorn.events import Event as ServerEvent
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.utils import UnexpectedMessageError, suppress_body

log = logging.getLogger("cachesrv")

EXTENSION = "http.response.zerocopysend"
READ_VERSIONS = ("0.18.",)  # hypercorn's versions whose classes were read for this
_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN)


@dataclass(frozen=True)
class FileBody(StreamEvent):
    """A response body's bytes ``[offset, offset + count)`` of the open file ``fd``."""

    fd: int
    offset: int
    count: int


@dataclass(frozen=True)
class RawFile(ServerEvent):
    """:class:`FileBody` as the TCP server sends it."""

    fd: int
    offset: int
    count: int


class _Placeholder:
    """What h11 sees of a file body: it asks only its length (see the module's text)."""

    __slots__ = ("body",)

    def __init__(self, body: FileBody) -> None:
        self.body = body

    def __len__(self) -> int:
        return self.body.count


class _OfferingApp:
    """hypercorn's app wrapper, with the extension in the scope it passes on."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, *args: Any) -> None:
        if scope.get("type") == "http" and scope.get("http_version") in ("1.0", "1.1"):
            scope["extensions"][EXTENSION] = {}
        await self.app(scope, *args)


class ZeroCopyHTTPStream(HTTPStream):
    def __init__(
        self, app: Any, config: Any, context: Any, task_group: Any, ssl: bool, *args: Any
    ) -> None:
        # sendfile writes the socket itself: under TLS the bytes must go through the
        # TLS stream, so the extension is offered only without it
        offering: Any = app if ssl else _OfferingApp(app)
        super().__init__(offering, config, context, task_group, ssl, *args)

    async def app_send(self, message: Any) -> None:
        if message is None or message["type"] != EXTENSION:
            await super().app_send(message)
            return
        if self.state != ASGIHTTPState.RESPONSE:
            raise UnexpectedMessageError(self.state, message["type"])
        file = message["file"]
        fd = file if isinstance(file, int) else file.fileno()
        count = int(message["count"])
        if count and not suppress_body(self.scope["method"], int(self.response["status"])):
            await self.send(FileBody(self.stream_id, fd, int(message.get("offset", 0)), count))
        if not message.get("more_body", False):
            await self._send_closed()


class ZeroCopyH11Protocol(H11Protocol):
    async def stream_send(self, event: StreamEvent) -> None:
        if not isinstance(event, FileBody):
            await super().stream_send(event)
            return
        try:
            connection = cast(h11.Connection, self.connection)  # an HTTP stream's, not a WS's
            body = cast(bytes, _Placeholder(event))  # h11 takes only its len() (see above)
            parts = connection.send_with_data_passthrough(h11.Data(data=body))
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            return
        for part in parts or ():  # framing bytes around it, if the body is chunked
            if isinstance(part, _Placeholder):
                await self.send(RawFile(event.fd, event.offset, event.count))
            else:
                await self.send(RawData(data=bytes(part)))


class ZeroCopyTCPServer(TCPServer):
    async def protocol_send(self, event: ServerEvent) -> None:
        if not isinstance(event, RawFile):
            await super().protocol_send(event)
            return
        async with self.send_lock:
            try:
                with trio.CancelScope(shield=True):
                    await _sendfile(self.stream.socket, event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())


async def _sendfile(sock: trio.socket.SocketType, event: RawFile) -> None:
    """All of the event's bytes, waiting for room in the socket's buffer as ``send_all``
    does; a closed connection raises as trio's streams do."""
    offset, left = event.offset, event.count
    while left:
        if sock.fileno() < 0:
            raise trio.ClosedResourceError
        try:
            sent = os.sendfile(sock.fileno(), event.fd, offset, left)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        except OSError as exc:
            if exc.errno in _GONE:
                raise trio.BrokenResourceError from exc
            raise
        if sent == 0:  # the file is shorter than the range: the caller's bug, not the net's
            raise OSError(errno.EIO, f"file ended {left} bytes short of the range sent")
        offset += sent
        left -= sent
    await trio.lowlevel.checkpoint()


def install() -> bool:
    """Make hypercorn's trio worker build its HTTP/1.1 connections from the classes
    here; False (and nothing changed) where hypercorn is not a version read here."""
    places = (
        (hypercorn.protocol.h11, "HTTPStream", HTTPStream, ZeroCopyHTTPStream),
        (hypercorn.protocol, "H11Protocol", H11Protocol, ZeroCopyH11Protocol),
        (hypercorn.trio.run, "TCPServer", TCPServer, ZeroCopyTCPServer),
    )
    current = [getattr(module, name, None) for module, name, _, _ in places]
    if current == [ours for *_, ours in places]:
        return True
    version = importlib.metadata.version("hypercorn")
    if not version.startswith(READ_VERSIONS) or current != [cls for _, _, cls, _ in places]:
        log.warning("hypercorn %s is not a version cachesrv extends: restores send copies", version)
        return False
    for module, name, _, ours in places:
        setattr(module, name, ours)
    return True
