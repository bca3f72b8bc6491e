"""Index objects of the S3 chunk store: where each chunk lives, as a log every replica
reads and refreshes, so that ``missing()`` and ``contains()`` need no request per chunk.

Each commit (and each lifecycle step) writes one immutable object
``index/<time>-<random>.idx`` holding records::

    ADD   id, pack, offset, length, raw size, codec, frame digest, inner, span
                                             a chunk is stored there
    DEL   id, pack, offset, inner            that copy is forgotten
    QUAR  id, pack, offset, inner            that copy is corrupt
    GONE  pack                               the pack object is deleted

(``inner`` and ``span``: a grouped chunk's place in its decoded group and the group
body's stored bytes, see :class:`.table.Location`; 0 for any other.) A DEL or QUAR names
the copy it forgets, so it is a no-op against another copy of the same chunk (a
re-upload) and an ADD of a forgotten copy that arrives late (another replica's older
index object, listed after the DEL) stays forgotten. A replica lists ``index/`` and
reads the objects it has not seen yet; replaying in any order gives the same chunks, up
to which of two live copies of a chunk it reads.

Body: magic ``CSX2`` | pack count (u32) | per pack: name length (u16), name, size (u64) |
records (:data:`RECORD`). Pack numbers in records index the object's own pack table.
Objects written before grouped frames (``CSX1``, records :data:`RECORD_V1`: no inner,
no span) are read as well.
"""

from __future__ import annotations

import enum
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from cachesrv.store import Codec

from .table import ChunkTable, Location

MAGIC = b"CSX2"
# op | id | pack | offset | length | raw | codec | digest | inner | span
RECORD = struct.Struct("<B32sIQIIB16sII")
MAGIC_V1 = b"CSX1"
RECORD_V1 = struct.Struct("<B32sIQIIB16s")  # as RECORD, without inner and span
NO_DIGEST = 0x80  # op flag: the frame carries no digest
_COUNT = struct.Struct("<I")
_NAME = struct.Struct("<H")
_SIZE = struct.Struct("<Q")


class Op(enum.IntEnum):
    ADD = 1
    DEL = 2
    QUAR = 3
    GONE = 4


_OPS = {op.value: op for op in Op}  # a dict lookup, not an enum call, per record
_CODECS = {codec.value: codec for codec in Codec}


@dataclass
class IndexBatch:
    """One index object being built; records are encoded as they are added (a
    checkpoint of a million chunks is 70 MB of records, not a million tuples)."""

    packs: dict[str, int] = field(default_factory=dict)  # name -> size (0: not known here)
    records: bytearray = field(default_factory=bytearray)
    _numbers: dict[str, int] = field(default_factory=dict)

    def _record(self, op: Op, chunk_id: bytes, pack: str, where: Location | None) -> None:
        number = self._numbers.setdefault(pack, len(self._numbers))
        if where is None:
            self.records += RECORD.pack(op, chunk_id, number, 0, 0, 0, 0, b"\0" * 16, 0, 0)
            return
        self.records += RECORD.pack(
            op | (NO_DIGEST if where.digest is None else 0),
            chunk_id,
            number,
            where.offset,
            where.length,
            where.raw_size,
            where.codec,
            where.digest or b"\0" * 16,
            where.inner,
            where.span,
        )

    def note_pack(self, name: str, size: int) -> None:
        self.packs[name] = max(self.packs.get(name, 0), size)
        self._numbers.setdefault(name, len(self._numbers))

    def add(self, chunk_id: bytes, where: Location, pack_size: int = 0) -> None:
        self.note_pack(where.pack, pack_size)
        self._record(Op.ADD, chunk_id, where.pack, where)

    def forget(self, op: Op, chunk_id: bytes, where: Location) -> None:
        self.note_pack(where.pack, 0)
        self._record(op, chunk_id, where.pack, where)

    def gone(self, pack: str) -> None:
        self.note_pack(pack, 0)
        self._record(Op.GONE, b"\0" * 32, pack, None)

    def encode(self) -> bytes:
        parts: list[bytes | bytearray] = [MAGIC, _COUNT.pack(len(self.packs))]
        for name in self._numbers:  # in number order (dicts keep insertion order)
            raw = name.encode()
            parts += [_NAME.pack(len(raw)), raw, _SIZE.pack(self.packs[name])]
        parts.append(self.records)
        return b"".join(parts)


def decode(body: bytes) -> tuple[dict[str, int], Iterator[tuple[Op, bytes, Location]]]:
    """The pack table and the records of an index object (ValueError if malformed)."""
    if body[:4] == MAGIC:
        record = RECORD
    elif body[:4] == MAGIC_V1:
        record = RECORD_V1
    else:
        raise ValueError("not an index object")
    (count,) = _COUNT.unpack_from(body, 4)
    position = 4 + _COUNT.size
    packs: list[tuple[str, int]] = []
    for _ in range(count):
        (length,) = _NAME.unpack_from(body, position)
        position += _NAME.size
        name = body[position : position + length].decode()
        position += length
        (size,) = _SIZE.unpack_from(body, position)
        position += _SIZE.size
        packs.append((name, size))
    if (len(body) - position) % record.size:
        raise ValueError("index object ends inside a record")

    def records() -> Iterator[tuple[Op, bytes, Location]]:
        for fields in record.iter_unpack(memoryview(body)[position:]):
            op, chunk_id, pack, offset, length, raw, codec, digest, *group = fields
            inner, span = group or (0, 0)
            yield (
                _OPS[op & ~NO_DIGEST],
                bytes(chunk_id),
                Location(
                    packs[pack][0],
                    offset,
                    length,
                    raw,
                    _CODECS[codec],
                    None if op & NO_DIGEST else bytes(digest),
                    inner,
                    span,
                ),
            )

    return dict(packs), records()


