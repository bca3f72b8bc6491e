"""GC's mark for the local store: temporary tables beside the chunk index.

``refs(manifest, chunk, live)`` and ``counts(chunk, n)`` (live references per chunk)
live in a connection of the session's own, in SQLite's temp store on disk, so a mark
of a million chunks costs no more memory than one of a thousand (a Python set of 1M
32-byte ids is ~70 MB), and eviction's questions are joins with ``chunks``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from .packs import RECORD_HEADER

SERVING_ROOT = b"\0" * 32


class LocalMarkSession:
    def __init__(self, index_path: Path) -> None:
        conn = sqlite3.connect(
            index_path, timeout=60, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA busy_timeout=60000")
        conn.execute("PRAGMA temp_store=FILE")
        conn.execute("CREATE TEMP TABLE refs (manifest BLOB, chunk BLOB, live INTEGER)")
        self._conn = conn

    def add(self, manifest_id: bytes, chunk_ids: Iterable[bytes], live: bool) -> None:
        self._conn.executemany(
            "INSERT INTO refs VALUES (?, ?, ?)", ((manifest_id, c, int(live)) for c in chunk_ids)
        )

    def seal(self) -> int:
        conn = self._conn
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
                "sum(CASE WHEN k.n = 1 THEN c.length + ? END), "
                "sum(CASE WHEN k.n > 1 THEN c.length + ? END) "
                "FROM refs r JOIN counts k ON k.chunk = r.chunk "
                "JOIN main.chunks c ON c.id = r.chunk WHERE r.live GROUP BY r.manifest",
                (RECORD_HEADER.size, RECORD_HEADER.size),
            )
        }

    def footprint(self) -> tuple[int, int, int]:
        conn = self._conn
        live_bytes, pending = conn.execute(
            "SELECT coalesce(sum(c.length + ?), 0), "
            "coalesce(sum(CASE WHEN k.n = 0 THEN c.length + ? ELSE 0 END), 0) "
            "FROM main.chunks c LEFT JOIN counts k ON k.chunk = c.id",
            (RECORD_HEADER.size, RECORD_HEADER.size),
        ).fetchone()
        unmarked = conn.execute(
            "SELECT coalesce(sum(c.length + ?), 0) FROM main.chunks c "
            "WHERE NOT EXISTS (SELECT 1 FROM counts k WHERE k.chunk = c.id)",
            (RECORD_HEADER.size,),
        ).fetchone()[0]
        return live_bytes, pending, unmarked

    def held_by(self, manifest_id: bytes) -> Iterator[tuple[bytes, int, int]]:
        yield from self._conn.execute(
            "SELECT r.chunk, k.n, c.length + ? FROM refs r "
            "JOIN counts k ON k.chunk = r.chunk JOIN main.chunks c ON c.id = r.chunk "
            "WHERE r.manifest = ? AND r.live",
            (RECORD_HEADER.size, manifest_id),
        ).fetchall()

    def garbage(self, batch: int) -> Iterator[list[bytes]]:
        conn = self._conn
        conn.execute("DROP TABLE IF EXISTS temp.garbage")
        conn.execute(
            "CREATE TEMP TABLE garbage AS SELECT id FROM main.chunks c "
            "WHERE NOT EXISTS (SELECT 1 FROM counts k WHERE k.chunk = c.id)"
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
