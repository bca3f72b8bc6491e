"""``targz`` uploads: a stored .tar.gz unpacked into one object per regular member.

Blocking (run in a worker thread) after the upload itself is durable: the archive
is read back from the chunk store (never from a temp file), gunzipped and untarred
as a stream, and each member is ingested as its own object. Nothing is published
here; the caller publishes all members in one transaction, so a failed extraction
changes nothing.
"""

from __future__ import annotations

import errno
import io
import tarfile
import zlib
from collections.abc import Callable

from cachesrv.catalog import StoredManifest
from cachesrv.ingest.session import IngestSession, IngestStats
from cachesrv.manifest import Manifest
from cachesrv.names import InvalidName, clean_path
from cachesrv.store import ChunkSource


class BadArchive(Exception):
    """The stored upload is not a readable .tar.gz."""


class _ObjectReader(io.RawIOBase):
    """A stored object as a sequential, read-only file."""

    def __init__(self, store: ChunkSource, manifest: Manifest) -> None:
        self._pieces = iter(manifest.pieces)
        self._store = store
        self._current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._current:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            data = piece.inline if piece.chunk_id is None else self._store.read(piece.chunk_id)
            self._current = memoryview(data or b"")
        n = min(len(buffer), len(self._current))
        buffer[:n] = self._current[:n]
        self._current = self._current[n:]
        return n


def _disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def extract_targz(
    store: ChunkSource,
    archive: Manifest,
    base: str,
    new_session: Callable[[], IngestSession],
    on_ingested: Callable[[IngestStats], None],
) -> list[tuple[str, StoredManifest]]:
    """Every regular member of ``archive`` ingested as ``base/<member name>``.

    Raises :class:`BadArchive` if it cannot be read, :class:`InvalidName` for a member
    outside ``base``, and OSError ENOSPC/EDQUOT (the store's hard limit, a full disk)
    as it is: that is no fault of the archive.
    """
    members: dict[str, StoredManifest] = {}
    stream = io.BufferedReader(_ObjectReader(store, archive), 1 << 20)
    try:
        with tarfile.open(fileobj=stream, mode="r|gz") as tar:
            for member in tar:
                if not member.isreg():
                    continue  # only directories and regular files, as with the old server
                path = clean_path(f"{base}/{member.name}")
                if not (path + "/").startswith(base + "/"):
                    raise InvalidName(
                        f"archive member {member.name!r} escapes {base!r}", escapes=True
                    )
                source = tar.extractfile(member)
                assert source is not None
                session = new_session()
                while data := source.read(1 << 20):
                    session.feed(data)
                members[path] = session.finish()
                on_ingested(session.stats)
    except OSError as exc:
        if _disk_full(exc):
            raise
        raise BadArchive(f"could not extract the tar.gz: {exc}") from exc
    except (tarfile.TarError, zlib.error, EOFError) as exc:
        raise BadArchive(f"could not extract the tar.gz: {exc}") from exc
    return list(members.items())
