"""Upload pins in the local index: ``pins(id, time, expires)``.

A pin protects a chunk from a GC sweep until it expires. It is written in the same
write transaction as the lookup that answers :meth:`ChunkWriter.missing`, and a sweep
batch deletes only chunks no unexpired pin protects, in one transaction too: either
the sweep sees the pin, or it ran before and the lookup sees the chunk gone. Each pin
carries its own expiry (the writing process's ``pin_ttl``), so a collection in another
process (``cachesrv gc``) needs no setting of the server's. Rows written before pins
had an expiry count as expiring :data:`PIN_TTL` after their time.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable

from cachesrv.db import Database

from .index import LOOKUP_BATCH, batched, lookup

PIN_TTL = 600.0  # the default; an upload re-pins what it references past half of it
_PIN_CACHE_LIMIT = 100_000
EXPIRES = f"coalesce(expires, time + {PIN_TTL})"


class Pins:
    """This process's side of the pins: it remembers the pins it wrote, so an id asked
    about again (by any upload here) is not re-pinned while its pin has half its life
    left."""

    def __init__(self, db: Database, ttl: float = PIN_TTL) -> None:
        self.db = db
        self.ttl = ttl
        self._lock = threading.Lock()
        self._expires: dict[bytes, float] = {}

    def pin_and_lookup(self, ids: set[bytes], wanted: set[bytes]) -> set[bytes]:
        """Pin ``ids`` (those whose pin is not fresh) and return which of ``wanted``
        are stored, in one transaction."""
        now = time.time()
        with self._lock:
            stale = [i for i in ids if self._expires.get(i, 0.0) < now + self.ttl / 2]
        if not stale:
            return lookup(self.db.conn, wanted)
        expires = now + self.ttl
        conn = self.db.conn
        conn.execute("PRAGMA synchronous=NORMAL")  # pins need not survive a crash
        try:
            with self.db.transaction():
                conn.executemany(
                    "INSERT INTO pins (id, time, expires) VALUES (?, ?, ?) ON CONFLICT (id) "
                    "DO UPDATE SET time = excluded.time, "
                    f"expires = max({EXPIRES}, excluded.expires)",
                    ((i, now, expires) for i in stale),
                )
                found = lookup(conn, wanted)
        finally:
            conn.execute("PRAGMA synchronous=FULL")
        with self._lock:
            if len(self._expires) > _PIN_CACHE_LIMIT:
                self._expires.clear()
            self._expires.update((i, expires) for i in stale)
        return found

    def pinned(self, at: float) -> set[bytes]:
        return {
            row[0]
            for row in self.db.conn.execute(f"SELECT id FROM pins WHERE {EXPIRES} >= ?", (at,))
        }

    def prune(self, before: float) -> int:
        with self.db.transaction() as conn:
            return conn.execute(f"DELETE FROM pins WHERE {EXPIRES} < ?", (before,)).rowcount


def delete_unpinned(
    conn: sqlite3.Connection, ids: Iterable[bytes], at: float
) -> tuple[int, int, int]:
    """Within the caller's transaction: delete the chunks among ``ids`` no pin protects at
    ``at``; returns (chunks, stored bytes, raw bytes) deleted."""
    count = stored = raw = 0
    for batch in batched(ids, LOOKUP_BATCH):
        marks = ",".join("?" * len(batch))
        where = (
            f"id IN ({marks}) AND id NOT IN "
            f"(SELECT id FROM pins WHERE id IN ({marks}) AND {EXPIRES} >= ?)"
        )
        args = (*batch, *batch, at)
        n, s, r = conn.execute(
            "SELECT count(*), coalesce(sum(length), 0), coalesce(sum(raw_size), 0) "
            f"FROM chunks WHERE {where}",
            args,
        ).fetchone()
        conn.execute(f"DELETE FROM chunks WHERE {where}", args)
        count, stored, raw = count + n, stored + s, raw + r
    return count, stored, raw
