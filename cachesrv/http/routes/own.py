"""The server's own endpoints: ``/-/stats``, ``/-/metrics``, ``/-/healthz``, ``/-/``."""

from __future__ import annotations

from typing import Any

import trio

from cachesrv.http import metrics, status_page
from cachesrv.http.auth import Scope
from cachesrv.http.errors import HttpError
from cachesrv.http.request import Request
from cachesrv.http.responses import header as _h
from cachesrv.http.responses import send_html, send_json, send_simple
from cachesrv.names import clean_path
from cachesrv.service import CacheService


async def own_endpoint(
    service: CacheService, prometheus: metrics.Metrics, request: Request, send: Any
) -> None:
    if request.method == "PUT":
        clean_path(request.path)  # refused: -/ is reserved
    if request.method not in ("GET", "HEAD"):
        raise HttpError(405, "Method Not Allowed", [_h("Allow", "GET, HEAD")])
    path = request.path
    if path == "/-/healthz":
        await service.ping()
        await send_json(send, 200, {"status": "ok"})
    elif path == "/-/metrics":
        body = await trio.to_thread.run_sync(prometheus.render)
        await send_simple(send, 200, body, metrics.CONTENT_TYPE)
    elif path == "/-/stats":
        objects = request.arg("objects") in ("1", "true")  # per-object: a full mark
        if objects:  # every name in the store: a token limited to a prefix may not
            request.require(Scope.READ, "")
        await send_json(send, 200, await service.stats(objects=objects))
    elif path in ("/-/", "/-"):
        stats = await service.stats()
        await send_html(send, 200, status_page.render(stats, refresh=request.arg("refresh")))
    else:
        raise HttpError(404, "Not Found")