class ChunkIndex:
    """A replica's view of the index log: chunk id -> location, pack sizes, quarantine.
    Thread-safe.

    Two uploads of one chunk at once store two copies; every copy stays known
    (``copies``), and the one read is the least (pack, offset), so every replica that
    has read the same records reads the same copy, whatever order it read them in, and
    no pack holding a live copy looks empty to the collector."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.chunks = ChunkTable()
        self.copies: dict[bytes, list[Location]] = {}  # other live copies (rare)
        self.packs: dict[str, int] = {}  # pack object -> size (the hard limit's measure)
        self.quarantine: dict[bytes, Location] = {}
        self.seen: set[str] = set()  # index objects applied
        # pack -> (offset, inner) of forgotten copies (a group's members share an offset)
        self._forgotten: dict[str, set[tuple[int, int]]] = {}
        self._gone: set[str] = set()

    def apply(self, packs: dict[str, int], records: Iterable[tuple[Op, bytes, Location]]) -> None:
        with self.lock:
            for name, size in packs.items():
                if name not in self._gone and size:
                    self.packs[name] = max(self.packs.get(name, 0), size)
            for op, chunk_id, where in records:
                if op is Op.ADD:
                    self._add(chunk_id, where)
                elif op is Op.GONE:
                    self._drop_pack(where.pack)
                else:
                    self._forget(op, chunk_id, where)

    def _add(self, chunk_id: bytes, where: Location) -> None:
        if where.pack in self._gone or _place(where)[1:] in self._forgotten.get(where.pack, ()):
            return
        current = self.chunks.get(chunk_id)
        self.quarantine.pop(chunk_id, None)
        if current is None:
            self.chunks.put(chunk_id, where, None)
            return
        others = self.copies.setdefault(chunk_id, [])
        if _place(where) == _place(current) or any(_place(o) == _place(where) for o in others):
            if not others:
                del self.copies[chunk_id]
            return
        if _place(where) < _place(current):
            self.chunks.put(chunk_id, where, current)
            others.append(current)
        else:
            others.append(where)

    def _promote(self, chunk_id: bytes) -> None:
        """The chosen copy is gone: read the least other one, if any."""
        others = self.copies.pop(chunk_id, [])
        if others:
            others.sort(key=_place)
            self.chunks.put(chunk_id, others.pop(0), self.chunks.get(chunk_id))
            if others:
                self.copies[chunk_id] = others

    def _forget(self, op: Op, chunk_id: bytes, where: Location) -> None:
        place = _place(where)
        self._forgotten.setdefault(where.pack, set()).add(place[1:])
        current = self.chunks.get(chunk_id)
        if current is not None and _place(current) == place:
            self.chunks.forget(chunk_id)
            self._promote(chunk_id)
            if op is Op.QUAR and chunk_id not in self.chunks:
                self.quarantine[chunk_id] = current
            return
        others = self.copies.get(chunk_id)
        if others:
            others[:] = [o for o in others if _place(o) != place]
            if not others:
                del self.copies[chunk_id]

    def _drop_pack(self, pack: str) -> None:
        self._gone.add(pack)
        self.packs.pop(pack, None)
        self._forgotten.pop(pack, None)
        for chunk_id, others in list(self.copies.items()):
            others[:] = [o for o in others if o.pack != pack]
            if not others:
                del self.copies[chunk_id]
        for chunk_id in self.chunks.drop_pack(pack):
            self._promote(chunk_id)

    def all_copies(self, chunk_id: bytes) -> list[Location]:
        with self.lock:
            current = self.chunks.get(chunk_id)
            return ([current] if current else []) + list(self.copies.get(chunk_id, []))

    def usage(self) -> int:
        with self.lock:
            return sum(self.packs.values())

    def by_pack(self) -> dict[str, tuple[int, int]]:
        """Every known pack (empty ones too): (live copies in it, their stored bytes)."""
        with self.lock:
            self.chunks.merge()  # an empty overlay: the fast path
            result = dict.fromkeys(self.packs, (0, 0)) | self.chunks.by_pack()
            for others in self.copies.values():
                for where in others:
                    count, size = result.get(where.pack, (0, 0))
                    result[where.pack] = (count + 1, size + where.length)
        return result

    def in_pack(self, pack: str) -> list[tuple[bytes, Location]]:
        """Every live copy in ``pack``, by offset."""
        with self.lock:
            found = self.chunks.in_pack(pack)
            found += [(i, w) for i, ws in self.copies.items() for w in ws if w.pack == pack]
        found.sort(key=lambda item: item[1].offset)
        return found

    def checkpoint(self) -> IndexBatch:
        """This view as one index object: what replaying it alone gives."""
        batch = IndexBatch()
        with self.lock:
            for name, size in self.packs.items():
                batch.note_pack(name, size)
            for chunk_id, where in self.chunks.items():
                batch.add(chunk_id, where, self.packs.get(where.pack, 0))
            for chunk_id, others in self.copies.items():
                for where in others:
                    batch.add(chunk_id, where, self.packs.get(where.pack, 0))
            for chunk_id, where in self.quarantine.items():
                batch.add(chunk_id, where, self.packs.get(where.pack, 0))
                batch.forget(Op.QUAR, chunk_id, where)
        return batch


def _place(where: Location) -> tuple[str, int, int]:
    """A copy's identity: where its record is, and its place in a grouped one."""
    return where.pack, where.offset, where.inner
