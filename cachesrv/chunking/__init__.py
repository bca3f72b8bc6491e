"""Pure, sans-I/O splitting of an upload stream into pieces.

`Splitter` is fed the upload in slices of any size and returns `Piece`s: tar
metadata (headers, padding, trailer) as ``meta`` pieces, stored inline in the
manifest, and member data cut by FastCDC into content chunks, stored by BLAKE3
id and deduplicated. Concatenating every piece's data, in order, is the upload,
byte for byte, whatever it is: a tar in any format, an empty or truncated one, one
with trailing garbage, or no tar at all (then the rest of the stream, from the
first block that does not parse, is chunked as plain content).

Why tar-aware (DESIGN.md, "Dedup: why tar-aware"): CI restores a cache tar and
tools touch mtimes, so nearly every tar header changes from one day's upload to
the next while file contents do not. Plain CDC over the tar bytes drags those
header changes into content chunks; chunking each member's data on its own and
keeping headers apart does not. Measured on a real Go build cache (v2 given v1
stored): tar-aware 64 KiB average dedups 95.1% of v2's bytes against 81.5% for
plain CDC at 64 KiB, and makes 2.6x fewer chunks than tar-aware 16 KiB (97.2%),
hence the default `ChunkParams` of 16/64/256 KiB (min/avg/max). A member's data
never shares a chunk with another member's, so small files become small chunks.

Pieces are independent of how the input was split into `feed()` calls: the
same stream always gives the same piece sequence. No piece is empty; content
pieces never exceed ``max_size``, and meta runs longer than ``max_size`` are cut
into ``max_size`` pieces.
"""

from __future__ import annotations

from typing import NamedTuple

from cachesrv.chunking.cdc import StreamingCDC
from cachesrv.chunking.tar import Content, EndOfMember, Meta, TarEvent, TarSplitter

__all__ = ["ChunkParams", "Piece", "Splitter", "StreamingCDC", "TarSplitter"]


class Piece(NamedTuple):
    """One piece of the upload, in order.

    ``meta`` True: tar header/padding/trailer bytes (stored inline in the
    manifest, not deduplicated). False: a content chunk (stored by BLAKE3 id).
    """

    meta: bool
    data: bytes


class ChunkParams(NamedTuple):
    """FastCDC sizes in bytes (pyfastcdc's real mean chunk is about avg + min)."""

    min_size: int = 16 * 1024
    avg_size: int = 64 * 1024
    max_size: int = 256 * 1024


DEFAULT_PARAMS = ChunkParams()


class Splitter:
    """feed(bytes) in, pieces out.

    Concatenating piece.data of everything returned by feed()/finish(), in order,
    is exactly the input bytes, always. Never raises on any input.
    """

    def __init__(self, params: ChunkParams = DEFAULT_PARAMS, tar_aware: bool = True) -> None:
        self._params = params
        self._cdc = StreamingCDC(params.avg_size, params.min_size, params.max_size)
        self._tar: TarSplitter | None = TarSplitter() if tar_aware else None
        self._meta = bytearray()  # pending run of metadata
        self._finished = False

    @property
    def is_tar(self) -> bool:
        """Still parsing as tar (False after fallback or when tar_aware=False)."""
        return self._tar is not None and self._tar.is_tar

    def feed(self, data: bytes | bytearray | memoryview) -> list[Piece]:
        """Consume the next slice of the upload; return the pieces now complete."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        # Nothing keeps a reference to `data` after this call returns (partial
        # headers, metadata runs and the chunker's window are copies), so a
        # caller may reuse its receive buffer.
        view = data if isinstance(data, memoryview) else memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B") if view.c_contiguous else memoryview(view.tobytes())
        if not view:
            return []
        if self._tar is None:
            return [Piece(False, c) for c in self._cdc.feed(view)]
        out: list[Piece] = []
        self._on_events(self._tar.feed(view), out)
        return out

    def finish(self) -> list[Piece]:
        """End of stream: return every remaining piece."""
        if self._finished:
            return []
        self._finished = True
        out: list[Piece] = []
        if self._tar is not None:
            self._on_events(self._tar.finish(), out)
        out.extend(Piece(False, c) for c in self._cdc.flush())
        self._flush_meta(out)
        return out

    def _on_events(self, events: list[TarEvent], out: list[Piece]) -> None:
        cdc = self._cdc
        for event in events:
            if type(event) is Content:
                if self._meta:
                    self._flush_meta(out)
                out.extend(Piece(False, c) for c in cdc.feed(event.data))
            elif type(event) is Meta:
                # Meta only ever follows a finished member, so no content is
                # pending in the chunker and order is kept by buffering it here.
                self._meta += event.data
                if len(self._meta) >= self._params.max_size:
                    self._cut_meta(out)
            else:
                assert type(event) is EndOfMember
                out.extend(Piece(False, c) for c in cdc.flush())

    def _cut_meta(self, out: list[Piece]) -> None:
        # Cut at fixed offsets within the run so pieces don't depend on feed sizes.
        limit = self._params.max_size
        meta = self._meta
        whole = len(meta) // limit * limit
        out.extend(Piece(True, bytes(meta[i : i + limit])) for i in range(0, whole, limit))
        del meta[:whole]

    def _flush_meta(self, out: list[Piece]) -> None:
        if self._meta:
            out.append(Piece(True, bytes(self._meta)))
            self._meta = bytearray()
