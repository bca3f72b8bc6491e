"""``cachesrv import DIR``: bring an old go-simple-uploader directory into the store.

Each regular file below ``DIR`` becomes the object at its relative path, ingested
like an upload (streamed: tar-aware chunking, dedup, zstd) and published with the
file's mtime as its ``Last-Modified`` (the old server served the file's mtime, so a
pipeline's age check sees the same age after the switch) and the import time as its
last access (so TTL and eviction count from the import, not from the file's age).

Idempotent: a file already stored at its path with the same size and mtime is
skipped, so a second run (or one after an interruption) does only what is left.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cachesrv.catalog import Conflict
from cachesrv.ingest import IngestSession
from cachesrv.names import InvalidName, clean_path
from cachesrv.progress import Progress
from cachesrv.repository import Repository

log = logging.getLogger("cachesrv.import")

READ_BYTES = 1 << 20


class StoreFull(Exception):
    """The store reached its hard limit: the import stops (what is in stays)."""


@dataclass
class ImportReport:
    files: int = 0  # imported now
    bytes: int = 0  # their logical bytes
    new_bytes: int = 0  # of which not stored before (after dedup)
    stored_bytes: int = 0  # compressed bytes written for them
    skipped: int = 0  # already stored with the same size and mtime
    skipped_bytes: int = 0
    refused: list[str] = field(default_factory=list)  # paths the store cannot hold

    def as_dict(self) -> dict[str, object]:
        result = asdict(self)
        result["dedup_fraction"] = round(1 - self.new_bytes / self.bytes, 4) if self.bytes else None
        return result


def walk(root: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    """Regular files below ``root`` as (relative path, path, stat), sorted; symlinks and
    special files are left out (the old server never served them as objects)."""
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(directory, name)
            st = path.lstat()
            if path.is_file() and not path.is_symlink():
                yield path.relative_to(root).as_posix(), path, st


def import_tree(repo: Repository, root: Path, progress: Progress | None = None) -> ImportReport:
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    files = list(walk(root))
    progress = progress or Progress(sum(st.st_size for _, _, st in files), enabled=False)
    report = ImportReport()
    catalog = repo.catalog
    for relative, path, st in files:
        try:
            name = clean_path(relative)
        except InvalidName as exc:
            report.refused.append(f"{relative}: {exc.message}")
            progress.advance(st.st_size)
            continue
        existing = catalog.get(name)
        if existing is not None and existing.size == st.st_size and existing.mtime == st.st_mtime:
            report.skipped += 1
            report.skipped_bytes += st.st_size
            progress.advance(st.st_size, name)
            continue
        if not repo.admits(st.st_size):
            raise StoreFull(f"the store is at its hard limit before {name!r}")
        # no hot cache: an import is not a sign that these objects are read soon
        session = IngestSession(
            repo.store.writer(),
            repo.config.chunking,
            repo.config.compression_level,
            group_level=repo.config.group_level,
        )
        with open(path, "rb") as stream:
            while block := stream.read(READ_BYTES):
                session.feed(block)
                progress.advance(len(block), name)
        stored = session.finish()
        try:
            catalog.publish([(name, stored)], mtime=st.st_mtime)
        except Conflict as exc:
            report.refused.append(f"{relative}: {exc}")
            continue
        stats = session.stats
        report.files += 1
        report.bytes += stats.logical_bytes
        report.new_bytes += stats.new_bytes
        report.stored_bytes += stats.stored_bytes
    progress.close()
    for refused in report.refused:
        log.warning("not imported: %s", refused)
    return report
