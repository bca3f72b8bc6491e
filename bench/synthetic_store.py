"""Build a synthetic store directly through the store and catalog APIs (no HTTP).

``objects`` names, each a manifest of ``chunks_per_object`` tiny chunks (random, so
nothing dedups), published in batches. Used by ``bench.startup`` and ``bench.gc_latency``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import zstandard

from cachesrv.catalog import Catalog, StoredManifest
from cachesrv.manifest import Manifest, Piece
from cachesrv.store import chunk_id, encode_chunk
from cachesrv.store.local import LocalChunkStore


def build(data: Path, objects: int, chunks_per_object: int, chunk_size: int = 64) -> float:
    """Returns the seconds it took."""
    started = time.perf_counter()
    store = LocalChunkStore(data)
    writer = store.writer()
    catalog = Catalog(data)
    compressor = zstandard.ZstdCompressor(level=1)
    pending: list[tuple[str, StoredManifest]] = []
    for n in range(objects):
        pieces = []
        for _ in range(chunks_per_object):
            raw = os.urandom(chunk_size)
            cid = chunk_id(raw)
            writer.put(cid, encode_chunk(compressor, cid, raw))
            pieces.append(Piece(len(raw), chunk_id=cid))
        # the digest is not checked by the store: any 32 bytes do for a synthetic object
        manifest = Manifest(chunk_size * chunks_per_object, os.urandom(32), tuple(pieces))
        pending.append((f"synthetic/{n:07d}.bin", StoredManifest.of(manifest)))
        if len(pending) >= 20:
            writer.commit()
            catalog.publish(pending)
            pending.clear()
    writer.commit()
    if pending:
        catalog.publish(pending)
    store.close()
    catalog.close()
    return time.perf_counter() - started
