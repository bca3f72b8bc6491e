"""What a replica on an object store remembers of the names it served, under ``--data``:
the last ref seen of each name and the body of its manifest. While the bucket does not
answer, a name served recently still restores from the hot cache (:mod:`cachesrv.catalog.s3`
asks here only then). Safe to lose, like the hot cache beside it: not fsynced, filled
again by reads, and never trusted over the bucket while the bucket answers."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from cachesrv.db import Database

KEEP_MANIFESTS = 32  # bodies kept, least recently seen dropped first (a few MB each at most)
WRITTEN_KEPT = 10_000  # refs this process knows it wrote as they are (skips a rewrite)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS refs (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    fields TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS manifests (
    id BLOB PRIMARY KEY,
    body BLOB NOT NULL,
    seen REAL NOT NULL
) WITHOUT ROWID;
"""


class RememberedRefs:
    """Thread-safe; any number of processes may share one ``data`` directory."""

    def __init__(self, data: Path) -> None:
        data.mkdir(parents=True, exist_ok=True)
        self.db = Database(data / "remembered.sqlite", _SCHEMA, durable=False)
        self._lock = threading.Lock()
        self._written: dict[tuple[str, str], str] = {}  # skip rewriting an unchanged ref

    def ref(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The fields of the last ref seen of this name, None if none was."""
        row = self.db.conn.execute(
            "SELECT fields FROM refs WHERE namespace = ? AND name = ?", (namespace, name)
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def remember(self, namespace: str, name: str, fields: dict[str, Any] | None) -> None:
        """The ref the bucket answered for this name (None: it has none)."""
        text = None if fields is None else json.dumps(fields, separators=(",", ":"))
        with self._lock:
            if text is not None and self._written.get((namespace, name)) == text:
                return
        if text is None:
            self.db.conn.execute(
                "DELETE FROM refs WHERE namespace = ? AND name = ?", (namespace, name)
            )
        else:
            self.db.conn.execute(
                "INSERT OR REPLACE INTO refs VALUES (?, ?, ?)", (namespace, name, text)
            )
        with self._lock:
            if text is None:
                self._written.pop((namespace, name), None)
            else:
                if len(self._written) >= WRITTEN_KEPT:
                    self._written.clear()  # only saves writes: memory stays bounded
                self._written[(namespace, name)] = text

    def has_manifest(self, manifest_id: bytes) -> bool:
        row = self.db.conn.execute(
            "SELECT 1 FROM manifests WHERE id = ?", (manifest_id,)
        ).fetchone()
        return row is not None

    def manifest_body(self, manifest_id: bytes) -> bytes | None:
        row = self.db.conn.execute(
            "SELECT body FROM manifests WHERE id = ?", (manifest_id,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def remember_manifest(self, manifest_id: bytes, body: bytes) -> None:
        conn = self.db.conn
        conn.execute(
            "INSERT OR REPLACE INTO manifests VALUES (?, ?, ?)", (manifest_id, body, time.time())
        )
        conn.execute(
            "DELETE FROM manifests WHERE id NOT IN "
            "(SELECT id FROM manifests ORDER BY seen DESC LIMIT ?)",
            (KEEP_MANIFESTS,),
        )

    def close(self) -> None:
        self.db.close()
