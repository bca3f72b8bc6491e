"""What a catalog hands out, whatever its backend: refs, stored manifests, its errors."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import blake3

from cachesrv.manifest import Manifest

# The two namespaces, as (table, name column) for lifecycle queries.
NAMESPACES = {"object": ("objects", "path"), "entry": ("entries", "key")}


class Conflict(Exception):
    """A path would be both a file and a directory."""


class EntryExists(Exception):
    """A cache entry exists and the save did not ask to replace it."""


@dataclass(frozen=True)
class Ref:
    """A name's current version."""

    name: str
    manifest_id: bytes
    size: int
    digest: bytes
    mtime: float  # when this version finished uploading (Last-Modified)
    # answered from this replica's memory while the object store was down: only the
    # bytes the hot cache holds (decoded) can be served, so no zstd body
    remembered: bool = False

    @property
    def etag(self) -> str:
        return self.digest[:16].hex()


def stored_manifest(manifest_id: bytes, body: bytes | None) -> Manifest:
    """A catalog's ``manifest()``, from what its ``manifest_body()`` gave: KeyError if
    there is none, :class:`~cachesrv.manifest.ManifestError` if it does not match its id."""
    if body is None:
        raise KeyError(manifest_id.hex())
    return Manifest.decode_stored(manifest_id, body)


@dataclass(frozen=True)
class StoredManifest:
    """A version as the catalog stores it: the encoded manifest, its id (the BLAKE3 of
    the body), and the size and digest a name's row keeps. The body is what was encoded
    where the upload ran (a worker process, maybe): it is never encoded again, and
    decoded only when :attr:`manifest` is asked for."""

    manifest_id: bytes
    body: bytes
    size: int
    digest: bytes
    _decoded: Manifest | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, manifest: Manifest) -> StoredManifest:
        body = manifest.encode()
        return cls(blake3.blake3(body).digest(), body, manifest.size, manifest.digest, manifest)

    @property
    def manifest(self) -> Manifest:
        if self._decoded is None:
            object.__setattr__(self, "_decoded", Manifest.decode(self.body))
        assert self._decoded is not None
        return self._decoded

    @property
    def etag(self) -> str:
        return self.digest[:16].hex()


def entry_is_kept(
    existing_mtime: float | None, now: float, replace: bool, max_age: float | None
) -> bool:
    """The keyed-save rule: an existing entry stays (the save is refused) unless the save
    asks to ``replace`` it or the entry is older than ``max_age`` seconds."""
    if existing_mtime is None or replace:
        return False
    return max_age is None or now - existing_mtime <= max_age


class History:
    """The status page's history points of one or more replicas, in memory (catalogs
    with no table for them, and the S3 catalog's own series). Thread-safe."""

    def __init__(self) -> None:
        self._points: dict[tuple[float, str], dict[str, float]] = {}
        self._lock = threading.Lock()

    def record(self, replica: str, at: float, values: dict[str, float], since: float) -> None:
        with self._lock:
            self._points[at, replica] = dict(values)
            for old in [key for key in self._points if key[0] < since]:
                del self._points[old]

    def samples(self, since: float) -> list[tuple[float, dict[str, float]]]:
        with self._lock:
            kept = sorted(key for key in self._points if key[0] >= since)
            return [(key[0], dict(self._points[key])) for key in kept]
