"""One upload interface, wherever the work runs: :class:`Upload`.

Request handlers ``await write(data)`` as body pieces arrive, then ``await finish()``
for the durable version (or ``await abort()``). :class:`ThreadUpload` runs the
session in threads of this process; :class:`cachesrv.ingest.workers.WorkerUpload` in
an ingest worker process.
"""

from __future__ import annotations

from typing import Protocol

import trio

from cachesrv.catalog import StoredManifest
from cachesrv.ingest.session import IngestSession, IngestStats


class Upload(Protocol):
    """An upload in progress. Nothing is visible until the caller publishes what
    :meth:`finish` returns; :meth:`abort` lets the work go (safe to call twice)."""

    @property
    def stats(self) -> IngestStats: ...

    async def write(self, data: bytes) -> None: ...

    async def finish(self) -> StoredManifest:
        """The chunks are durable; the manifest, encoded, ready to publish."""
        ...

    async def abort(self) -> None: ...


class ThreadUpload:
    """An :class:`Upload` run by an :class:`IngestSession` in threads of this process,
    a batch per hand-over. Memory is bounded by one batch, whatever the upload size."""

    def __init__(self, session: IngestSession, batch_bytes: int = 1 << 20) -> None:
        self.session = session
        self.batch_bytes = batch_bytes
        self._buffer = bytearray()
        self._limiter = trio.CapacityLimiter(1)

    @property
    def stats(self) -> IngestStats:
        return self.session.stats

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data
        if len(self._buffer) >= self.batch_bytes:
            batch, self._buffer = self._buffer, bytearray()
            await trio.to_thread.run_sync(self.session.feed, batch, limiter=self._limiter)

    async def finish(self) -> StoredManifest:
        batch, self._buffer = self._buffer, bytearray()

        def _finish() -> StoredManifest:
            if batch:
                self.session.feed(batch)
            return self.session.finish()

        return await trio.to_thread.run_sync(_finish, limiter=self._limiter)

    async def abort(self) -> None:
        """Drop what was buffered; chunks already written are garbage for GC."""
        self._buffer = bytearray()
        await trio.to_thread.run_sync(self.session.abort, limiter=self._limiter)
