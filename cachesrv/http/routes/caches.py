"""Keyed caches, ``/-/cache/<key>``: GitHub actions/cache semantics with restore-keys."""

from __future__ import annotations

import math
import time
from typing import Any
from urllib.parse import quote

from cachesrv.http import accesslog
from cachesrv.http.auth import Scope
from cachesrv.http.download import not_found, send_object
from cachesrv.http.errors import HttpError
from cachesrv.http.request import Request
from cachesrv.http.responses import header as _h
from cachesrv.http.responses import send_json
from cachesrv.names import clean_key
from cachesrv.service import CacheService

PREFIX = "/-/cache/"


async def cache_entry(service: CacheService, request: Request, send: Any, raw_key: str) -> None:
    key = clean_key(raw_key)
    method = request.method
    if method in ("GET", "HEAD"):
        restore_keys = [
            k.strip()
            for value in request.args("restore-keys")
            for k in value.replace("\n", ",").split(",")
            if k.strip()
        ]
        request.require(Scope.READ, key, *restore_keys)
        exact = request.arg("exact") in ("1", "true", "True")
        ref = await service.find_entry(key, restore_keys, exact=exact)
        if ref is None:
            accesslog.note_match("miss")
            await not_found(service, request, send, f"no cache entry matches {key!r}")
            return
        match = "exact" if ref.name == key else "partial"
        accesslog.note_match(match, ref.name)
        extra = [
            _h("Cachesrv-Key", quote(ref.name, safe="/:@,+=")),
            _h("Cachesrv-Match", match),
            _h("Cachesrv-Age", max(0, math.floor(time.time() - ref.mtime))),
        ]
        await send_object(service, request, send, ref, "application/x-tar", extra)
    elif method in ("PUT", "POST"):
        request.require(Scope.WRITE, key)
        replace, max_age = save_options(request)
        stored = await service.save_entry(key, request.body(), replace, max_age)
        await send_json(send, 201, {"key": key, "size": stored.size, "etag": f'"{stored.etag}"'})
    elif method == "DELETE":
        request.require(Scope.WRITE, key)
        if not await service.delete_entry(key):
            raise HttpError(404, f"no cache entry {key!r}")
        await send_json(send, 202, {"deleted": key})
    else:
        raise HttpError(405, "Method Not Allowed", [_h("Allow", "GET, HEAD, PUT, DELETE")])


def save_options(request: Request) -> tuple[bool, float | None]:
    """A keyed save's ``replace`` and ``max-age`` arguments (curl and push alike)."""
    replace = request.arg("replace") in ("1", "true", "True")
    max_age_arg = request.arg("max-age")
    try:
        max_age = float(max_age_arg) if max_age_arg is not None else None
    except ValueError as exc:
        raise HttpError(400, "max-age must be a number of seconds") from exc
    return replace, max_age
