"""Restore: a stored object (or a byte range of it) in, the exact uploaded bytes out.

- :mod:`.job`: one restore, blocking: hot spans or decoded chunks, all verified, as
  frames on a socket; ``Content-Encoding: zstd`` restores send the stored frames.
- :mod:`.hot`: the hot cache of decoded, verified spans of recent objects (on disk),
  filled by restores and, after each upload, by a warm-up job in the background.
- :mod:`.workers`: the server side: restore worker processes (or threads), owned by a
  nursery of the server; :mod:`.process`: the worker process itself.

The HTTP layer pins the manifest for the whole response (an overwrite or delete
meanwhile never mixes versions) and calls :meth:`.workers.RestorePool.stream`.
Nothing is imported here, so that a worker process loads only what it uses.
"""
