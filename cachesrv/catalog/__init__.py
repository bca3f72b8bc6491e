"""The catalog: names -> manifests, with times and sizes; keyed cache entries.

Two namespaces share the manifests:
- objects (``"object"``): legacy paths, a file tree (``a`` and ``a/b`` cannot both exist);
- cache entries (``"entry"``): keyed caches with GitHub-style restore-key lookup.
Publishing a version is atomic: the manifest and the name swap become visible together,
after the chunks they reference are durable.

:class:`CatalogBackend` is what the HTTP layer and the lifecycle tools rely on;
:class:`~cachesrv.catalog.sqlite.SqliteCatalog` (also ``Catalog``) is one machine's
backend, :class:`~cachesrv.catalog.memory.MemoryCatalog` one that lives in dicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from cachesrv.manifest import Manifest

from .records import NAMESPACES, Conflict, EntryExists, Ref, StoredManifest, entry_is_kept
from .sqlite import SqliteCatalog

Catalog = SqliteCatalog  # the default backend, under the name every caller knows

__all__ = [
    "NAMESPACES",
    "Catalog",
    "CatalogBackend",
    "Conflict",
    "EntryExists",
    "Ref",
    "SqliteCatalog",
    "StoredManifest",
    "entry_is_kept",
]


class CatalogBackend(Protocol):
    """Blocking and thread-safe. Times are seconds since the epoch."""

    # -- manifests -------------------------------------------------------------

    def manifest(self, manifest_id: bytes) -> Manifest:
        """A stored manifest, decoded; KeyError if there is none."""

    def manifest_body(self, manifest_id: bytes) -> bytes | None:
        """A manifest as stored (undecoded), None if there is none."""

    # -- objects (legacy paths) ------------------------------------------------

    def publish(
        self, items: Iterable[tuple[str, StoredManifest]], mtime: float | None = None
    ) -> float:
        """Make every (path, manifest) visible at once, all or nothing (:class:`Conflict`
        if a path would be both a file and a directory). Returns the time (mtime).

        ``mtime`` (an import of another server's files) is the versions' Last-Modified
        instead of now; their last access is now either way, so TTL and eviction count
        from the publication."""

    def get(self, path: str) -> Ref | None: ...

    def is_directory(self, path: str) -> bool:
        """Whether some object lies below ``path`` (``""``: the store is not empty)."""

    def children(self, directory: str) -> list[tuple[str, bool, float]]:
        """Direct children of a directory: (name, is_directory, newest mtime below it)."""

    def delete_tree(self, path: str) -> int:
        """Remove the object at ``path`` and everything below it; returns how many."""

    def delete_paths(self, paths: Iterable[str]) -> int: ...

    # -- keyed cache entries ---------------------------------------------------

    def save_entry(
        self, key: str, stored: StoredManifest, replace: bool = False, max_age: float | None = None
    ) -> float:
        """Store a cache entry. An existing one is kept (:class:`EntryExists`) unless
        ``replace`` or it is older than ``max_age`` seconds."""

    def find_entry(
        self, key: str, restore_keys: Iterable[str] = (), exact: bool = False
    ) -> Ref | None:
        """The exact key, else the newest entry whose key starts with ``key``, else the
        newest starting with each restore key in order (actions/cache semantics)."""

    def delete_entry(self, key: str) -> bool: ...

    # -- lifecycle -------------------------------------------------------------

    def names(self) -> Iterator[tuple[str, str, bytes]]:
        """Every name as (namespace, name, manifest id)."""

    def touch(self, accessed: dict[tuple[str, str], float]) -> None:
        """Record read times, ``{(namespace, name): time}`` (a time only moves forward)."""

    def names_by_access(self) -> list[tuple[str, str, bytes, int, float]]:
        """Every name as (namespace, name, manifest, size, atime), least recently used first."""

    def remove_if_unchanged(self, names: list[tuple[str, str, bytes, float]]) -> int:
        """Delete (namespace, name, manifest, atime) unless overwritten or read since."""

    def expire(self, cutoff: float) -> int:
        """Delete every name not read nor written since ``cutoff``."""

    def doom_unreferenced(self, now: float) -> None:
        """Note manifests no name refers to (from ``now`` on); forget revived ones."""

    def root_manifests(
        self, doomed_before: float, after: bytes = b"", limit: int = 200
    ) -> list[tuple[bytes, bytes, bool]]:
        """GC roots, a page at a time by id: (id, body, referenced by a name). Every
        manifest is a root except those unreferenced since before ``doomed_before``."""

    def drop_doomed(self, doomed_before: float) -> int:
        """Delete manifests unreferenced since before ``doomed_before`` and still so."""

    def live_manifest_ids(self) -> set[bytes]: ...

    def announce(self, replica: str, manifest_ids: set[bytes], until: float) -> None:
        """Say that ``replica`` is serving these manifests, until ``until`` unless said
        again (an empty set withdraws): GC in every process sharing the catalog keeps
        them, however long the downloads take."""

    def announced(self, at: float) -> set[bytes]:
        """Manifests some replica says it is serving at ``at``."""

    # -- numbers and health ----------------------------------------------------

    def record_sample(
        self, replica: str, at: float, values: dict[str, float], since: float
    ) -> None:
        """Add one point of ``replica``'s history (the status page's charts: the store's
        levels, and what this replica counted since its previous point) and forget
        every replica's points taken before ``since``."""

    def samples(self, since: float) -> list[tuple[float, dict[str, float]]]:
        """Every replica's history points taken at or after ``since``, oldest first:
        (time, values)."""

    def totals(self) -> dict[str, int]:
        """``objects``, ``cache_entries``, ``logical_bytes``."""

    def ping(self) -> None:
        """Raise if the catalog cannot be read (the health check)."""

    def close(self) -> None: ...
