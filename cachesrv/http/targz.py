"""``targz`` uploads: a stored .tar.gz unpacked into one object per regular member.

Runs in a worker thread after the upload itself is durable: the archive is
read back from the chunk store (never from a temp file), gunzipped and
untarred as a stream, and each member is ingested as its own object. Nothing
is published here; the caller publishes all members in one transaction, so a
failed extraction changes nothing.
"""

from __future__ import annotations

import io
import tarfile
import zlib

from cachesrv.catalog import StoredManifest
from cachesrv.http.errors import HttpError
from cachesrv.http.paths import clean_path
from cachesrv.manifest import Manifest
from cachesrv.repository import Repository


class _ObjectReader(io.RawIOBase):
    """A stored object as a sequential, read-only file."""

    def __init__(self, repo: Repository, manifest: Manifest) -> None:
        self._pieces = iter(manifest.pieces)
        self._repo = repo
        self._current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._current:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            data = piece.inline if piece.chunk_id is None else self._repo.store.read(piece.chunk_id)
            self._current = memoryview(data or b"")
        n = min(len(buffer), len(self._current))
        buffer[:n] = self._current[:n]
        self._current = self._current[n:]
        return n


def extract_targz(
    repo: Repository, archive: Manifest, base: str
) -> list[tuple[str, StoredManifest]]:
    members: dict[str, StoredManifest] = {}
    stream = io.BufferedReader(_ObjectReader(repo, archive), 1 << 20)
    try:
        with tarfile.open(fileobj=stream, mode="r|gz") as tar:
            for member in tar:
                if not member.isreg():
                    continue  # only directories and regular files, as with the old server
                path = clean_path(f"{base}/{member.name}")
                if not (path + "/").startswith(base + "/"):
                    raise HttpError(403, f"archive member {member.name!r} escapes {base!r}")
                source = tar.extractfile(member)
                assert source is not None
                session = repo.ingest_session()
                while data := source.read(1 << 20):
                    session.feed(data)
                members[path] = StoredManifest.of(session.finish())
                repo.counters.add_upload(session.stats)
    except (tarfile.TarError, zlib.error, EOFError, OSError) as exc:
        raise HttpError(400, f"could not extract the tar.gz: {exc}") from exc
    return list(members.items())
