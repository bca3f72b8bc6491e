"""The ASGI application: routing, auth, and errors -> responses.

Routes (LEGACY-API.md is the contract for the first five), by module of
:mod:`cachesrv.http.routes`:
    POST   /upload            objects: multipart form: path, file, [targz]
    DELETE /upload            objects: path (query or form): the object or directory
    DELETE /delete            objects: path, days, recursive: old direct children
    GET    /<path>, HEAD      objects: any depth; /dir -> 301 /dir/; /dir/ -> dir/index.html
    PUT    /<path>            objects: raw body (the modern upload)
    GET|HEAD|PUT|DELETE /-/cache/<key>   caches: keyed caches with restore-keys
    GET    /-/stats, /-/metrics, /-/healthz, /-/   own
    /-/chunks/..., /-/manifest                      chunks: cachesrv push / pull

What a request does to the store is :class:`cachesrv.service.CacheService`'s to decide;
every error becomes a response here (:func:`cachesrv.http.errors.as_http_error`).
"""

from __future__ import annotations

import logging
from typing import Any

from cachesrv.http import accesslog, metrics, status_page
from cachesrv.http.auth import Authorizer, Scope
from cachesrv.http.errors import ClientGone, HttpError, as_http_error, disk_full
from cachesrv.http.limits import RequestLimits
from cachesrv.http.request import Request
from cachesrv.http.responses import header as _h
from cachesrv.http.responses import send_json
from cachesrv.http.routes import caches, chunks, objects, own
from cachesrv.repository import Repository
from cachesrv.service import CacheService

log = logging.getLogger("cachesrv")

WRITE_METHODS = {"POST", "PUT", "DELETE"}


class App:
    def __init__(self, repo: Repository, authorizer: Authorizer | None = None) -> None:
        self.config = repo.config
        self.service = CacheService(repo)
        self.metrics = metrics.Metrics(repo)
        self.auth = authorizer or Authorizer(repo.config.credentials)
        self.limits = RequestLimits(repo.config)
        # each request once in the access log, the metrics and the status page's activity
        self.observer = accesslog.RequestObserver(
            [accesslog.log_exchange, self.metrics.observe, status_page.recorder(repo)]
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        await self.observer.run(scope, receive, send, self._handle)

    async def _handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        request = Request(scope, self.limits.guard(receive), self.auth)
        request.max_decoded = self.limits.decoded_limit()
        started = [False]

        async def tracked_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
            await send(message)

        try:
            self.limits.check(request)
            with self.limits.upload_slot(request):
                await self.route(request, tracked_send)
        except ClientGone:
            log.info(
                "%s %s: client disconnected before the body was complete",
                request.method,
                request.path,
            )
        except Exception as exc:
            error = as_http_error(exc)
            if error is None or started[0]:
                raise
            if disk_full(exc) or error.status >= 500:
                log.error("%s %s: %s: %s", request.method, request.path, error.status, exc)
            await send_json(tracked_send, error.status, {"message": error.message}, error.headers)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- routing ---------------------------------------------------------------

    async def route(self, request: Request, send: Any) -> None:
        method, path = request.method, request.path
        service = self.service
        need = self._needs(method, path)
        if need is not None:
            request.require(need)  # names are checked by the routes, once they are known
        if method in ("PUT", "POST") and path != chunks.FETCH:
            # refused before a byte of the body is read; the previous version stays
            await service.check_room(request.content_length)
        if path.startswith(caches.PREFIX):
            await caches.cache_entry(service, request, send, path[len(caches.PREFIX) :])
        elif path.startswith(chunks.PREFIXES):
            await chunks.chunk_endpoint(service, request, send)
        elif path.startswith("/-/") or path == "/-":
            await own.own_endpoint(service, self.metrics, request, send)
        elif path == "/upload" and method == "POST":
            await objects.upload_form(service, request, send)
        elif path == "/upload" and method == "DELETE":
            await objects.delete_upload(service, request, send)
        elif path == "/delete" and method == "DELETE":
            await objects.delete_old(service, request, send)
        elif method in ("GET", "HEAD"):
            await objects.serve_path(service, request, send)
        elif method == "PUT":
            await objects.put(service, request, send)
        else:
            allow = "GET, HEAD, PUT" + (", POST, DELETE" if path in ("/upload",) else "")
            allow += ", DELETE" if path == "/delete" else ""
            raise HttpError(405, "Method Not Allowed", [_h("Allow", allow)])

    @staticmethod
    def _needs(method: str, path: str) -> Scope | None:
        """The scope a request needs before its names are known (None: open)."""
        if path == "/-/healthz":
            return None
        if path == chunks.FETCH:  # a read, whose ids travel in a POST body
            return Scope.READ
        if method == "DELETE" and path in ("/upload", "/delete"):
            return Scope.ADMIN
        return Scope.WRITE if method in WRITE_METHODS else Scope.READ
