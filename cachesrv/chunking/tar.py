"""A sans-I/O tar stream parser that tells metadata bytes from member content.

`TarSplitter` is fed arbitrary slices of an upload (any boundaries, down to one
byte) and returns events:

- `Meta(data)`: tar bookkeeping: 512-byte headers (ustar, GNU, v7), pax
  ``x``/``g``/``X`` headers and their data records, GNU long name/link ``L``/``K``
  data, GNU old-sparse extension blocks, padding to 512, end-of-archive zero
  blocks and the zero record padding after them;
- `Content(data)`: bytes of the current member's data (regular files, and any
  member whose size field says data follows: GNU sparse, contiguous, unknown
  types);
- `END_OF_MEMBER`: the current member's data is complete (also emitted at
  `finish()` when the stream was truncated inside a member).

It never raises on bad input and never drops a byte: the first block that does
not parse as a header (not a tar at all, corrupted, truncated mid-header,
non-zero garbage after the trailer) switches it to fallback, where every
remaining byte, that block included, is `Content` of one long pseudo-member that
ends at `finish()`. Concatenating the ``data`` of all events, in order, always
reproduces the input.

Data in events are slices (memoryviews) of the buffers passed to `feed()`,
zero-copy; they show the input's bytes only as long as the caller does not mutate
those buffers, so consume (or copy) them before reusing the buffer.
"""

from __future__ import annotations

from typing import NamedTuple
from zlib import adler32

__all__ = ["Meta", "Content", "EndOfMember", "END_OF_MEMBER", "TarEvent", "TarSplitter"]

BLOCK = 512

# A pax or GNU long-name record larger than this is not plausibly metadata; its
# data is treated as member content so that manifests (which hold metadata
# inline) stay small whatever the upload says.
MAX_META_RECORD = 1024 * 1024
# tar pads the archive with zero blocks up to its record size (10 KiB by
# default, `-b` allows more); a longer zero run is data, not a trailer.
MAX_ZERO_RUN = 1024 * 1024

# Types that never carry data whatever their size field says (as tarfile and
# POSIX treat them): hard link, symlink, char/block device, directory, fifo.
_NO_DATA_TYPES = frozenset(b"123456")
_PAX_TYPES = frozenset(b"xgX")
_LONG_NAME_TYPES = frozenset(b"LK")
_GNU_SPARSE = ord("S")
_AREGTYPE = 0

_ZERO_BLOCK = bytes(BLOCK)


class Meta(NamedTuple):
    """Tar metadata bytes: stored inline, never deduplicated."""

    data: bytes | memoryview


class Content(NamedTuple):
    """Bytes of the current member's data."""

    data: bytes | memoryview


class EndOfMember(NamedTuple):
    """The current member's data is complete."""


END_OF_MEMBER = EndOfMember()

TarEvent = Meta | Content | EndOfMember


def parse_number(field: bytes) -> int | None:
    """Decode a tar numeric field (octal, or GNU base-256); None if malformed."""
    first = field[0]
    if first == 0x80:
        return int.from_bytes(field[1:], "big")
    if first == 0xFF:
        return -(256 ** (len(field) - 1) - int.from_bytes(field[1:], "big"))
    digits = field.split(b"\0", 1)[0].strip()
    if not digits:
        return 0
    try:
        return int(digits, 8)
    except ValueError:
        return None


def _byte_sum(data: bytes) -> int:
    # zlib.adler32's low half is (1 + sum of bytes) mod 65521; over 256 bytes the sum
    # is at most 65280, so it is exact: a byte sum in C, ~8x faster than sum().
    return (adler32(data[:256]) & 0xFFFF) + (adler32(data[256:]) & 0xFFFF) - 2


def header_checksum_ok(block: bytes) -> bool:
    """True if the stored checksum matches (unsigned, or signed as some old tars did)."""
    stored = parse_number(block[148:156])
    if stored is None:
        return False
    # The checksum is computed with its own field taken as eight spaces (8 * 32).
    unsigned = _byte_sum(block) - sum(block[148:156]) + 256
    if stored == unsigned:
        return True
    high = sum(1 for b in block if b >= 128) - sum(1 for b in block[148:156] if b >= 128)
    return stored == unsigned - 256 * high


def _magic_plausible(block: bytes) -> bool:
    magic = block[257:265]
    # POSIX "ustar\x0000", GNU "ustar  \x00", or a v7 header with the field unused.
    return magic[:5] == b"ustar" or magic == b"\0" * 8


def parse_pax_size(records: bytes) -> int | None:
    """The ``size`` keyword of pax extended header records, if present and sane."""
    size = None
    pos = 0
    end = len(records)
    while pos < end:
        space = records.find(b" ", pos, pos + 20)
        if space < 0:
            break
        length_field = records[pos:space]
        if not length_field.isdigit():
            break
        length = int(length_field)
        if length <= space - pos or pos + length > end:
            break
        record = records[space + 1 : pos + length - 1]
        if record.startswith(b"size="):
            value = record[5:]
            size = int(value) if value.isdigit() else None
        pos += length
    return size


# Parser states.
_HEADER = 0  # collecting a 512-byte header block
_SPARSE_EXT = 1  # collecting a GNU old-sparse extension block
_META = 2  # metadata bytes (pax / long-name data and their padding), possibly captured
_CONTENT = 3  # member data
_PADDING = 4  # padding after member data
_FALLBACK = 5  # not (or no longer) a tar: everything is content


