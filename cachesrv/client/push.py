"""``cachesrv push``: a directory tree to the server, sending only the chunks it lacks.

The tree is written as a tar stream (Python's :mod:`tarfile`, GNU format, what
``tar -C DIR -cf - PATH...`` makes for the same tree: contents, modes, whole-second
mtimes, owners, symlinks, hard links, empty directories) straight into the server's
own :class:`cachesrv.ingest.IngestSession`, run here with the server's chunking
settings: the chunks, inline metadata and manifest are exactly what a curl upload of
that tar would have made. The session's chunk writer is :class:`RemoteWriter`: its
lookups ask the server which ids it lacks (pinning them there), its puts batch
compressed frames to the server. Memory is bounded by a few batches, whatever the tree.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cachesrv import wire
from cachesrv.chunking import ChunkParams
from cachesrv.client.progress import Progress, megabytes
from cachesrv.client.remote import Remote, Target
from cachesrv.ingest.session import IngestSession
from cachesrv.store import Frame

FEED_BYTES = 8 << 20  # tar bytes per session feed: one id lookup per this much
SEND_BYTES = 4 << 20  # compressed bytes per chunk upload request
IN_FLIGHT = 2  # chunk upload requests at once


class RemoteWriter:
    """A :class:`cachesrv.store.ChunkWriter` whose store is the server."""

    def __init__(self, remote: Remote, target: Target, progress: Progress) -> None:
        self.remote = remote
        self.target = target
        self.progress = progress
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._pool = ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="push")
        self._sending: list[Future[None]] = []
        self.sent_chunks = 0

    def missing(self, ids: Iterable[bytes]) -> set[bytes]:
        wanted = list(dict.fromkeys(ids))
        found: set[bytes] = set()
        for start in range(0, len(wanted), wire.MAX_IDS):
            group = wanted[start : start + wire.MAX_IDS]
            found.update(self.remote.missing(self.target, group))
            self.progress.add(wire=len(group) * wire.ID_SIZE)
        return found

    def put(self, chunk_id: bytes, frame: Frame) -> None:
        record = wire.encode_record(chunk_id, frame)
        self._batch.append(record)
        self._batch_bytes += len(record)
        self.sent_chunks += 1
        if self._batch_bytes >= SEND_BYTES:
            self._send()

    def commit(self) -> None:
        if self._batch:
            self._send()
        sending, self._sending = self._sending, []
        for future in sending:
            future.result()

    def abort(self) -> None:
        self._batch, self._batch_bytes = [], 0
        for future in self._sending:
            future.cancel()
        self._sending = []

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _send(self) -> None:
        body = b"".join(self._batch)
        self._batch, self._batch_bytes = [], 0
        while len(self._sending) >= IN_FLIGHT:  # bounded: wait for the oldest
            self._sending.pop(0).result()

        def send() -> None:
            self.remote.upload(self.target, body)
            self.progress.add(wire=len(body))

        self._sending.append(self._pool.submit(send))


class _SessionSink:
    """The file object tarfile writes to: batches of tar bytes into the session."""

    def __init__(self, session: IngestSession, progress: Progress) -> None:
        self.session = session
        self.progress = progress
        self.buffer = bytearray()

    def write(self, data: bytes) -> int:
        self.buffer += data
        if len(self.buffer) >= FEED_BYTES:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.buffer:
            batch, self.buffer = self.buffer, bytearray()
            self.session.feed(batch)
            self.progress.add(done=len(batch))


def _whole_seconds(member: tarfile.TarInfo) -> tarfile.TarInfo:
    member.mtime = int(member.mtime)  # as tar's own format keeps it
    return member


def write_tar(out: _SessionSink, directory: Path, paths: list[str]) -> None:
    """What ``tar -C directory -cf - paths...`` writes, in tar's own (GNU) format."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT) as tar:  # type: ignore[call-overload]
        for path in paths:
            full = directory / path
            if not os.path.lexists(full):
                raise FileNotFoundError(f"{full}: no such file or directory")
            tar.add(str(full), arcname=path, filter=_whole_seconds)
    out.flush()


@dataclass
class PushResult:
    tree_bytes: int
    wire_bytes: int
    chunks: int
    sent_chunks: int
    etag: str


def push(
    remote: Remote,
    target: Target,
    directory: Path,
    paths: list[str],
    replace: bool = False,
    max_age: float | None = None,
    progress: Progress | None = None,
) -> PushResult | None:
    """Store the tree under ``target``; visible (atomically) only once it all is. None:
    a fresh ``--key`` entry exists and is kept (the keyed-save rule), nothing was sent."""
    progress = progress or Progress("push")
    if target.kind == "key" and not replace:
        existing = remote.manifest(target, [], exact=True)
        if existing is not None and (max_age is None or existing.age < max_age):
            return None
    settings = remote.settings()
    params = ChunkParams(settings["chunk_min"], settings["chunk_avg"], settings["chunk_max"])
    writer = RemoteWriter(remote, target, progress)
    try:
        session = IngestSession(
            writer,  # type: ignore[arg-type]
            params,
            settings.get("compression_level", 1),
            threads=2,
        )
        write_tar(_SessionSink(session, progress), directory, paths or ["."])
        manifest = session.finish()
    finally:
        writer.close()
    body = manifest.body
    answer = remote.publish(target, body, replace, max_age)
    progress.add(wire=len(body))
    result = PushResult(
        manifest.size,
        progress.wire,
        session.stats.chunks,
        writer.sent_chunks,
        str(answer.get("etag", "")),
    )
    share = result.wire_bytes / result.tree_bytes if result.tree_bytes else 0.0
    progress.summary(
        f"{megabytes(result.tree_bytes)} in the tree, {megabytes(result.wire_bytes)} sent "
        f"({share:.1%}), {result.sent_chunks} of {result.chunks} chunks new"
    )
    return result
