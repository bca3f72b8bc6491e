"""A replica's chunk table: chunk id -> where it lives, for millions of chunks.

Every replica holds the whole index of the bucket, so its size per chunk is what a
replica's memory grows with. A dict of ``bytes -> Location`` costs ~315 bytes a chunk
(measured with tracemalloc at 100,000 chunks); this table costs ~77: rows sorted by id
in columns (``array`` and ``bytes``), looked up by ``bisect`` over each id's first 8
bytes (in C), plus a small dict of recent changes (the *overlay*) that is merged into
the columns once it outgrows :data:`MERGE_AT` (or an eighth of the rows, up to
:data:`MERGE_MAX`: loading a big index object costs O(n log n), not O(n²)).

Columns are never changed in place, only replaced by a merge, so an iteration works
on the columns it started with and a copy of the overlay (a snapshot) and needs no
lock while it runs. Not thread-safe otherwise: the owner (:class:`.index.ChunkIndex`)
locks around every call.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from cachesrv.store import Codec

MERGE_AT = 8192  # overlay entries (~300 bytes each) before a merge
MERGE_MAX = 65536
_ID = 32
# pack number | offset | length | raw size | codec (| _NO_DIGEST) | digest | inner |
# span; the pack number first, so that a pack's rows are found by searching the column
# for it
ROW = struct.Struct("<IQIIB16sII")
_NO_DIGEST = 0x80
_NONE = b"\0" * 16


class Location(NamedTuple):
    """Where a chunk's stored bytes are."""

    pack: str
    offset: int  # of the stored bytes (after the record header)
    length: int
    raw_size: int
    codec: Codec
    digest: bytes | None
    # a grouped chunk (codec GROUP): its offset in the decoded group, and the bytes of
    # the group's body at ``offset`` (``length`` is the chunk's share of them)
    inner: int = 0
    span: int = 0

    @property
    def extent(self) -> int:
        """The stored bytes a read of this chunk fetches from ``offset``."""
        return self.span if self.codec == Codec.GROUP else self.length


@dataclass(frozen=True)
class _Columns:
    """Rows sorted by id. ``keys``: each id's first 8 bytes as a big-endian number (what
    ``bisect`` searches); ``rows``: the rest, :data:`ROW` each."""

    ids: bytes
    keys: array[int]  # 'Q'
    rows: bytes

    @classmethod
    def empty(cls) -> _Columns:
        return cls(b"", array("Q"), b"")

    def find(self, chunk_id: bytes, start: int = 0) -> tuple[int, bool]:
        """Where ``chunk_id`` is or would be inserted, and whether it is there."""
        key = int.from_bytes(chunk_id[:8], "big")
        keys = self.keys
        row = bisect_left(keys, key, start)
        while row < len(keys) and keys[row] == key:
            found = self.ids[row * _ID : row * _ID + _ID]
            if found >= chunk_id:
                return row, found == chunk_id
            row += 1
        return row, False

    def where(self, row: int, names: list[str]) -> Location:
        pack, offset, length, raw, flags, digest, inner, span = ROW.unpack_from(
            self.rows, row * ROW.size
        )
        return Location(
            names[pack],
            offset,
            length,
            raw,
            Codec(flags & ~_NO_DIGEST),
            None if flags & _NO_DIGEST else digest,
            inner,
            span,
        )

    def id(self, row: int) -> bytes:
        return self.ids[row * _ID : row * _ID + _ID]

    def in_pack(self, number: int) -> Iterator[int]:
        """The rows whose pack is ``number`` (a search of the rows in C)."""
        needle = number.to_bytes(4, "little")
        position = self.rows.find(needle)
        while position >= 0:
            if position % ROW.size == 0:
                yield position // ROW.size
            position = self.rows.find(needle, position + 1)

    def lengths(self) -> Iterator[tuple[int, int]]:
        """(pack number, stored length) of each row, in order."""
        return ((p, n) for p, _, n, *_ in ROW.iter_unpack(self.rows))


