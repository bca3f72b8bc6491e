"""``cachesrv pull``: a stored object into a directory, fetching only what it lacks.

1. The manifest (``GET /-/manifest``), checked against its id.
2. Which of its chunks the directory already holds: every regular file below it, as
   the chunker would cut it (a file's data is a tar member's: chunked on its own),
   taken from an index kept *outside* the directory (``--state``, by default under
   ``$XDG_CACHE_HOME/cachesrv/pull/``) when the file's size, mtime, ctime and inode
   are the ones recorded after the last pull, else recomputed from its bytes.
3. The other chunks, fetched in batches (stored zstd frames, several requests in
   flight), each verified against its id and spooled to a file in the state
   directory: memory holds a few batches, never the object.
4. The tar read back over those pieces (headers come inline with the manifest):
   files whose chunks are already theirs are left as they are (mode and mtime set
   again), the others written; then directory times, as ``tar -x`` does. Chunks a
   rewritten file held are spooled first, so no file is read after it was rewritten.
5. The index of the new tree, for the next pull.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import os
import shutil
import sqlite3
import stat
import struct
import tarfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import blake3

from cachesrv import wire
from cachesrv.chunking import ChunkParams, StreamingCDC
from cachesrv.client.progress import Progress, megabytes
from cachesrv.client.remote import Found, Remote, RemoteError, Target
from cachesrv.manifest import Manifest
from cachesrv.store import chunk_id, decode_frame

FETCH_IDS = 512  # ids per fetch request
FETCH_BYTES = 8 << 20  # raw bytes per fetch request
IN_FLIGHT = 4
_CHUNK = struct.Struct("<32sI")


class PullError(Exception):
    pass


def default_state() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cachesrv" / "pull"


# -- the index: which chunks each file of the directory held after the last pull ------


class Index:
    """``path -> (stat signature, chunks)`` of a directory, in SQLite outside it."""

    def __init__(self, state: Path, directory: Path) -> None:
        state.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(os.fsencode(directory.resolve())).hexdigest()[:24]
        self.root = state / name
        self.root.mkdir(exist_ok=True)
        self.db = sqlite3.connect(self.root / "index.sqlite")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, sig TEXT, chunks BLOB)"
        )

    def get(self, path: str, sig: str) -> list[tuple[bytes, int]] | None:
        row = self.db.execute("SELECT sig, chunks FROM files WHERE path = ?", (path,)).fetchone()
        if row is None or row[0] != sig:
            return None
        return list(_CHUNK.iter_unpack(row[1]))

    def replace(self, rows: list[tuple[str, str, list[tuple[bytes, int]]]]) -> None:
        with self.db:
            self.db.execute("DELETE FROM files")
            self.db.executemany(
                "INSERT INTO files VALUES (?, ?, ?)",
                [(p, s, b"".join(_CHUNK.pack(*c) for c in chunks)) for p, s, chunks in rows],
            )

    def close(self) -> None:
        self.db.close()


def signature(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def file_chunks(path: Path, params: ChunkParams) -> list[tuple[bytes, int]]:
    """The file's bytes as the chunker cuts a tar member's data."""
    cdc = StreamingCDC(params.avg_size, params.min_size, params.max_size)
    out: list[tuple[bytes, int]] = []
    with open(path, "rb") as f:
        while block := f.read(4 << 20):
            out.extend((chunk_id(c), len(c)) for c in cdc.feed(block))
    out.extend((chunk_id(c), len(c)) for c in cdc.flush())
    return out


def _regular_files(directory: Path) -> Iterator[tuple[str, os.stat_result]]:
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                yield os.path.relpath(full, directory), st


# -- where each chunk's bytes are ------------------------------------------------------


class Sources:
    """Chunk id -> bytes: a file of the directory at an offset, or the spool."""

    def __init__(self, directory: Path, spool: Path) -> None:
        self.directory = directory
        self.local: dict[bytes, tuple[str, int, int]] = {}  # id -> (path, offset, size)
        self.spooled: dict[bytes, tuple[int, int]] = {}  # id -> (offset, size)
        self._spool = open(spool, "w+b")  # noqa: SIM115 - closed in close()
        self._spool_end = 0
        self._lock = threading.Lock()

    def spool(self, cid: bytes, data: bytes) -> None:
        with self._lock:
            if cid in self.spooled:
                return
            os.pwrite(self._spool.fileno(), data, self._spool_end)
            self.spooled[cid] = (self._spool_end, len(data))
            self._spool_end += len(data)

    def read(self, cid: bytes) -> bytes:
        spooled = self.spooled.get(cid)
        if spooled is not None:
            return os.pread(self._spool.fileno(), spooled[1], spooled[0])
        path, offset, size = self.local[cid]
        with open(self.directory / path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if chunk_id(data) != cid:
            raise PullError(f"{path} changed while it was read")
        return data

    def close(self) -> None:
        self._spool.close()


class ObjectReader(io.RawIOBase):
    """The object's bytes, seekable, assembled from the manifest's pieces on demand
    (one chunk held at a time)."""

    def __init__(self, manifest: Manifest, sources: Sources) -> None:
        self.manifest = manifest
        self.sources = sources
        self.pos = 0
        self._cached: tuple[int, bytes] | None = None  # (piece index, bytes)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.manifest.size}[whence]
        self.pos = base + offset
        return self.pos

    def _piece(self, index: int) -> bytes:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        piece = self.manifest.pieces[index]
        if piece.inline is not None:
            data = piece.inline
        else:
            assert piece.chunk_id is not None
            data = self.sources.read(piece.chunk_id)
        self._cached = (index, data)
        return data

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        manifest = self.manifest
        if self.pos >= manifest.size:
            return 0
        index = bisect.bisect_right(manifest.offsets, self.pos) - 1
        data = self._piece(index)
        start = self.pos - manifest.offsets[index]
        n = min(len(buffer), len(data) - start)
        buffer[:n] = data[start : start + n]
        self.pos += n
        return n


# -- the pull ------------------------------------------------------------------------


@dataclass
class PullResult:
    match: str
    name: str
    tree_bytes: int
    fetched_bytes: int
    written: int
    unchanged: int
    deleted: int


def _member_chunks(manifest: Manifest, member: tarfile.TarInfo) -> list[bytes]:
    if not member.size:
        return []
    start = member.offset_data
    return [
        p.chunk_id
        for p, _, _ in manifest.span(start, start + member.size)
        if p.chunk_id is not None
    ]


def _filter(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    """tarfile's ``tar`` filter (no escaping the directory, no setuid bits), but a
    symlink may point anywhere, as ``tar -x`` allows."""
    try:
        return tarfile.tar_filter(member, path)
    except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError):
        if member.issym():
            return member
        raise


def _clear(path: str, member: tarfile.TarInfo) -> None:
    """Make room for ``member`` at ``path`` as tar does: nothing is written through a
    symlink, and a directory in the way of a non-directory goes."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if not member.isdir():
            shutil.rmtree(path)
    elif not (member.isreg() and stat.S_ISREG(st.st_mode) and st.st_nlink == 1):
        os.unlink(path)