class TarSplitter:
    """Classify a tar byte stream into metadata and member content, incrementally."""

    def __init__(self) -> None:
        self._state = _HEADER
        self._block = bytearray()  # partial header / extension block
        self._remaining = 0  # bytes left in the current _META/_CONTENT/_PADDING stretch
        self._padding_after = 0  # padding following the current _CONTENT stretch
        self._member_size = 0  # data size of the member whose header/ext blocks we read
        self._capture: bytearray | None = None  # pax records being collected
        self._capture_left = 0
        self._capture_is_x = False
        self._pax_size: int | None = None  # size override for the next member
        self._zero_run = 0
        self._in_fallback_member = False
        self._finished = False

    @property
    def is_tar(self) -> bool:
        """Still parsing as tar (False once the stream fell back to plain content)."""
        return self._state != _FALLBACK

    def feed(self, data: bytes | bytearray | memoryview) -> list[TarEvent]:
        """Consume more of the stream; return the events it completes."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        mv = memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        events: list[TarEvent] = []
        pos = 0
        end = len(mv)
        while pos < end:
            state = self._state
            if state == _CONTENT:
                n = min(self._remaining, end - pos)
                events.append(Content(mv[pos : pos + n]))
                pos += n
                self._remaining -= n
                if not self._remaining:
                    events.append(END_OF_MEMBER)
                    self._start_padding(self._padding_after)
            elif state == _HEADER or state == _SPARSE_EXT:
                if not self._block and end - pos >= BLOCK:
                    block = mv[pos : pos + BLOCK]
                    pos += BLOCK
                else:
                    take = min(BLOCK - len(self._block), end - pos)
                    self._block += mv[pos : pos + take]
                    pos += take
                    if len(self._block) < BLOCK:
                        break
                    block = memoryview(bytes(self._block))
                    self._block = bytearray()
                if state == _HEADER:
                    self._on_header(block, events)
                else:
                    self._on_sparse_ext(block, events)
            elif state == _META or state == _PADDING:
                n = min(self._remaining, end - pos)
                piece = mv[pos : pos + n]
                events.append(Meta(piece))
                pos += n
                self._remaining -= n
                if self._capture is not None and self._capture_left:
                    take = min(n, self._capture_left)
                    self._capture += piece[:take]
                    self._capture_left -= take
                if not self._remaining:
                    if state == _META:
                        self._end_meta_record()
                    else:
                        self._state = _HEADER
            else:  # _FALLBACK
                events.append(Content(mv[pos:end]))
                self._in_fallback_member = True
                pos = end
        return events

    def finish(self) -> list[TarEvent]:
        """End of stream: flush a partial block and close the member in progress."""
        if self._finished:
            return []
        self._finished = True
        events: list[TarEvent] = []
        state = self._state
        if state == _CONTENT:
            # Truncated inside a member: what arrived is its content.
            events.append(END_OF_MEMBER)
        elif self._block:
            partial = bytes(self._block)
            self._block = bytearray()
            if state == _HEADER and partial.count(0) == len(partial):
                events.append(Meta(partial))  # a truncated zero trailer
            else:
                self._state = _FALLBACK
                events.append(Content(partial))
                events.append(END_OF_MEMBER)
        elif state == _FALLBACK and self._in_fallback_member:
            events.append(END_OF_MEMBER)
        return events

    # -- block handlers ---------------------------------------------------------------

    def _fall_back(self, block: memoryview, events: list[TarEvent]) -> None:
        self._state = _FALLBACK
        self._in_fallback_member = True
        events.append(Content(block))

    def _on_header(self, block: memoryview, events: list[TarEvent]) -> None:
        raw = block.tobytes()
        if raw == _ZERO_BLOCK:
            self._zero_run += BLOCK
            if self._zero_run > MAX_ZERO_RUN:
                self._fall_back(block, events)
            else:
                events.append(Meta(block))
            return
        if not (_magic_plausible(raw) and header_checksum_ok(raw)):
            self._fall_back(block, events)
            return
        size = parse_number(raw[124:136])
        if size is None or size < 0:
            self._fall_back(block, events)
            return
        self._zero_run = 0
        events.append(Meta(block))
        typeflag = raw[156]

        if typeflag in _PAX_TYPES or typeflag in _LONG_NAME_TYPES:
            # Extended header records apply to the next member: keep pax size.
            if size > MAX_META_RECORD:
                self._start_member(size)
                return
            if typeflag in _PAX_TYPES:
                self._capture = bytearray()
                self._capture_left = size
                self._capture_is_x = typeflag != ord("g")
            self._remaining = _padded(size)
            if self._remaining:
                self._state = _META
            else:
                self._end_meta_record()
            return

        if self._pax_size is not None:
            size = self._pax_size
            self._pax_size = None
        if typeflag in _NO_DATA_TYPES or (typeflag == _AREGTYPE and _v7_dir(raw)):
            size = 0
        if typeflag == _GNU_SPARSE and raw[482]:
            self._member_size = size
            self._state = _SPARSE_EXT
            return
        self._start_member(size)

    def _on_sparse_ext(self, block: memoryview, events: list[TarEvent]) -> None:
        events.append(Meta(block))
        if not block[504]:
            self._start_member(self._member_size)

    def _end_meta_record(self) -> None:
        if self._capture is not None:
            if self._capture_is_x:
                self._pax_size = parse_pax_size(bytes(self._capture))
            self._capture = None
        self._state = _HEADER

    def _start_member(self, size: int) -> None:
        if size:
            self._state = _CONTENT
            self._remaining = size
            self._padding_after = _padded(size) - size
        else:
            self._start_padding(0)

    def _start_padding(self, n: int) -> None:
        if n:
            self._state = _PADDING
            self._remaining = n
        else:
            self._state = _HEADER


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def _v7_dir(raw: bytes) -> bool:
    # Old v7 tar writes a directory as a regular file whose name ends in "/".
    name = raw[:100]
    nul = name.find(b"\0")
    if nul >= 0:
        name = name[:nul]
    return name.endswith(b"/")
