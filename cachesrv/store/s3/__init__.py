"""S3 backends: chunks (:mod:`.store`), and through the same client (:mod:`.client`)
the catalog (:mod:`cachesrv.catalog.s3`), in one bucket shared by every replica."""

from .client import (
    ConditionalWritesUnsupported,
    ObjectStore,
    ObjectStoreUnavailable,
    PreconditionFailed,
    StoreUrl,
    open_object_store,
)
from .store import S3ChunkStore, S3ChunkWriter, S3Lease

__all__ = [
    "ConditionalWritesUnsupported",
    "ObjectStore",
    "ObjectStoreUnavailable",
    "PreconditionFailed",
    "S3ChunkStore",
    "S3ChunkWriter",
    "S3Lease",
    "StoreUrl",
    "open_object_store",
]
