"""What a catalog hands out, whatever its backend: refs, stored manifests, its errors."""

from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def etag(self) -> str:
        return self.digest[:16].hex()


@dataclass(frozen=True)
class StoredManifest:
    manifest_id: bytes
    body: bytes
    manifest: Manifest

    @classmethod
    def of(cls, manifest: Manifest) -> StoredManifest:
        body = manifest.encode()
        return cls(blake3.blake3(body).digest(), body, manifest)