class ChunkTable:
    def __init__(self) -> None:
        self._rows = _Columns.empty()
        self._overlay: dict[bytes, Location | None] = {}  # None: a row forgotten
        self._names: list[str] = []  # pack number -> name
        self._numbers: dict[str, int] = {}
        self._renumber_at = 64
        self._count = 0
        self._stored = 0
        self._raw = 0

    # -- lookups ---------------------------------------------------------------------

    def get(self, chunk_id: bytes) -> Location | None:
        if chunk_id in self._overlay:
            return self._overlay[chunk_id]
        row, found = self._rows.find(chunk_id)
        return self._rows.where(row, self._names) if found else None

    def __contains__(self, chunk_id: object) -> bool:
        return isinstance(chunk_id, bytes) and self.get(chunk_id) is not None

    def __len__(self) -> int:
        return self._count

    def totals(self) -> tuple[int, int, int]:
        """(chunks, stored bytes, raw bytes)."""
        return self._count, self._stored, self._raw

    # -- changes ---------------------------------------------------------------------

    def put(self, chunk_id: bytes, where: Location, previous: Location | None) -> None:
        """Store ``where`` for ``chunk_id`` in place of ``previous``, which the caller
        has just read with :meth:`get` (a lookup less on the path that loads an index)."""
        self._account(previous, -1)
        self._account(where, 1)
        self._overlay[chunk_id] = where
        self._maybe_merge()

    def forget(self, chunk_id: bytes) -> None:
        previous = self.get(chunk_id)
        if previous is None:
            return
        self._account(previous, -1)
        self._overlay[chunk_id] = None
        self._maybe_merge()

    def drop_pack(self, pack: str) -> list[bytes]:
        """Forget every chunk whose location is in ``pack``; returns their ids."""
        dropped = [i for i, w in self._overlay.items() if w is not None and w.pack == pack]
        number = self._numbers.get(pack)
        if number is not None:
            rows = self._rows
            for row in rows.in_pack(number):
                chunk_id = rows.id(row)
                if chunk_id not in self._overlay:
                    dropped.append(chunk_id)
        for chunk_id in dropped:
            self.forget(chunk_id)
        return dropped

    def _account(self, where: Location | None, sign: int) -> None:
        if where is not None:
            self._count += sign
            self._stored += sign * where.length
            self._raw += sign * where.raw_size

    def _maybe_merge(self) -> None:
        if len(self._overlay) >= max(MERGE_AT, min(MERGE_MAX, len(self._rows.keys) // 8)):
            self.merge()

    def merge(self) -> None:
        """Fold the overlay into the columns (new columns: snapshots keep the old)."""
        if not self._overlay:
            return
        old = self._rows
        ids: list[bytes] = []
        keys = array("Q")
        rows: list[bytes] = []
        cursor = 0
        for chunk_id in sorted(self._overlay):
            where = self._overlay[chunk_id]
            end, found = old.find(chunk_id, cursor)
            ids.append(old.ids[cursor * _ID : end * _ID])  # the rows before it, as they are
            keys.extend(old.keys[cursor:end])
            rows.append(old.rows[cursor * ROW.size : end * ROW.size])
            cursor = end + 1 if found else end
            if where is not None:
                ids.append(chunk_id)
                keys.append(int.from_bytes(chunk_id[:8], "big"))
                rows.append(
                    ROW.pack(
                        self._number(where.pack),
                        where.offset,
                        where.length,
                        where.raw_size,
                        where.codec | (_NO_DIGEST if where.digest is None else 0),
                        where.digest or _NONE,
                        where.inner,
                        where.span,
                    )
                )
        ids.append(old.ids[cursor * _ID :])
        keys.extend(old.keys[cursor:])
        rows.append(old.rows[cursor * ROW.size :])
        self._rows = _Columns(b"".join(ids), keys, b"".join(rows))
        self._overlay = {}
        if len(self._names) > self._renumber_at:
            self._renumber()

    def _number(self, pack: str) -> int:
        number = self._numbers.get(pack)
        if number is None:
            number = self._numbers[pack] = len(self._names)
            self._names.append(pack)
        return number

    def _renumber(self) -> None:
        """Forget the names of packs no row is in any more (packs come and go)."""
        rows = self._rows
        used = sorted({p for p, _ in rows.lengths()})
        self._renumber_at = 2 * len(used) + 64  # amortised: names double in between
        remap = {old: new for new, old in enumerate(used)}
        self._names = [self._names[n] for n in used]
        self._numbers = {name: n for n, name in enumerate(self._names)}
        renumbered = bytearray(rows.rows)
        for row, (pack, *_) in enumerate(ROW.iter_unpack(rows.rows)):
            renumbered[row * ROW.size : row * ROW.size + 4] = remap[pack].to_bytes(4, "little")
        self._rows = _Columns(rows.ids, rows.keys, bytes(renumbered))

    # -- iteration (over a snapshot taken at the call: the caller may drop its lock) ---

    def _snapshot(self) -> tuple[_Columns, dict[bytes, Location | None], list[str]]:
        return self._rows, dict(self._overlay), self._names

    def items(self) -> Iterator[tuple[bytes, Location]]:
        return self._items(*self._snapshot())

    @staticmethod
    def _items(
        rows: _Columns, overlay: dict[bytes, Location | None], names: list[str]
    ) -> Iterator[tuple[bytes, Location]]:
        for row in range(len(rows.keys)):
            chunk_id = rows.id(row)
            if chunk_id not in overlay:
                yield chunk_id, rows.where(row, names)
        yield from ((i, w) for i, w in overlay.items() if w is not None)

    def sizes(self) -> Iterator[tuple[bytes, int]]:
        """(id, stored length) of every chunk."""
        return self._sizes(*self._snapshot()[:2])

    @staticmethod
    def _sizes(
        rows: _Columns, overlay: dict[bytes, Location | None]
    ) -> Iterator[tuple[bytes, int]]:
        for row, (_, stored) in enumerate(rows.lengths()):
            chunk_id = rows.id(row)
            if chunk_id not in overlay:
                yield chunk_id, stored
        yield from ((i, w.length) for i, w in overlay.items() if w is not None)

    def __iter__(self) -> Iterator[bytes]:
        return (chunk_id for chunk_id, _ in self.sizes())

    def by_pack(self) -> dict[str, tuple[int, int]]:
        """Per pack with a chunk in it: (chunks, stored bytes)."""
        rows, overlay, names = self._snapshot()
        counts = [0] * len(names)
        stored = [0] * len(names)
        for row, (number, size) in enumerate(rows.lengths()):
            if overlay and rows.id(row) in overlay:
                continue
            counts[number] += 1
            stored[number] += size
        result = {names[n]: (counts[n], stored[n]) for n in range(len(names)) if counts[n]}
        for where in overlay.values():
            if where is not None:
                count, size = result.get(where.pack, (0, 0))
                result[where.pack] = (count + 1, size + where.length)
        return result

    def in_pack(self, pack: str) -> list[tuple[bytes, Location]]:
        """Every chunk whose location is in ``pack``, by offset."""
        rows, overlay, names = self._snapshot()
        found = [(i, w) for i, w in overlay.items() if w is not None and w.pack == pack]
        number = self._numbers.get(pack)
        if number is not None:
            for row in rows.in_pack(number):
                chunk_id = rows.id(row)
                if chunk_id not in overlay:
                    found.append((chunk_id, rows.where(row, names)))
        found.sort(key=lambda item: item[1].offset)
        return found
