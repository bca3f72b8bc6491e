"""The push/pull wire format, sans-I/O: lists of chunk ids and batches of chunk frames.

Shared by the server's ``/-/chunks/`` routes and the client (:mod:`cachesrv.client`):

- an *id list* is ids of 32 bytes back to back (a request or response body);
- a *chunk batch* is records back to back, each ``id (32) | codec (1) | raw size (4) |
  length (4)`` then ``length`` bytes: the chunk as one zstd frame (codec 0) or raw
  (codec 1), exactly as :class:`cachesrv.store.Frame` keeps it, so the server stores
  and serves frames without recompressing them.

Manifests travel as :meth:`cachesrv.manifest.Manifest.encode` makes them: there is
one manifest format.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from cachesrv.store import Codec, Frame

ID_SIZE = 32
RECORD = struct.Struct("<32sBII")
# One request's worth: the server refuses more, the client never sends more.
MAX_IDS = 8192
MAX_BATCH_BYTES = 16 << 20


class WireError(ValueError):
    """A body that is not an id list or a chunk batch (the message says why)."""


def encode_ids(ids: Iterable[bytes]) -> bytes:
    return b"".join(ids)


def decode_ids(body: bytes, limit: int = MAX_IDS) -> list[bytes]:
    if len(body) % ID_SIZE:
        raise WireError(f"an id list is a multiple of {ID_SIZE} bytes, not {len(body)}")
    if len(body) // ID_SIZE > limit:
        raise WireError(f"more than {limit} ids in one request")
    return [body[i : i + ID_SIZE] for i in range(0, len(body), ID_SIZE)]


def encode_record(chunk_id: bytes, frame: Frame) -> bytes:
    codec = Codec.ZSTD if frame.codec == Codec.ZSTD else Codec.RAW  # pending is raw too
    return RECORD.pack(chunk_id, int(codec), frame.raw_size, len(frame.data)) + frame.data


class BatchReader:
    """feed(bytes) in, (id, Frame) records out; :meth:`finish` checks nothing is left
    over. Frames are unverified: the caller checks each against its id."""

    def __init__(self, max_raw: int = 1 << 30) -> None:
        self._buffer = bytearray()
        self._max_raw = max_raw

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[tuple[bytes, Frame]]:
        self._buffer += data
        buffer = self._buffer
        pos = 0
        while len(buffer) - pos >= RECORD.size:
            cid, codec, raw_size, length = RECORD.unpack_from(buffer, pos)
            if codec not in (Codec.ZSTD, Codec.RAW):
                raise WireError(f"chunk {cid.hex()}: unknown codec {codec}")
            if raw_size > self._max_raw or length > self._max_raw:
                raise WireError(f"chunk {cid.hex()}: {raw_size} bytes is larger than a chunk")
            end = pos + RECORD.size + length
            if len(buffer) < end:
                break
            data_bytes = bytes(buffer[pos + RECORD.size : end])
            pos = end
            yield cid, Frame(data_bytes, raw_size, Codec(codec))
        del buffer[:pos]

    def finish(self) -> None:
        if self._buffer:
            raise WireError(f"chunk batch ends inside a record ({len(self._buffer)} bytes left)")
