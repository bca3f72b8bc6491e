"""The routes, by what they serve: each turns a request into calls of
:class:`cachesrv.service.CacheService` and answers in the contract's words.

- :mod:`.objects`: legacy paths (LEGACY-API.md): ``POST``/``DELETE /upload``,
  ``DELETE /delete``, ``GET``/``HEAD``/``PUT /<path>``.
- :mod:`.caches`: keyed caches, ``/-/cache/<key>``.
- :mod:`.own`: the server's own endpoints under ``/-/``.
"""