def pull(
    remote: Remote,
    target: Target,
    directory: Path,
    restore_keys: list[str],
    state: Path | None = None,
    delete: list[str] | None = None,
    progress: Progress | None = None,
) -> PullResult | None:
    """None on a miss (nothing written). ``delete``: directories (relative to
    ``directory``; "." for all of it) below which what the object lacks is removed."""
    progress = progress or Progress("pull")
    found = remote.manifest(target, restore_keys)
    if found is None:
        return None
    if blake3.blake3(found.body).digest() != found.manifest_id:
        raise PullError("the manifest does not match its id")
    target = Target(target.kind, found.name)  # chunks come through the name that matched
    manifest = Manifest.decode(found.body)
    progress.total = manifest.size
    settings = remote.settings()
    params = ChunkParams(settings["chunk_min"], settings["chunk_avg"], settings["chunk_max"])
    directory.mkdir(parents=True, exist_ok=True)
    index = Index(state or default_state(), directory)
    sources = Sources(directory, index.root / "spool")
    try:
        return _pull(
            remote, target, found, manifest, params, directory, index, sources, delete, progress
        )
    finally:
        sources.close()
        index.close()
        (index.root / "spool").unlink(missing_ok=True)


def _pull(
    remote: Remote,
    target: Target,
    found: Found,
    manifest: Manifest,
    params: ChunkParams,
    directory: Path,
    index: Index,
    sources: Sources,
    delete: list[str] | None,
    progress: Progress,
) -> PullResult:
    wanted = manifest.chunk_ids()
    names = _member_names(manifest, sources)
    held: dict[str, list[bytes]] = {}  # file -> its chunk ids, for files holding any wanted
    for path, st in _regular_files(directory):
        if names is not None and path not in names:
            continue  # only files the object has can be unchanged; others rarely share
        chunks = index.get(path, signature(st))
        if chunks is None:
            chunks = file_chunks(directory / path, params)
        offset = 0
        for cid, size in chunks:
            if cid in wanted and cid not in sources.local:
                sources.local[cid] = (path, offset, size)
            offset += size
        held[path] = [c for c, _ in chunks]
    _fetch(
        remote,
        target,
        found,
        manifest,
        [c for c in wanted if c not in sources.local],
        sources,
        progress,
    )

    # buffered: tarfile expects whole reads, a raw read ends at a piece's end
    reader = io.BufferedReader(ObjectReader(manifest, sources), 1 << 20)
    written = unchanged = 0
    with tarfile.open(fileobj=reader, mode="r:") as tar:  # type: ignore[call-overload]
        members = tar.getmembers()
        kept: set[str] = set()
        for member in members:
            name = os.path.normpath(member.name)
            if member.isreg() and held.get(name) == _member_chunks(manifest, member):
                kept.add(name)
        # chunks of files about to be rewritten (or deleted) move to the spool first
        for cid, (path, _, _) in list(sources.local.items()):
            if path not in kept:
                sources.spool(cid, sources.read(cid))
        # before extraction, which sets directory times last, as tar -x does
        deleted = _delete_others(directory, members, delete) if delete else 0
        for member in members:
            name = os.path.normpath(member.name)
            if name in kept:
                filtered = _filter(member, str(directory))
                full = directory / name
                os.chmod(full, filtered.mode)
                os.utime(full, (filtered.mtime, filtered.mtime))
                unchanged += 1
        rest = [m for m in members if os.path.normpath(m.name) not in kept]
        for member in rest:
            _clear(str(directory / os.path.normpath(member.name)), member)
            written += member.isreg()
        tar.extractall(directory, members=rest, filter=_filter)
        for member in rest:
            if member.issym():  # tarfile leaves a symlink's own time; tar -x sets it
                full = directory / os.path.normpath(member.name)
                os.utime(full, (member.mtime, member.mtime), follow_symlinks=False)
    rows = []
    sizes = {p.chunk_id: p.size for p in manifest.pieces if p.chunk_id is not None}
    for member in members:
        if member.isreg():
            name = os.path.normpath(member.name)
            chunks = [(c, sizes[c]) for c in _member_chunks(manifest, member)]
            try:
                st = os.lstat(directory / name)
            except FileNotFoundError:
                continue
            rows.append((name, signature(st), chunks))
    index.replace(rows)
    return PullResult(
        found.match, found.name, manifest.size, progress.wire, written, unchanged, deleted
    )


