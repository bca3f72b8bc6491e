"""A catalog in dicts: the same promises as the SQLite one (the conformance suite
checks both), for tests and as the proof that :class:`CatalogBackend` assumes no SQL.
One process; every method holds one lock, so each is atomic."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cachesrv.manifest import Manifest

from .records import (
    NAMESPACES,
    Conflict,
    EntryExists,
    History,
    Ref,
    StoredManifest,
    entry_is_kept,
    stored_manifest,
)


@dataclass
class _Name:
    manifest: bytes
    size: int
    digest: bytes
    mtime: float
    atime: float

    def ref(self, name: str) -> Ref:
        return Ref(name, self.manifest, self.size, self.digest, self.mtime)


class MemoryCatalog:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._manifests: dict[bytes, bytes] = {}
        self._names: dict[str, dict[str, _Name]] = {namespace: {} for namespace in NAMESPACES}
        self._doomed: dict[bytes, float] = {}
        self._history = History()
        self._serving: dict[str, tuple[set[bytes], float]] = {}

    @property
    def _objects(self) -> dict[str, _Name]:
        return self._names["object"]

    @property
    def _entries(self) -> dict[str, _Name]:
        return self._names["entry"]

    # -- manifests -------------------------------------------------------------

    def manifest(self, manifest_id: bytes) -> Manifest:
        return stored_manifest(manifest_id, self.manifest_body(manifest_id))

    def manifest_body(self, manifest_id: bytes) -> bytes | None:
        with self._lock:
            return self._manifests.get(manifest_id)

    def _put(
        self,
        namespace: str,
        name: str,
        stored: StoredManifest,
        now: float,
        mtime: float | None = None,
    ) -> None:
        self._manifests.setdefault(stored.manifest_id, stored.body)
        modified = now if mtime is None else mtime
        self._names[namespace][name] = _Name(
            stored.manifest_id, stored.size, stored.digest, modified, now
        )

    # -- objects ---------------------------------------------------------------

    def publish(
        self, items: Iterable[tuple[str, StoredManifest]], mtime: float | None = None
    ) -> float:
        items = list(items)
        now = time.time()
        with self._lock:
            paths = set(self._objects)
            for path, _ in items:  # every check first: all or nothing
                parts = path.split("/")
                for i in range(1, len(parts)):
                    if "/".join(parts[:i]) in paths:
                        parent = "/".join(parts[:i])
                        raise Conflict(
                            f"{parent!r} is a file, so {path!r} cannot be stored below it"
                        )
                if any(p.startswith(path + "/") for p in paths):
                    raise Conflict(f"{path!r} is a directory")
                paths.add(path)
            for path, stored in items:
                self._put("object", path, stored, now, mtime)
        return now if mtime is None else mtime

    def get(self, path: str) -> Ref | None:
        with self._lock:
            found = self._objects.get(path)
            return found.ref(path) if found else None

    def is_directory(self, path: str) -> bool:
        prefix = path + "/" if path else ""
        with self._lock:
            return any(p.startswith(prefix) for p in self._objects)

    def children(self, directory: str) -> list[tuple[str, bool, float]]:
        prefix = directory + "/" if directory else ""
        found: dict[str, tuple[bool, float]] = {}
        with self._lock:
            for path, entry in self._objects.items():
                if not path.startswith(prefix):
                    continue
                name, sep, _ = path[len(prefix) :].partition("/")
                is_dir, newest = found.get(name, (False, 0.0))
                found[name] = (is_dir or bool(sep), max(newest, entry.mtime))
        return [(name, d, t) for name, (d, t) in sorted(found.items())]

    def delete_tree(self, path: str) -> int:
        with self._lock:
            gone = [p for p in self._objects if p == path or p.startswith(path + "/")]
            for p in gone:
                del self._objects[p]
        return len(gone)

    def delete_paths(self, paths: Iterable[str]) -> int:
        with self._lock:
            return sum(self._objects.pop(p, None) is not None for p in paths)

    # -- keyed cache entries ---------------------------------------------------

    def save_entry(
        self, key: str, stored: StoredManifest, replace: bool = False, max_age: float | None = None
    ) -> float:
        now = time.time()
        with self._lock:
            existing = self._entries.get(key)
            mtime = existing.mtime if existing is not None else None
            if entry_is_kept(mtime, now, replace, max_age):
                raise EntryExists(key)
            self._put("entry", key, stored, now)
        return now

    def find_entry(
        self, key: str, restore_keys: Iterable[str] = (), exact: bool = False
    ) -> Ref | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                return found.ref(key)
            if exact:
                return None
            for prefix in (key, *restore_keys):
                matches = [(e.mtime, k) for k, e in self._entries.items() if k.startswith(prefix)]
                if matches:
                    _, best = max(matches)
                    return self._entries[best].ref(best)
        return None

    def delete_entry(self, key: str) -> bool:
        with self._lock:
            return self._entries.pop(key, None) is not None

    # -- lifecycle -------------------------------------------------------------

    def names(self) -> Iterator[tuple[str, str, bytes]]:
        with self._lock:
            rows = [
                (ns, n, e.manifest) for ns, names in self._names.items() for n, e in names.items()
            ]
        return iter(rows)

    def touch(self, accessed: dict[tuple[str, str], float]) -> None:
        with self._lock:
            for (namespace, name), when in accessed.items():
                entry = self._names[namespace].get(name)
                if entry is not None:
                    entry.atime = max(entry.atime, when)

    def names_by_access(self) -> list[tuple[str, str, bytes, int, float]]:
        with self._lock:
            rows = [
                (ns, n, e.manifest, e.size, e.atime)
                for ns, names in self._names.items()
                for n, e in names.items()
            ]
        rows.sort(key=lambda row: row[4])
        return rows

    def remove_if_unchanged(self, names: list[tuple[str, str, bytes, float]]) -> int:
        removed = 0
        with self._lock:
            for namespace, name, manifest, atime in names:
                entry = self._names[namespace].get(name)
                if entry is not None and entry.manifest == manifest and entry.atime <= atime:
                    del self._names[namespace][name]
                    removed += 1
        return removed

    def expire(self, cutoff: float) -> int:
        with self._lock:
            removed = 0
            for names in self._names.values():
                for name in [n for n, e in names.items() if e.atime < cutoff]:
                    del names[name]
                    removed += 1
        return removed

    def _referenced(self) -> set[bytes]:
        return {e.manifest for names in self._names.values() for e in names.values()}

    def doom_unreferenced(self, now: float) -> None:
        with self._lock:
            referenced = self._referenced()
            for manifest_id in self._manifests:
                if manifest_id not in referenced:
                    self._doomed.setdefault(manifest_id, now)
            for manifest_id in [m for m in self._doomed if m in referenced]:
                del self._doomed[manifest_id]

    def root_manifests(
        self, doomed_before: float, after: bytes = b"", limit: int = 200
    ) -> list[tuple[bytes, bytes, bool]]:
        with self._lock:
            rows = []
            for manifest_id in sorted(m for m in self._manifests if m > after):
                since = self._doomed.get(manifest_id)
                if since is None or since >= doomed_before:
                    rows.append((manifest_id, self._manifests[manifest_id], since is None))
                    if len(rows) == limit:
                        break
        return rows

    def drop_doomed(self, doomed_before: float) -> int:
        dropped = 0
        with self._lock:
            referenced = self._referenced()
            for manifest_id in [m for m, since in self._doomed.items() if since < doomed_before]:
                del self._doomed[manifest_id]
                if manifest_id not in referenced and manifest_id in self._manifests:
                    del self._manifests[manifest_id]
                    dropped += 1
        return dropped

    def announce(self, replica: str, manifest_ids: set[bytes], until: float) -> None:
        with self._lock:
            self._serving[replica] = (set(manifest_ids), until)

    def announced(self, at: float) -> set[bytes]:
        with self._lock:
            return {m for ids, until in self._serving.values() if until >= at for m in ids}

    def live_manifest_ids(self) -> set[bytes]:
        with self._lock:
            return self._referenced()

    # -- numbers and health ----------------------------------------------------

    def totals(self) -> dict[str, int]:
        with self._lock:
            return {
                "objects": len(self._objects),
                "cache_entries": len(self._entries),
                "logical_bytes": sum(e.size for n in self._names.values() for e in n.values()),
            }

    def record_sample(
        self, replica: str, at: float, values: dict[str, float], since: float
    ) -> None:
        self._history.record(replica, at, values, since)

    def samples(self, since: float) -> list[tuple[float, dict[str, float]]]:
        return self._history.samples(since)

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None


if TYPE_CHECKING:  # mypy checks the backend against the interface it claims
    from . import CatalogBackend

    _conforms: CatalogBackend = MemoryCatalog()
