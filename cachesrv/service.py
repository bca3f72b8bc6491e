"""The cache as the HTTP routes see it: every decision about storage, in the store's terms.

:class:`CacheService` owns what a request does to the store, whatever the protocol
speaking for it: catalog reads and writes off the event loop (``trio.to_thread``),
the access, pin and counter bookkeeping, uploads (ingest, then publish; targz
archives), the hard-limit check and the keyed-save rule. It knows nothing of HTTP:
it raises the errors below (and :class:`cachesrv.names.InvalidName`,
:class:`cachesrv.catalog.Conflict`, :class:`cachesrv.catalog.EntryExists`,
:class:`cachesrv.ingest.targz.BadArchive`, OSError ENOSPC), which
:mod:`cachesrv.http.errors` turns into responses, in one place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from cachesrv import pushed, status, wire
from cachesrv.catalog import Ref, StoredManifest, entry_is_kept
from cachesrv.http import accesslog
from cachesrv.ingest.targz import extract_targz
from cachesrv.ingest.upload import Upload
from cachesrv.repository import Repository
from cachesrv.restore.hot import FilePart
from cachesrv.restore.job import Job
from cachesrv.store import ChunkError, Frame, check_frame, portable

log = logging.getLogger("cachesrv")


class NotFound(Exception):
    """Nothing by that name (the message says what was looked for)."""


class StoreFull(Exception):
    """The store is at its hard limit: an upload is refused before its body is read."""


class EntryKept(Exception):
    """A keyed save refused before its body was read: the entry exists and is fresh."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class CacheService:
    """Async and safe to share between requests; blocking work runs in threads."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        # chunk ids of manifests recently fetched from (pull sends many batches of one)
        self._chunk_sets: dict[bytes, frozenset[bytes]] = {}

    # -- uploads ---------------------------------------------------------------

    async def check_room(self, length: int | None) -> None:
        """Refuse (:class:`StoreFull`) an upload of ``length`` body bytes (None: unknown)
        that the hard limit leaves no room for; the previous version stays."""
        if not await trio.to_thread.run_sync(self.repo.admits, length):
            raise StoreFull()

    @asynccontextmanager
    async def upload(self) -> AsyncIterator[Upload]:
        """An upload (in a worker process if one has room) that is aborted, its worker
        told, if the block fails."""
        upload = self.repo.upload()
        self.repo.uploads_active += 1
        try:
            yield upload
        except BaseException:
            with trio.CancelScope(shield=True):
                await upload.abort()
            raise
        finally:
            self.repo.uploads_active -= 1

    async def finish(self, upload: Upload) -> StoredManifest:
        """The upload's chunks are durable; the version is ready to publish."""
        stored = await upload.finish()
        self.repo.counters.add_upload(upload.stats)
        accesslog.note_upload(upload.stats)
        return stored

    async def ingest(self, body: AsyncIterator[bytes]) -> StoredManifest:
        async with self.upload() as upload:
            async for data in body:
                await upload.write(data)
            return await self.finish(upload)

    async def publish(self, items: list[tuple[str, StoredManifest]]) -> float:
        """Every (path, version) visible at once, all or nothing; the time (mtime)."""
        accesslog.note_name(items[0][0] if len(items) == 1 else f"{len(items)} members")
        mtime = await trio.to_thread.run_sync(self.repo.catalog.publish, items)
        if len(items) == 1:  # not every member of a targz: those are small
            self._warm(items[0][1])
        return mtime

    def _warm(self, stored: StoredManifest) -> None:
        """Have the new version decoded into the hot cache, in the background."""
        self.repo.restores.warm(Job(stored.manifest_id, stored.digest, stored.size))

    async def publish_archive(self, base: str, archive: StoredManifest) -> float:
        """A stored .tar.gz as one object per regular member under ``base``, published
        together; nothing changes if any member fails (a full store included)."""
        repo = self.repo

        def extract() -> list[tuple[str, StoredManifest]]:
            return extract_targz(
                repo.store, archive.manifest, base, repo.ingest_session, repo.counters.add_upload
            )

        members = await trio.to_thread.run_sync(extract)
        return await self.publish(members)

    async def put_object(
        self, path: str, body: AsyncIterator[bytes]
    ) -> tuple[StoredManifest, float]:
        stored = await self.ingest(body)
        return stored, await self.publish([(path, stored)])

    async def save_entry(
        self, key: str, body: AsyncIterator[bytes], replace: bool, max_age: float | None
    ) -> StoredManifest:
        """A keyed entry from ``body``. An existing, fresh one is kept: refused before
        the body is read (:class:`EntryKept`), or when the save commits (EntryExists)."""
        await self.check_entry_kept(key, replace, max_age)
        stored = await self.ingest(body)
        await self.publish_entry(key, stored, replace, max_age)
        return stored

    async def check_entry_kept(self, key: str, replace: bool, max_age: float | None) -> None:
        """:class:`EntryKept` if a save to ``key`` would be refused (the keyed-save rule)."""
        catalog = self.repo.catalog
        existing = await trio.to_thread.run_sync(lambda: catalog.find_entry(key, exact=True))
        mtime = existing.mtime if existing is not None else None
        if entry_is_kept(mtime, time.time(), replace, max_age):
            raise EntryKept(key)

    async def publish_entry(
        self, key: str, stored: StoredManifest, replace: bool, max_age: float | None
    ) -> None:
        accesslog.note_name(key)
        catalog = self.repo.catalog
        await trio.to_thread.run_sync(
            lambda: catalog.save_entry(key, stored, replace=replace, max_age=max_age)
        )
        self._warm(stored)

    # -- pushes (a client chunked the object; cachesrv.pushed) ----------------

    async def missing_chunks(self, ids: list[bytes]) -> set[bytes]:
        """The ids not stored; every one asked about is pinned, as an upload's lookups."""

        def lookup() -> set[bytes]:
            writer = self.repo.store.writer()
            try:
                return writer.missing(ids)
            finally:
                writer.abort()

        return await trio.to_thread.run_sync(lookup)

    async def store_chunks(self, records: list[tuple[bytes, Frame]]) -> tuple[int, int]:
        """Pushed chunks, each checked against its id, stored durably (all or nothing)."""
        new, raw = await trio.to_thread.run_sync(pushed.store_batch, self.repo.store, records)
        self.repo.counters.upload_new_bytes += raw
        return new, raw

    async def seal_pushed(self, blob: bytes) -> StoredManifest:
        """A pushed manifest as a version ready to publish (see :mod:`cachesrv.pushed`)."""
        max_size = self.repo.config.max_upload_size

        def seal() -> StoredManifest:
            return pushed.seal_pushed(self.repo.store, pushed.decode_pushed(blob, max_size))

        stored = await trio.to_thread.run_sync(seal)
        self.repo.counters.uploads += 1
        self.repo.counters.upload_bytes += stored.size
        return stored

    async def manifest_body(self, ref: Ref) -> bytes:
        """The stored manifest of ``ref``, as stored (:class:`NotFound` if it is gone)."""
        body = await trio.to_thread.run_sync(self.repo.catalog.manifest_body, ref.manifest_id)
        if body is None:
            raise NotFound(f"{ref.name!r} changed while it was looked up")
        return body

    async def chunk_set(self, manifest_id: bytes) -> frozenset[bytes]:
        """The chunk ids a stored manifest references."""
        found = self._chunk_sets.get(manifest_id)
        if found is None:
            found = frozenset(await trio.to_thread.run_sync(self.repo.chunk_ids, manifest_id))
            if len(self._chunk_sets) >= 8:
                self._chunk_sets.pop(next(iter(self._chunk_sets)))
            self._chunk_sets[manifest_id] = found
        return found

    def read_chunks(
        self, manifest_id: bytes, ids: list[bytes], batch: int = 64
    ) -> AsyncIterator[bytes]:
        """A chunk batch (:mod:`cachesrv.wire`) of the stored frames of ``ids``, each
        checked by its frame digest (or decoded) first, with the manifest that references
        them pinned meanwhile."""
        store = self.repo.store

        def read(group: list[bytes]) -> bytes:
            frames = [  # a grouped chunk's bytes, on their own: what a peer can store
                portable(cid, frame)
                for cid, frame in zip(group, store.read_frames(group), strict=True)
            ]
            for cid, frame in zip(group, frames, strict=True):
                check_frame(cid, frame)
            return b"".join(wire.encode_record(c, f) for c, f in zip(group, frames, strict=True))

        async def records() -> AsyncIterator[bytes]:
            for start in range(0, len(ids), batch):
                yield await trio.to_thread.run_sync(read, ids[start : start + batch])

        self.repo.counters.downloads += 1
        return self.repo.pins.hold(manifest_id, records())

    # -- reads -----------------------------------------------------------------

    async def find_object(self, path: str) -> Ref | None:
        """The object at ``path``; a hit counts as a read (its access time)."""
        ref = await trio.to_thread.run_sync(self.repo.catalog.get, path)
        if ref is not None:
            self.repo.access.touch("object", ref.name)
        return ref

    async def is_directory(self, path: str) -> bool:
        return await trio.to_thread.run_sync(self.repo.catalog.is_directory, path)

    async def find_entry(self, key: str, restore_keys: list[str], exact: bool) -> Ref | None:
        """actions/cache lookup (see CatalogBackend.find_entry); a hit counts as a read."""
        catalog = self.repo.catalog
        ref = await trio.to_thread.run_sync(
            lambda: catalog.find_entry(key, restore_keys, exact=exact)
        )
        if ref is not None:
            self.repo.access.touch("entry", ref.name)
        return ref

    def open_body(self, job: Job) -> AsyncIterator[bytes | bytearray | memoryview | FilePart]:
        """The restore job's bytes, the manifest pinned (GC keeps its chunks, in whatever
        process the job runs) until the body is exhausted or closed. Nothing is decoded
        here: a version collected since it was looked up fails the job (a clean 500)."""
        self.repo.counters.downloads += 1
        return self.repo.pins.hold(job.manifest_id, self.repo.restores.stream(job))

    def count_miss(self) -> None:
        self.repo.counters.not_found += 1

    def count_corrupt(self, ref: Ref, exc: ChunkError) -> None:
        self.repo.counters.corrupt_chunks += 1
        log.error("serving %r: %s", ref.name, exc)

    # -- deletes ---------------------------------------------------------------

    async def delete_tree(self, path: str) -> int:
        """The object at ``path`` and everything below it; how many were removed."""
        return await trio.to_thread.run_sync(self.repo.catalog.delete_tree, path)

    async def delete_older_than(self, directory: str, days: int, recursive: bool) -> int:
        """Direct children of ``directory`` (child directories too if ``recursive``)
        uploaded more than ``days`` days ago; how many were removed. :class:`NotFound`
        if there is no such directory (or object)."""
        catalog = self.repo.catalog

        def old_children() -> list[str] | None:
            if directory and not catalog.is_directory(directory) and catalog.get(directory) is None:
                return None
            cutoff = time.time() - days * 86400
            return [
                name
                for name, is_dir, mtime in catalog.children(directory)
                if mtime < cutoff and (recursive or not is_dir)
            ]

        old = await trio.to_thread.run_sync(old_children)
        if old is None:
            raise NotFound("Not Found")
        if not old:
            return 0
        prefix = directory + "/" if directory else ""

        def remove() -> None:
            for name in old:
                catalog.delete_tree(prefix + name)

        await trio.to_thread.run_sync(remove)
        return len(old)

    async def delete_entry(self, key: str) -> bool:
        return await trio.to_thread.run_sync(self.repo.catalog.delete_entry, key)

    # -- numbers and health ----------------------------------------------------

    async def ping(self) -> None:
        await trio.to_thread.run_sync(self.repo.catalog.ping)

    async def stats(self, objects: bool = False) -> dict[str, object]:
        """The store's numbers (``objects``: per-object usage, a full mark) and the
        worker pools'."""
        stats = await trio.to_thread.run_sync(lambda: status.status(self.repo, objects))
        pool = self.repo.ingest
        stats["workers"] = {
            "ingest": {
                "size": pool.size,
                "processes": pool.processes,
                "idle": pool.idle,
                "uploads": pool.running,
            },
            "restore": {"size": self.repo.restores.size},
        }
        return stats