def _member_names(manifest: Manifest, sources: Sources) -> set[str] | None:
    """The object's regular files, read from its headers alone (they are inline in the
    manifest); None if a header is not (a metadata run too long to be kept inline)."""
    reader = io.BufferedReader(ObjectReader(manifest, sources), 1 << 16)
    try:
        with tarfile.open(fileobj=reader, mode="r:") as tar:  # type: ignore[call-overload]
            return {os.path.normpath(m.name) for m in tar.getmembers() if m.isreg()}
    except (KeyError, tarfile.TarError):
        return None


def _fetch(
    remote: Remote,
    target: Target,
    found: Found,
    manifest: Manifest,
    ids: list[bytes],
    sources: Sources,
    progress: Progress,
) -> None:
    sizes = {p.chunk_id: p.size for p in manifest.pieces if p.chunk_id is not None}
    batches: list[list[bytes]] = [[]]
    raw = 0
    for cid in ids:
        if len(batches[-1]) >= FETCH_IDS or raw >= FETCH_BYTES:
            batches.append([])
            raw = 0
        batches[-1].append(cid)
        raw += sizes[cid]

    def fetch(batch: list[bytes]) -> None:
        body = remote.fetch(target, found.manifest_id, batch)
        progress.add(wire=len(body))
        reader = wire.BatchReader()
        got = set()
        for cid, frame in reader.feed(body):
            sources.spool(cid, decode_frame(cid, frame))  # ChunkCorrupt if it is not
            got.add(cid)
            progress.add(done=frame.raw_size)
        reader.finish()
        if got != set(batch):
            raise PullError(f"the server sent {len(got)} of {len(batch)} chunks asked for")

    with ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="pull") as pool:
        for future in [pool.submit(fetch, b) for b in batches if b]:
            try:
                future.result()
            except RemoteError as exc:
                if exc.status == 409:
                    raise PullError(f"{found.name!r} changed during the pull; pull again") from exc
                raise


def _delete_others(directory: Path, members: list[tarfile.TarInfo], below: list[str]) -> int:
    """Remove what is in the directories ``below`` (relative to ``directory``) but not in
    the object (``--delete``, ``--delete-below``)."""
    keep: set[str] = set()
    for member in members:
        name = os.path.normpath(member.name)
        while name not in ("", ".") and name not in keep:
            keep.add(name)
            name = os.path.dirname(name)
    removed = 0
    # a directory the object does not have at all is not the object's to clean
    roots = [
        directory / os.path.normpath(b) for b in below if b == "." or os.path.normpath(b) in keep
    ]
    for top in roots:
        if top.is_dir() and not top.is_symlink():
            removed += _delete_in(directory, top, keep)
    return removed


def _delete_in(directory: Path, top: Path, keep: set[str]) -> int:
    removed = 0
    for root, dirs, files in os.walk(top):
        for name in list(dirs):
            rel = os.path.relpath(os.path.join(root, name), directory)
            if rel not in keep:
                full = os.path.join(root, name)
                if os.path.islink(full):
                    os.unlink(full)
                else:
                    shutil.rmtree(full)
                dirs.remove(name)
                removed += 1
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), directory)
            if rel not in keep:
                os.unlink(os.path.join(root, name))
                removed += 1
    return removed


def summary(result: PullResult, progress: Progress) -> None:
    share = result.fetched_bytes / result.tree_bytes if result.tree_bytes else 0.0
    progress.summary(
        f"{megabytes(result.tree_bytes)} in the tree, {megabytes(result.fetched_bytes)} "
        f"fetched ({share:.1%}), {result.written} files written, {result.unchanged} "
        f"unchanged" + (f", {result.deleted} removed" if result.deleted else "")
    )
