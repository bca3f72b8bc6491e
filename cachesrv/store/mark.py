"""GC's mark, for every backend: temporary SQLite tables on disk.

``refs(manifest, chunk, live)`` and ``counts(chunk, n)`` (live references per chunk)
live in a connection of the session's own, in SQLite's temp store on disk, so a mark
of a million chunks costs no more memory than one of a thousand (a Python set of 1M
32-byte ids is ~70 MB, a dict of their sizes as much again), and eviction's questions
are joins with ``footprints(id, size)``: every stored chunk with its footprint. The
local store's is a view of its own index (:meth:`SqliteMarkSession.beside`); a store
without an SQLite index (S3, memory) copies its ids and sizes into a private temporary
database when the mark is sealed (:meth:`SqliteMarkSession.over`), so chunks stored
after that are never garbage of this collection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


class SqliteMarkSession:
    def __init__(
        self,
        conn: sqlite3.Connection,
        sizes: Callable[[], Iterable[tuple[bytes, int]]] | None = None,
    ) -> None:
        conn.execute("PRAGMA busy_timeout=60000")
        conn.execute("PRAGMA temp_store=FILE")
        conn.execute("CREATE TEMP TABLE refs (manifest BLOB, chunk BLOB, live INTEGER)")
        self._conn = conn
        self._sizes = sizes

    @classmethod
    def beside(cls, index_path: Path, record_header: int) -> SqliteMarkSession:
        """A mark joined with the local index's ``chunks(id, length)``; a chunk's
        footprint is its record: ``record_header`` plus its stored bytes."""
        conn = sqlite3.connect(
            index_path, timeout=60, isolation_level=None, check_same_thread=False
        )
        session = cls(conn)  # first: setting temp_store drops every temporary object
        conn.execute(
            "CREATE TEMP VIEW footprints AS "
            f"SELECT id, length + {int(record_header)} AS size FROM main.chunks"
        )
        return session

    @classmethod
    def over(cls, sizes: Callable[[], Iterable[tuple[bytes, int]]]) -> SqliteMarkSession:
        """A mark over any store: ``sizes()`` (every stored id with its footprint, as
        ``iter_sizes``) is copied to disk at :meth:`seal`."""
        conn = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        return cls(conn, sizes)

    def add(self, manifest_id: bytes, chunk_ids: Iterable[bytes], live: bool) -> None:
        self._conn.executemany(
            "INSERT INTO refs VALUES (?, ?, ?)", ((manifest_id, c, int(live)) for c in chunk_ids)
        )

    def seal(self) -> int:
        conn = self._conn
        if self._sizes is not None:
            conn.execute(
                "CREATE TABLE footprints (id BLOB PRIMARY KEY, size INTEGER) WITHOUT ROWID"
            )
            conn.execute("BEGIN")  # one transaction; executemany streams the rows
            conn.executemany("INSERT OR REPLACE INTO footprints VALUES (?, ?)", self._sizes())
            conn.execute("COMMIT")
        conn.execute("CREATE INDEX temp.refs_by_chunk ON refs (chunk)")
        conn.execute("CREATE INDEX temp.refs_by_manifest ON refs (manifest)")
        # live references per chunk; a chunk held only by doomed/served roots counts 0
        conn.execute(
            "CREATE TEMP TABLE counts AS SELECT chunk, sum(live) AS n FROM refs GROUP BY chunk"
        )
        conn.execute("CREATE UNIQUE INDEX temp.counts_by_chunk ON counts (chunk)")
        return int(conn.execute("SELECT count(*) FROM counts").fetchone()[0])

    def usage_by_manifest(self) -> dict[bytes, tuple[int, int]]:
        return {
            manifest: (unique or 0, shared or 0)
            for manifest, unique, shared in self._conn.execute(
                "SELECT r.manifest, "
                "sum(CASE WHEN k.n = 1 THEN f.size END), "
                "sum(CASE WHEN k.n > 1 THEN f.size END) "
                "FROM refs r JOIN counts k ON k.chunk = r.chunk "
                "JOIN footprints f ON f.id = r.chunk WHERE r.live GROUP BY r.manifest"
            )
        }

    def footprint(self) -> tuple[int, int, int]:
        conn = self._conn
        live_bytes, pending = conn.execute(
            "SELECT coalesce(sum(f.size), 0), "
            "coalesce(sum(CASE WHEN k.n = 0 THEN f.size ELSE 0 END), 0) "
            "FROM footprints f LEFT JOIN counts k ON k.chunk = f.id"
        ).fetchone()
        unmarked = conn.execute(
            "SELECT coalesce(sum(f.size), 0) FROM footprints f "
            "WHERE NOT EXISTS (SELECT 1 FROM counts k WHERE k.chunk = f.id)"
        ).fetchone()[0]
        return live_bytes, pending, unmarked

    def held_by(self, manifest_id: bytes) -> Iterator[tuple[bytes, int, int]]:
        yield from self._conn.execute(
            "SELECT r.chunk, k.n, f.size FROM refs r "
            "JOIN counts k ON k.chunk = r.chunk JOIN footprints f ON f.id = r.chunk "
            "WHERE r.manifest = ? AND r.live",
            (manifest_id,),
        ).fetchall()

    def garbage(self, batch: int) -> Iterator[list[bytes]]:
        conn = self._conn
        conn.execute("DROP TABLE IF EXISTS temp.garbage")
        conn.execute(
            "CREATE TEMP TABLE garbage AS SELECT id FROM footprints f "
            "WHERE NOT EXISTS (SELECT 1 FROM counts k WHERE k.chunk = f.id)"
        )
        last = 0
        while True:
            rows = conn.execute(
                "SELECT rowid, id FROM garbage WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (last, batch),
            ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [chunk for _, chunk in rows]

    def close(self) -> None:
        self._conn.close()
