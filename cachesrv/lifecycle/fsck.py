"""fsck: verify every stored chunk against its id and every name's references.

The chunk store checks itself (:meth:`cachesrv.store.ChunkStore.verify`: chunks against
their ids, its own structure, leftovers of a crash); here every name of the catalog is
checked against it. Problems (exit non-zero): whatever the store reports, a name whose
manifest is gone or undecodable, a name referencing a chunk that is not stored (or
quarantined). ``repair`` quarantines corrupt chunks (never served, reported missing so
a re-upload stores them again) and lets the store remove its leftovers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cachesrv.catalog import CatalogBackend
from cachesrv.manifest import Manifest, ManifestError
from cachesrv.store import ChunkStore


@dataclass
class FsckReport:
    chunks_checked: int = 0
    names_checked: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, object]:
        return {
            "clean": self.clean,
            "chunks_checked": self.chunks_checked,
            "names_checked": self.names_checked,
            "problems": self.problems,
            "notes": self.notes,
            "repaired": self.repaired,
        }


def fsck(store: ChunkStore, catalog: CatalogBackend, repair: bool = False) -> FsckReport:
    verified = store.verify(repair)
    report = FsckReport(
        chunks_checked=verified.chunks_checked,
        problems=list(verified.problems),
        notes=list(verified.notes),
        repaired=list(verified.repaired),
    )
    _check_names(store, catalog, report, verified.corrupt)
    return report


def _check_names(
    store: ChunkStore, catalog: CatalogBackend, report: FsckReport, corrupt: set[bytes]
) -> None:
    seen: dict[bytes, str | None] = {}  # manifest -> its problem, or None
    for namespace, name, manifest_id in catalog.names():
        report.names_checked += 1
        if manifest_id not in seen:
            seen[manifest_id] = _check_manifest(store, catalog, manifest_id, corrupt)
        problem = seen[manifest_id]
        if problem is not None:
            report.problems.append(f"{namespace} {name!r}: {problem}")


def _check_manifest(
    store: ChunkStore, catalog: CatalogBackend, manifest_id: bytes, corrupt: set[bytes]
) -> str | None:
    body = catalog.manifest_body(manifest_id)
    if body is None:
        return f"manifest {manifest_id.hex()} is missing"
    try:
        ids = Manifest.chunk_ids_of(body)
    except ManifestError as exc:
        return f"manifest {manifest_id.hex()}: {exc}"
    damaged = ids & corrupt
    if damaged:
        return f"{len(damaged)} of its chunks are corrupt (e.g. {min(damaged).hex()})"
    lost = ids - store.contains(ids)  # a plain lookup: a writer's missing() would pin them
    if not lost:
        return None
    sample = sorted(lost)[:500]
    quarantined = len(store.quarantined(sample))
    why = f", {quarantined} of them quarantined as corrupt" if quarantined else ""
    return (
        f"{len(lost)} of its chunks are not stored{why} (e.g. {sample[0].hex()}): upload it again"
    )
