"""The ingest workers' wire protocol, without I/O: frames to bytes, bytes to frames.

Both ends use this module (the worker process with blocking sockets, the server with
trio's), so the format is written once and tested without sockets.

A frame is ``kind (1 byte) | upload (u32 LE) | length (u32 LE) | payload``: one
socket carries several uploads at once, each named by the number the server gave it.
server -> worker: :data:`BEGIN` (JSON options), :data:`DATA` (body bytes), :data:`END`,
:data:`ABORT`. worker -> server: :data:`RESULT` (:func:`encode_result`), :data:`ERROR`
(JSON ``message``, ``errno``), :data:`ABORTED`, each for the upload its frame names.
"""

from __future__ import annotations

import errno
import json
import struct
from collections import deque
from dataclasses import asdict
from typing import NamedTuple

from cachesrv.catalog import StoredManifest
from cachesrv.ingest.session import IngestStats

HEADER = struct.Struct("<cII")
BEGIN, DATA, END, ABORT = b"B", b"D", b"E", b"A"
RESULT, ERROR, ABORTED = b"R", b"X", b"K"
_LENGTH = struct.Struct("<I")


class Frame(NamedTuple):
    kind: bytes
    upload: int
    payload: memoryview


def header(kind: bytes, length: int, upload: int = 0) -> bytes:
    """The header of a frame whose payload (``length`` bytes) is sent after it."""
    return HEADER.pack(kind, upload, length)


def frame(kind: bytes, payload: bytes = b"", upload: int = 0) -> bytes:
    return HEADER.pack(kind, upload, len(payload)) + payload


class FrameDecoder:
    """Bytes in (:meth:`feed`, in any pieces), whole frames out (:meth:`next_frame`).

    A payload that arrived in one piece is a view of that piece, not a copy; fed
    pieces must not change afterwards (``bytes`` from ``recv`` do not).
    """

    def __init__(self) -> None:
        self._parts: deque[memoryview] = deque()
        self._size = 0

    @property
    def buffered(self) -> int:
        """Bytes fed and not yet returned as frames."""
        return self._size

    def feed(self, data: bytes | memoryview) -> None:
        if data:
            self._parts.append(memoryview(data).cast("B"))
            self._size += len(data)

    def next_header(self) -> tuple[bytes, int] | None:
        """(kind, upload) of the next frame if it is whole, without taking it."""
        header = self._whole_header()
        return None if header is None else header[:2]

    def next_frame(self) -> Frame | None:
        """The next whole frame, or None until more bytes are fed."""
        header = self._whole_header()
        if header is None:
            return None
        kind, upload, length = header
        self._take(HEADER.size)
        return Frame(kind, upload, self._take(length))

    def _whole_header(self) -> tuple[bytes, int, int] | None:
        """(kind, upload, payload length) of the next frame, if all of it is here."""
        if self._size < HEADER.size:
            return None
        first = self._parts[0]
        head = first if len(first) >= HEADER.size else self._join(HEADER.size)
        kind, upload, length = HEADER.unpack_from(head)
        return (kind, upload, length) if self._size >= HEADER.size + length else None

    def _join(self, n: int) -> bytes:
        out = bytearray()
        for part in self._parts:
            out += part[: n - len(out)]
            if len(out) == n:
                break
        return bytes(out)

    def _take(self, n: int) -> memoryview:
        if n == 0:
            return memoryview(b"")
        self._size -= n
        first = self._parts[0]
        if len(first) >= n:
            if len(first) == n:
                self._parts.popleft()
            else:
                self._parts[0] = first[n:]
            return first[:n]
        out = bytearray(n)
        pos = 0
        while pos < n:
            part = self._parts[0]
            take = min(len(part), n - pos)
            out[pos : pos + take] = part[:take]
            pos += take
            if take == len(part):
                self._parts.popleft()
            else:
                self._parts[0] = part[take:]
        return memoryview(out)


# -- payloads ---------------------------------------------------------------------


def encode_begin(tar_aware: bool) -> bytes:
    return json.dumps({"tar_aware": tar_aware}).encode()


def decode_begin(payload: bytes | memoryview) -> bool:
    """Whether the upload is split tar-aware."""
    return bool(json.loads(bytes(payload)).get("tar_aware", True))


def encode_result(stats: IngestStats, stored: StoredManifest, grown: bool = False) -> bytes:
    """``u32 JSON length | JSON (stats, id, size, digest, grown) | manifest body``: the
    body crosses as the worker encoded it, so the server neither decodes nor re-encodes
    it. ``grown``: the worker holds much more memory than when it started (replace it)."""
    meta = json.dumps(
        {
            "stats": asdict(stats),
            "id": stored.manifest_id.hex(),
            "size": stored.size,
            "digest": stored.digest.hex(),
            "grown": grown,
        }
    ).encode()
    return _LENGTH.pack(len(meta)) + meta + stored.body


def decode_result(payload: bytes | memoryview) -> tuple[IngestStats, StoredManifest, bool]:
    (length,) = _LENGTH.unpack_from(payload)
    meta = json.loads(bytes(payload[_LENGTH.size : _LENGTH.size + length]))
    body = bytes(payload[_LENGTH.size + length :])
    stored = StoredManifest(
        bytes.fromhex(meta["id"]), body, meta["size"], bytes.fromhex(meta["digest"])
    )
    return IngestStats(**meta["stats"]), stored, bool(meta["grown"])


def encode_error(exc: OSError) -> bytes:
    return json.dumps({"message": str(exc), "errno": exc.errno}).encode()


def decode_error(payload: bytes | memoryview) -> OSError:
    """The worker's failure as this side's OSError (ENOSPC stays ENOSPC: a 507)."""
    report = json.loads(bytes(payload))
    return OSError(report.get("errno") or errno.EIO, report["message"])
