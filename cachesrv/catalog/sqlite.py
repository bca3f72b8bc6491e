"""The SQLite catalog: names -> manifests, with times and sizes (one file).

Two namespaces share the manifests table:
- objects: legacy paths, a file tree (``a`` and ``a/b`` cannot both exist);
- cache entries: keyed caches with GitHub-style restore-key lookup.
Publishing a version is one transaction: the manifest row and the name swap
commit together, after the chunks they reference are durable.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from cachesrv.db import Database
from cachesrv.manifest import Manifest

from .records import (
    NAMESPACES,
    Conflict,
    EntryExists,
    Ref,
    StoredManifest,
    entry_is_kept,
    stored_manifest,
)

_UNREFERENCED = (
    "NOT EXISTS (SELECT 1 FROM objects o WHERE o.manifest = {m}) "
    "AND NOT EXISTS (SELECT 1 FROM entries e WHERE e.manifest = {m})"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS manifests (
    id BLOB PRIMARY KEY,
    body BLOB NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    path TEXT PRIMARY KEY,
    manifest BLOB NOT NULL,
    size INTEGER NOT NULL,
    digest BLOB NOT NULL,
    mtime REAL NOT NULL,
    atime REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    manifest BLOB NOT NULL,
    size INTEGER NOT NULL,
    digest BLOB NOT NULL,
    mtime REAL NOT NULL,
    atime REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_by_time ON entries (mtime);
CREATE INDEX IF NOT EXISTS objects_by_manifest ON objects (manifest);
CREATE INDEX IF NOT EXISTS entries_by_manifest ON entries (manifest);
-- manifests no name refers to, and since when GC has seen them so (lifecycle/gc.py)
CREATE TABLE IF NOT EXISTS doomed (
    manifest BLOB PRIMARY KEY,
    since REAL NOT NULL
) WITHOUT ROWID;
-- the status page's history: one row per sample (JSON numbers), the newest few kept
CREATE TABLE IF NOT EXISTS history (
    at REAL PRIMARY KEY,
    sample TEXT NOT NULL
);
"""


def _subtree(path: str) -> tuple[str, str]:
    # every key strictly below path/ sorts in [path + "/", path + "0"): "0" follows "/"
    return path + "/", path + "0"


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


