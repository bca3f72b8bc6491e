"""``cachesrv push`` and ``cachesrv pull``: a dedup-aware client of the chunk endpoints.

- :mod:`.remote`: the server's ``/-/chunks/`` and ``/-/manifest`` endpoints over HTTP,
  one connection per thread;
- :mod:`.push`: a directory as the tar ``tar -C DIR -cf - PATH...`` would make, split by
  the server's own ingest session (same chunker, same manifest), only the chunks the
  server lacks sent;
- :mod:`.pull`: a stored object into a directory, fetching only the chunks the
  directory's files do not already hold (an index kept outside the directory says which
  files hold which chunks), rewriting only files that changed;
- :mod:`.progress`: a progress line on a terminal, a summary line always.
"""
