"""Everything the status page shows, as one dict (also ``GET /-/stats``).

:func:`status` adds to :meth:`Repository.stats` what is too big for every metrics
scrape: the caches by size with their unique and shared bytes (from the last
collection's mark, never a mark per view), recent uploads and restores, and the
history the lifecycle task samples into the catalog (:class:`History`): every
replica's points, so that the counts are the whole service's.
"""

from __future__ import annotations

import time

from cachesrv import __version__
from cachesrv.repository import Repository

HISTORY_KEEP = 1440  # intervals kept in the catalog: a day at the default interval
HISTORY_POINTS = 120  # points handed out (the charts' resolution)
CACHES_SHOWN = 50

_LEVELS = ("logical_bytes", "stored_bytes", "disk_bytes", "objects", "cache_entries")
_COUNTS = ("hits", "not_found", "uploads", "upload_bytes", "upload_new_bytes")


class History:
    """Samples the store's size and the reads and uploads since the previous sample."""

    def __init__(self) -> None:
        self._previous: dict[str, int] | None = None

    def sample(self, repo: Repository, now: float | None = None) -> dict[str, float]:
        stats = repo.stats()
        since_start = stats["since_start"]
        assert isinstance(since_start, dict)
        counts = {name: int(since_start[name]) for name in _COUNTS}
        previous = self._previous or dict.fromkeys(_COUNTS, 0)
        values: dict[str, float] = {name: stats[name] for name in _LEVELS}  # type: ignore[misc]
        values.update({name: counts[name] - previous[name] for name in _COUNTS})
        self._previous = counts
        at = time.time() if now is None else now
        repo.catalog.record_sample(repo.replica, at, values, at - _kept_for(repo))
        return values


def _kept_for(repo: Repository) -> float:
    return HISTORY_KEEP * repo.config.history_interval


def history(
    repo: Repository, points: int = HISTORY_POINTS, now: float | None = None
) -> list[dict[str, float]]:
    """The kept history of every replica, merged into at most ``points`` points of equal
    time spans, each at least one history interval (so that each holds a point of every
    replica): levels as the newest value in each span (they are the store's, whichever
    replica read them), counts summed over it (each replica counts its own)."""
    now = time.time() if now is None else now
    samples = repo.catalog.samples(now - _kept_for(repo))
    if not samples:
        return []
    span = samples[-1][0] - samples[0][0]
    width = max(repo.config.history_interval, span / max(points - 1, 1), 1e-9)
    buckets: dict[int, list[tuple[float, dict[str, float]]]] = {}
    for sample in samples:  # oldest first: so are the buckets
        buckets.setdefault(int(sample[0] // width), []).append(sample)
    merged = []
    for bucket in buckets.values():
        at, last = bucket[-1]
        point: dict[str, float] = {"at": at}
        point.update({name: last.get(name, 0) for name in _LEVELS})
        point.update({name: sum(v.get(name, 0) for _, v in bucket) for name in _COUNTS})
        merged.append(point)
    return merged


def caches(repo: Repository, limit: int = CACHES_SHOWN) -> dict[str, object]:
    """The largest names now, with the unique and shared bytes the last mark found for
    the version they hold (None when they changed since, or no collection ran yet)."""
    catalog = repo.catalog
    names = catalog.names_by_access()
    names.sort(key=lambda row: row[3], reverse=True)
    snapshot = repo.usage
    hits = repo.access.hits
    rows = []
    for namespace, name, manifest, size, atime in names[:limit]:
        ref = catalog.get(name) if namespace == "object" else catalog.find_entry(name, exact=True)
        usage = snapshot.names.get((namespace, name)) if snapshot else None
        if usage is not None and usage.manifest != manifest:
            usage = None
        rows.append(
            {
                "namespace": namespace,
                "name": name,
                "size": size,
                "unique_bytes": usage.unique_bytes if usage else None,
                "shared_bytes": usage.shared_bytes if usage else None,
                "hits": hits.get((namespace, name), 0),
                "last_access": atime,
                "last_write": ref.mtime if ref else None,
            }
        )
    return {
        "marked_at": snapshot.marked_at if snapshot else None,
        "count": len(names),
        "names": rows,
    }


def status(repo: Repository, objects: bool = False) -> dict[str, object]:
    """``/-/stats``: the store's numbers and everything the status page shows."""
    result = repo.stats(objects=objects)
    result["version"] = __version__
    result["caches"] = caches(repo)
    result["recent_uploads"] = repo.activity.uploads()
    result["recent_restores"] = repo.activity.restores()
    result["history"] = history(repo)
    return result
