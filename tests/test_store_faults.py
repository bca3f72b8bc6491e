"""The chunk store under a full disk: a failed write or fsync leaves the index consistent;
its numbers while another process removes packs; and the SQLite connections of threads
that end.

The error is injected at the store's system-call boundary (``os.write`` / ``os.fsync``
as the store calls them), the way ENOSPC or EIO arrive from a real filesystem.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest
import zstandard

from cachesrv.db import Database
from cachesrv.store import choose_codec, chunk_id
from cachesrv.store import local as local_store
from cachesrv.store.local import LocalChunkStore, LocalChunkWriter


def _chunk(n: int, size: int = 3000) -> tuple[bytes, bytes, bytes]:
    data = os.urandom(size - 8) + n.to_bytes(8, "little")
    return chunk_id(data), data, zstandard.ZstdCompressor(level=1).compress(data)


def _put(store: LocalChunkWriter, chunks: list[tuple[bytes, bytes, bytes]]) -> None:
    for cid, data, frame in chunks:
        store.put(cid, choose_codec(cid, data, frame))


def _assert_consistent(store: LocalChunkStore) -> None:
    for cid in list(store.iter_ids()):
        assert chunk_id(store.read(cid)) == cid


def test_short_write_then_enospc_drops_the_uncommitted_chunks_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalChunkStore(tmp_path)
    writer = store.writer()
    kept = [_chunk(i) for i in range(20)]
    _put(writer, kept)
    writer.commit()

    real_write = os.write
    calls = []

    def full_disk(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data)[: len(data) // 2])  # a short write, then
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local_store.os, "write", full_disk)
    lost = [_chunk(100 + i) for i in range(20)]
    with pytest.raises(OSError) as failure:
        _put(writer, lost)
        writer.commit()
    assert failure.value.errno == errno.ENOSPC
    monkeypatch.setattr(local_store.os, "write", real_write)

    _assert_consistent(store)
    assert writer.missing(c[0] for c in lost) == {c[0] for c in lost}
    assert not writer.missing(c[0] for c in kept)
    # the disk has room again: the same chunks store fine, in a new pack
    _put(writer, lost)
    writer.commit()
    _assert_consistent(store)
    store.close()

    reopened = LocalChunkStore(tmp_path)
    assert not reopened.writer().missing(c[0] for c in kept + lost)
    _assert_consistent(reopened)
    reopened.close()


def test_failed_fsync_commits_no_index_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalChunkStore(tmp_path)
    writer = store.writer()
    chunks = [_chunk(i) for i in range(10)]
    _put(writer, chunks)

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local_store.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        writer.commit()
    monkeypatch.undo()
    assert writer.missing(c[0] for c in chunks) == {c[0] for c in chunks}
    assert store.stats().chunks == 0
    _put(writer, chunks[:3])
    writer.commit()
    _assert_consistent(store)
    assert store.stats().chunks == 3
    store.close()


def test_hard_limit_refuses_puts_before_writing(tmp_path: Path) -> None:
    store = LocalChunkStore(tmp_path)
    writer = store.writer()
    _put(writer, [_chunk(i) for i in range(5)])
    writer.commit()
    limit: int | None = store.stats().disk_bytes + 4000
    store.close()  # the hard limit is a setting: it comes in when a store opens
    store = LocalChunkStore(tmp_path, hard_limit=limit)
    writer = store.writer()
    _put(writer, [_chunk(50)])  # fits
    with pytest.raises(OSError) as failure:
        _put(writer, [_chunk(51)])
    assert failure.value.errno == errno.ENOSPC
    writer.commit()
    assert store.stats().chunks == 6
    _assert_consistent(store)
    limit = None
    store.close()  # the hard limit is a setting: it comes in when a store opens
    store = LocalChunkStore(tmp_path, hard_limit=limit)
    writer = store.writer()
    _put(writer, [_chunk(51)])
    writer.commit()
    assert store.stats().chunks == 7
    store.close()


def test_stats_count_a_pack_removed_while_they_are_read_as_gone(tmp_path: Path) -> None:
    """GC unlinked a pack between the listing of the pack directory and its stat: /-/stats
    answered 500 (FileNotFoundError) in CI. A dangling name is that moment, held still."""
    store = LocalChunkStore(tmp_path)
    writer = store.writer()
    _put(writer, [_chunk(i) for i in range(5)])
    writer.commit()
    before = store.stats().disk_bytes
    assert before > 0
    (store.pack_dir / "0000-gone.pack").symlink_to(tmp_path / "unlinked-meanwhile.pack")
    assert store.stats().disk_bytes == before
    _assert_consistent(store)
    store.close()


def test_a_threads_sqlite_connection_is_closed_when_the_thread_ends(tmp_path: Path) -> None:
    """trio's worker threads come and go; each used to leave its connection (three
    descriptors and a page cache) open until the database was closed."""
    db = Database(tmp_path / "t.sqlite", "CREATE TABLE IF NOT EXISTS t (x)")
    assert db.open_connections == 1  # this thread's

    def use() -> None:
        with db.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (1)")

    for _ in range(20):
        thread = threading.Thread(target=use)
        thread.start()
        thread.join()
    assert db.open_connections == 1
    assert db.conn.execute("SELECT count(*) FROM t").fetchone()[0] == 20
    db.close()
    assert db.open_connections == 0