class SqliteCatalog:
    """The catalog of one machine: ``<data>/catalog.sqlite``."""

    def __init__(self, root: Path, busy_timeout: float = 60.0) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.db = Database(root / "catalog.sqlite", _SCHEMA, busy_timeout=busy_timeout)

    # -- manifests -----------------------------------------------------------

    def manifest(self, manifest_id: bytes) -> Manifest:
        return stored_manifest(manifest_id, self.manifest_body(manifest_id))

    @staticmethod
    def _insert_manifest(conn: sqlite3.Connection, stored: StoredManifest, now: float) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO manifests VALUES (?, ?, ?, ?)",
            (stored.manifest_id, stored.body, stored.size, now),
        )

    @classmethod
    def _put_name(
        cls,
        conn: sqlite3.Connection,
        table: str,
        name: str,
        stored: StoredManifest,
        now: float,
        mtime: float | None = None,
    ) -> None:
        """Point ``name`` in ``objects`` or ``entries`` at a (new) version, uploaded now
        (Last-Modified ``mtime`` when given)."""
        cls._insert_manifest(conn, stored, now)
        conn.execute(
            f"INSERT OR REPLACE INTO {table} VALUES (?, ?, ?, ?, ?, ?)",
            (
                name,
                stored.manifest_id,
                stored.size,
                stored.digest,
                now if mtime is None else mtime,
                now,
            ),
        )

    def manifest_body(self, manifest_id: bytes) -> bytes | None:
        """A manifest as stored (undecoded; fsck decodes it itself), None if there is none."""
        row = self.db.conn.execute(
            "SELECT body FROM manifests WHERE id = ?", (manifest_id,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def names(self) -> Iterator[tuple[str, str, bytes]]:
        """Every name as (namespace, name, manifest id)."""
        conn = self.db.conn
        for namespace, (table, column) in NAMESPACES.items():
            for name, manifest_id in conn.execute(f"SELECT {column}, manifest FROM {table}"):
                yield namespace, name, manifest_id

    def ping(self) -> None:
        """Raise if the catalog cannot be read (the health check)."""
        self.db.conn.execute("SELECT 1").fetchone()

    def announce(self, replica: str, manifest_ids: set[bytes], until: float) -> None:
        """One machine: the server pins its own downloads in memory (ManifestPins) and
        collects in its own process; a ``cachesrv gc`` beside it relies on the grace."""
        return None

    def announced(self, at: float) -> set[bytes]:
        return set()

    def live_manifest_ids(self) -> set[bytes]:
        conn = self.db.conn
        ids = {row[0] for row in conn.execute("SELECT manifest FROM objects")}
        ids.update(row[0] for row in conn.execute("SELECT manifest FROM entries"))
        return ids

    # -- objects (legacy paths) ----------------------------------------------

    def publish(
        self, items: Iterable[tuple[str, StoredManifest]], mtime: float | None = None
    ) -> float:
        """Make every (path, manifest) visible at once; all or nothing. Returns the mtime."""
        items = list(items)
        now = time.time()
        with self.db.transaction() as conn:
            for path, stored in items:
                _check_tree(conn, path)
                self._put_name(conn, "objects", path, stored, now, mtime)
        return now if mtime is None else mtime

    def get(self, path: str) -> Ref | None:
        row = self.db.conn.execute(
            "SELECT path, manifest, size, digest, mtime FROM objects WHERE path = ?", (path,)
        ).fetchone()
        return Ref(*row) if row else None

    def is_directory(self, path: str) -> bool:
        lo, hi = _subtree(path) if path else ("", "\U0010ffff")
        row = self.db.conn.execute(
            "SELECT 1 FROM objects WHERE path >= ? AND path < ? LIMIT 1", (lo, hi)
        ).fetchone()
        return row is not None

    def delete_tree(self, path: str) -> int:
        """Remove the object at ``path`` and everything below it; returns how many."""
        lo, hi = _subtree(path)
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM objects WHERE path = ? OR (path >= ? AND path < ?)", (path, lo, hi)
            )
        return cursor.rowcount

    def children(self, directory: str) -> list[tuple[str, bool, float]]:
        """Direct children of a directory: (name, is_directory, newest mtime below it)."""
        lo, hi = _subtree(directory) if directory else ("", "\U0010ffff")
        found: dict[str, tuple[bool, float]] = {}
        for path, mtime in self.db.conn.execute(
            "SELECT path, mtime FROM objects WHERE path >= ? AND path < ?", (lo, hi)
        ):
            name, sep, _ = path[len(lo) :].partition("/")
            is_dir, newest = found.get(name, (False, 0.0))
            found[name] = (is_dir or bool(sep), max(newest, mtime))
        return [(name, d, t) for name, (d, t) in sorted(found.items())]

    def delete_paths(self, paths: Iterable[str]) -> int:
        with self.db.transaction() as conn:
            return sum(
                conn.execute("DELETE FROM objects WHERE path = ?", (p,)).rowcount for p in paths
            )

    # -- keyed cache entries -------------------------------------------------

    def save_entry(
        self, key: str, stored: StoredManifest, replace: bool = False, max_age: float | None = None
    ) -> float:
        """Store a cache entry. An existing one is kept (:class:`EntryExists`) unless
        ``replace`` or it is older than ``max_age`` seconds."""
        now = time.time()
        with self.db.transaction() as conn:
            row = conn.execute("SELECT mtime FROM entries WHERE key = ?", (key,)).fetchone()
            if entry_is_kept(row[0] if row else None, now, replace, max_age):
                raise EntryExists(key)
            self._put_name(conn, "entries", key, stored, now)
        return now

    def find_entry(
        self, key: str, restore_keys: Iterable[str] = (), exact: bool = False
    ) -> Ref | None:
        """actions/cache semantics: the exact key, else the newest entry whose key starts
        with ``key``, else the newest starting with each restore key in order."""
        conn = self.db.conn
        columns = "key, manifest, size, digest, mtime"
        row = conn.execute(f"SELECT {columns} FROM entries WHERE key = ?", (key,)).fetchone()
        if row is None and not exact:
            for prefix in (key, *restore_keys):
                row = conn.execute(
                    f"SELECT {columns} FROM entries WHERE key >= ? AND key < ? "
                    "ORDER BY mtime DESC LIMIT 1",
                    (prefix, prefix + "\U0010ffff"),
                ).fetchone()
                if row is not None:
                    break
        return Ref(*row) if row else None

    def delete_entry(self, key: str) -> bool:
        with self.db.transaction() as conn:
            return conn.execute("DELETE FROM entries WHERE key = ?", (key,)).rowcount > 0

    # -- lifecycle: access times, expiry, eviction, GC roots ---------------------

    def touch(self, accessed: dict[tuple[str, str], float]) -> None:
        """Record read times, ``{(namespace, name): time}``, in one transaction."""
        with self.db.transaction() as conn:
            for (namespace, name), when in accessed.items():
                table, column = NAMESPACES[namespace]
                conn.execute(
                    f"UPDATE {table} SET atime = max(atime, ?) WHERE {column} = ?", (when, name)
                )

    def names_by_access(self) -> list[tuple[str, str, bytes, int, float]]:
        """Every name as (namespace, name, manifest, size, atime), least recently used first."""
        conn = self.db.conn
        rows = [
            (namespace, *row)
            for namespace, (table, column) in NAMESPACES.items()
            for row in conn.execute(f"SELECT {column}, manifest, size, atime FROM {table}")
        ]
        rows.sort(key=lambda row: row[4])
        return rows

    def remove_if_unchanged(self, names: list[tuple[str, str, bytes, float]]) -> int:
        """Delete (namespace, name, manifest, atime) unless overwritten or read since."""
        removed = 0
        with self.db.transaction() as conn:
            for namespace, name, manifest, atime in names:
                table, column = NAMESPACES[namespace]
                removed += conn.execute(
                    f"DELETE FROM {table} WHERE {column} = ? AND manifest = ? AND atime <= ?",
                    (name, manifest, atime),
                ).rowcount
        return removed

    def expire(self, cutoff: float) -> int:
        """Delete every name not read nor written since ``cutoff`` (the TTL)."""
        with self.db.transaction() as conn:
            return sum(
                conn.execute(f"DELETE FROM {table} WHERE atime < ?", (cutoff,)).rowcount
                for table, _ in NAMESPACES.values()
            )

    def doom_unreferenced(self, now: float) -> None:
        """Note manifests no name refers to (from ``now`` on); forget revived ones."""
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO doomed SELECT id, ? FROM manifests m WHERE "
                + _UNREFERENCED.format(m="m.id"),
                (now,),
            )
            conn.execute(
                "DELETE FROM doomed WHERE NOT (" + _UNREFERENCED.format(m="doomed.manifest") + ")"
            )

    def root_manifests(
        self, doomed_before: float, after: bytes = b"", limit: int = 200
    ) -> list[tuple[bytes, bytes, bool]]:
        """GC roots, a page at a time by id: (id, body, referenced by a name). Every
        manifest is a root except those unreferenced since before ``doomed_before``."""
        return self.db.conn.execute(
            "SELECT m.id, m.body, d.since IS NULL FROM manifests m "
            "LEFT JOIN doomed d ON d.manifest = m.id "
            "WHERE m.id > ? AND (d.since IS NULL OR d.since >= ?) ORDER BY m.id LIMIT ?",
            (after, doomed_before, limit),
        ).fetchall()

    def drop_doomed(self, doomed_before: float) -> int:
        """Delete manifests unreferenced since before ``doomed_before`` and still so."""
        with self.db.transaction() as conn:
            ids = [
                row[0]
                for row in conn.execute(
                    "SELECT manifest FROM doomed WHERE since < ?", (doomed_before,)
                )
            ]
            dropped = 0
            for manifest in ids:
                dropped += conn.execute(
                    "DELETE FROM manifests WHERE id = ? AND " + _UNREFERENCED.format(m="?"),
                    (manifest, manifest, manifest),
                ).rowcount
                conn.execute("DELETE FROM doomed WHERE manifest = ?", (manifest,))
        return dropped

    # -- numbers ---------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        conn = self.db.conn
        objects, logical = conn.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM objects"
        ).fetchone()
        entries, entry_bytes = conn.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM entries"
        ).fetchone()
        return {
            "objects": objects,
            "cache_entries": entries,
            "logical_bytes": logical + entry_bytes,
        }

    def record_sample(
        self, replica: str, at: float, values: dict[str, float], since: float
    ) -> None:
        # every process serving this directory writes here; points are told apart by
        # time, so the replica's name is not kept
        with self.db.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO history VALUES (?, ?)", (at, json.dumps(values)))
            conn.execute("DELETE FROM history WHERE at < ?", (since,))

    def samples(self, since: float) -> list[tuple[float, dict[str, float]]]:
        rows = self.db.conn.execute(
            "SELECT at, sample FROM history WHERE at >= ? ORDER BY at", (since,)
        ).fetchall()
        return [(at, json.loads(sample)) for at, sample in rows]

    def close(self) -> None:
        self.db.close()


def _check_tree(conn: sqlite3.Connection, path: str) -> None:
    ancestors = _ancestors(path)
    if ancestors:
        marks = ",".join("?" * len(ancestors))
        row = conn.execute(
            f"SELECT path FROM objects WHERE path IN ({marks}) LIMIT 1", ancestors
        ).fetchone()
        if row:
            raise Conflict(f"{row[0]!r} is a file, so {path!r} cannot be stored below it")
    lo, hi = _subtree(path)
    row = conn.execute(
        "SELECT 1 FROM objects WHERE path >= ? AND path < ? LIMIT 1", (lo, hi)
    ).fetchone()
    if row:
        raise Conflict(f"{path!r} is a directory")
