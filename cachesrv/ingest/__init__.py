"""Ingest: an upload's bytes in, durable chunks and an encoded manifest out.

- :mod:`.session`: :class:`IngestSession`, one upload, blocking (split, hash, look up,
  compress, append).
- :mod:`.upload`: :class:`Upload`, the one interface request handlers use, and
  :class:`ThreadUpload`, the session run in threads of the server.
- :mod:`.workers`: :class:`IngestPool`, worker processes owned by a nursery of the
  server, and :class:`WorkerUpload`, an upload forwarded to one of them;
  :mod:`.process`: the worker process itself.
- :mod:`.frames`: the wire protocol between the two, without I/O.

Nothing becomes visible here: publishing a name is the catalog's job.

Only :mod:`.session` is imported here: the worker process imports this package, and
trio (:mod:`.upload`, :mod:`.workers`) would cost it ~15 MB of its ~30 MB resident.
"""

from cachesrv.ingest.session import IngestSession, IngestStats

__all__ = ["IngestSession", "IngestStats"]
