"""The ASGI application: routes, the legacy contract, auth, and errors -> responses.

Routes (LEGACY-API.md is the contract for the first five):
    POST   /upload            multipart form: path, file, [targz]
    DELETE /upload            path (query or form): the object or directory
    DELETE /delete            path, days, recursive: old direct children
    GET    /<path>, HEAD      any depth; /dir -> 301 /dir/; /dir/ -> dir/index.html
    PUT    /<path>            raw body (the modern upload)
    GET|HEAD|PUT|DELETE /-/cache/<key>   keyed caches with restore-keys
    GET    /-/stats, /-/metrics, /-/healthz, /-/
"""

from __future__ import annotations

import html
import json
import logging
import math
import mimetypes
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, quote

import trio

from cachesrv.catalog import Conflict, EntryExists, Ref, StoredManifest
from cachesrv.http import conditional, faults, metrics
from cachesrv.http.auth import Authorizer, Scope
from cachesrv.http.errors import ClientGone, HttpError
from cachesrv.http.forms import read_form
from cachesrv.http.limits import RequestLimits, parse_days
from cachesrv.http.paths import clean_key, clean_path
from cachesrv.http.request import Request
from cachesrv.http.targz import extract_targz
from cachesrv.ingest import Upload
from cachesrv.repository import Repository
from cachesrv.restore.job import Job
from cachesrv.store import ChunkError
from cachesrv.workers import RemoteUpload

log = logging.getLogger("cachesrv")

Headers = Sequence[tuple[bytes, bytes]]
WRITE_METHODS = {"POST", "PUT", "DELETE"}
CACHE_PREFIX = "/-/cache/"
mimetypes.add_type("application/x-tar", ".tar")
mimetypes.add_type("application/zstd", ".zst")


def _h(name: str, value: str | int) -> tuple[bytes, bytes]:
    # Names keep their canonical case on the wire: scripts grep "Last-Modified" with sed.
    return name.encode("latin-1"), str(value).encode("latin-1")


async def _send_simple(
    send: Any,
    status: int,
    body: bytes,
    content_type: str,
    headers: Headers = (),
    head=False,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                _h("Content-Type", content_type),
                _h("Content-Length", len(body)),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})


async def send_json(send: Any, status: int, payload: object, headers: Headers = ()) -> None:
    body = (json.dumps(payload) + "\n").encode()
    await _send_simple(send, status, body, "application/json", headers)


async def send_html(send: Any, status: int, text: str, headers: Headers = ()) -> None:
    await _send_simple(send, status, text.encode(), "text/html; charset=UTF-8", headers)


class App:
    def __init__(self, repo: Repository, authorizer: Authorizer | None = None) -> None:
        self.repo = repo
        self.config = repo.config
        self.metrics = metrics.Metrics(repo)
        self.auth = authorizer or Authorizer(repo.config.credentials)
        self.limits = RequestLimits(repo.config)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = Request(scope, self.limits.guard(receive))
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
        except HttpError as exc:
            if started[0]:
                raise
            await send_json(tracked_send, exc.status, {"message": exc.message}, exc.headers)
        except Exception as exc:
            error = faults.as_http_error(exc)
            if error is None or started[0]:
                raise
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
        self._authorize(request, self._needs(method, path))
        if method in ("PUT", "POST") and not self.repo.admits(request.content_length):
            # refused before a byte of the body is read; the previous version stays
            raise HttpError(507, "Insufficient Storage: the store is at its hard limit")
        if path.startswith(CACHE_PREFIX):
            await self._cache_entry(request, send, path[len(CACHE_PREFIX) :])
        elif path.startswith("/-/") or path == "/-":
            await self._own_endpoint(request, send)
        elif path == "/upload" and method == "POST":
            await self._upload_form(request, send)
        elif path == "/upload" and method == "DELETE":
            await self._delete_upload(request, send)
        elif path == "/delete" and method == "DELETE":
            await self._delete_old(request, send)
        elif method in ("GET", "HEAD"):
            await self._serve_path(request, send)
        elif method == "PUT":
            await self._put(request, send)
        else:
            allow = "GET, HEAD, PUT" + (", POST, DELETE" if path in ("/upload",) else "")
            allow += ", DELETE" if path == "/delete" else ""
            raise HttpError(405, "Method Not Allowed", [_h("Allow", allow)])

    @staticmethod
    def _needs(method: str, path: str) -> Scope | None:
        """The scope a request needs before its names are known (None: open)."""
        if path == "/-/healthz":
            return None
        if method == "DELETE" and path in ("/upload", "/delete"):
            return Scope.ADMIN
        return Scope.WRITE if method in WRITE_METHODS else Scope.READ

    def _authorize(self, request: Request, need: Scope | None, *names: str) -> None:
        if need is not None:
            self.auth.check(request.headers.get("authorization", ""), need, list(names))

    # -- uploads ---------------------------------------------------------------

    @asynccontextmanager
    async def _upload(self) -> AsyncIterator[Upload | RemoteUpload]:
        """An upload that is aborted (its worker freed) if the request fails."""
        upload = self.repo.upload()
        try:
            yield upload
        except BaseException:
            with trio.CancelScope(shield=True):
                await upload.abort()
            raise

    async def _ingest(self, body: AsyncIterator[bytes]) -> StoredManifest:
        async with self._upload() as upload:
            async for data in body:
                await upload.write(data)
            return await self._finish(upload)

    async def _finish(self, upload: Upload | RemoteUpload) -> StoredManifest:
        manifest = await upload.finish()
        self.repo.counters.add_upload(upload.stats)
        return await trio.to_thread.run_sync(StoredManifest.of, manifest)

    async def _publish(self, items: list[tuple[str, StoredManifest]]) -> float:
        try:
            return await trio.to_thread.run_sync(self.repo.catalog.publish, items)
        except Conflict as exc:
            raise HttpError(409, f"Conflict: {exc}") from exc

    async def _upload_form(self, request: Request, send: Any) -> None:
        query_path = request.arg("path")
        if query_path is not None:
            # refuse early: nothing is read or stored
            self._authorize(request, Scope.WRITE, clean_path(query_path))
        async with self._upload() as upload:
            form = await read_form(
                request.headers.get("content-type", ""), request.body(), upload.write
            )
            if not form.has_file:
                raise HttpError(400, "missing form field 'file' (curl -F file=@FILE)")
            raw_path = form.fields.get("path", query_path)
            if raw_path is None:
                raise HttpError(400, "missing form field 'path' (curl -F path=NAME)")
            path = clean_path(raw_path)
            self._authorize(request, Scope.WRITE, path)  # a 403 here discards the upload
            stored = await self._finish(upload)
        if form.fields.get("targz") or request.arg("targz"):
            members = await trio.to_thread.run_sync(extract_targz, self.repo, stored.manifest, path)
            self._authorize(request, Scope.WRITE, *(name for name, _ in members))
            await self._publish(members)
        else:
            await self._publish([(path, stored)])
        await send_html(send, 201, f"File has been uploaded to {raw_path} 🚀\n")

    async def _put(self, request: Request, send: Any) -> None:
        path = clean_path(request.path)
        self._authorize(request, Scope.WRITE, path)
        stored = await self._ingest(request.body())
        mtime = await self._publish([(path, stored)])
        await send_json(
            send,
            201,
            {
                "path": path,
                "size": stored.manifest.size,
                "etag": f'"{stored.manifest.etag}"',
                "last_modified": conditional.http_date(mtime),
            },
            [_h("ETag", f'"{stored.manifest.etag}"'), _h("Location", "/" + quote(path))],
        )

    # -- deletes ---------------------------------------------------------------

    async def _form_values(self, request: Request) -> dict[str, str]:
        """Values from the query string and a multipart or urlencoded body (body first)."""
        values = {k: v[0] for k, v in request.query.items()}
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):

            async def ignore(_: bytes) -> None:
                return None

            form = await read_form(content_type, request.body(), ignore)
            values.update(form.fields)
        elif content_type.startswith("application/x-www-form-urlencoded"):
            body = (await request.small_body()).decode("utf-8", "replace")
            values.update({k: v[0] for k, v in parse_qs(body).items()})
        return values

    async def _delete_upload(self, request: Request, send: Any) -> None:
        values = await self._form_values(request)
        raw_path = values.get("path", "")
        path = clean_path(raw_path)
        self._authorize(request, Scope.ADMIN, path)
        removed = await trio.to_thread.run_sync(self.repo.catalog.delete_tree, path)
        if not removed:
            raise HttpError(404, "Could not find your file")
        await send_html(send, 202, f"File {raw_path} has been deleted 💇")

    async def _delete_old(self, request: Request, send: Any) -> None:
        values = await self._form_values(request)
        days = parse_days(values.get("days", ""))  # before anything is looked at
        flag = values.get("recursive", "") or "false"
        if flag not in (
            "true",
            "True",
            "TRUE",
            "t",
            "T",
            "1",
            "false",
            "False",
            "FALSE",
            "f",
            "F",
            "0",
        ):
            raise HttpError(
                400,
                "DENIED: check if your formvalue recursive should be any of this ('true', "
                "'True', 'false','False','TRUE','FALSE','f','t','F','T', '') ",
            )
        recursive = flag in ("true", "True", "TRUE", "t", "T", "1")
        directory = clean_path(values.get("path", ""), for_write=False)
        self._authorize(request, Scope.ADMIN, directory + "/" if directory else "")
        catalog = self.repo.catalog
        if directory and not catalog.is_directory(directory) and catalog.get(directory) is None:
            raise HttpError(404, "Not Found")
        cutoff = time.time() - days * 86400
        old = [
            (name, is_dir)
            for name, is_dir, mtime in catalog.children(directory)
            if mtime < cutoff and (recursive or not is_dir)
        ]
        if not old:
            await send_html(
                send, 202, f"There are NO Old Files more than {days} days to be deleted 💇"
            )
            return
        prefix = directory + "/" if directory else ""

        def remove() -> None:
            for name, _ in old:
                catalog.delete_tree(prefix + name)

        await trio.to_thread.run_sync(remove)
        what = "Old Files/child directories" if recursive else "Old Files"
        await send_html(send, 202, f"{what} more than {days} days has been deleted 💇")

    # -- reads -----------------------------------------------------------------

    async def _serve_path(self, request: Request, send: Any) -> None:
        head = request.method == "HEAD"
        path = clean_path(request.path, for_write=False)
        catalog = self.repo.catalog
        wants_dir = request.path.endswith("/")
        self._authorize(request, Scope.READ, f"{path}/index.html" if wants_dir and path else path)
        ref = (
            catalog.get(path + "/index.html" if wants_dir and path else "index.html")
            if wants_dir
            else catalog.get(path)
        )
        if ref is None and not wants_dir and path and catalog.is_directory(path):
            location = quote("/" + path + "/")
            await _send_simple(
                send, 301, b"", "text/html; charset=UTF-8", [_h("Location", location)], head
            )
            return
        if ref is None:
            await self._not_found(request, send, "Not Found")
            return
        content_type = mimetypes.guess_type(ref.name)[0] or "application/octet-stream"
        self.repo.access.touch("object", ref.name)
        await self._send_object(request, send, ref, content_type, [])

    async def _not_found(self, request: Request, send: Any, message: str) -> None:
        """404: a JSON message for GET, an empty body for HEAD (as the old server did)."""
        self.repo.counters.not_found += 1
        if request.method != "HEAD":
            raise HttpError(404, message)
        await _send_simple(send, 404, b"", "application/json", head=True)

    async def _send_object(
        self, request: Request, send: Any, ref: Ref, content_type: str, extra: Headers
    ) -> None:
        """A stored object with honest HTTP: validators, conditionals, Range, zstd."""
        headers = request.headers
        head = request.method == "HEAD"
        size = ref.size
        zstd = conditional.accepts_zstd(headers) and "range" not in headers
        etag = f'"{ref.etag}.zst"' if zstd else f'"{ref.etag}"'
        common = [
            _h("Last-Modified", conditional.http_date(ref.mtime)),
            _h("ETag", etag),
            _h("Accept-Ranges", "bytes"),
            _h("Vary", "Accept-Encoding"),
            *extra,
        ]
        status = conditional.precondition(headers, etag, ref.mtime)
        if status is not None:
            await send({"type": "http.response.start", "status": status, "headers": common})
            await send({"type": "http.response.body", "body": b""})
            return
        try:
            span = conditional.byte_range(headers, size, etag, ref.mtime)
        except conditional.Unsatisfiable:
            await _send_simple(
                send,
                416,
                b"",
                content_type,
                [*common, _h("Content-Range", f"bytes */{size}")],
                head,
            )
            return
        common.append(_h("Content-Type", content_type))
        if zstd:
            status = 200
            common.append(_h("Content-Encoding", "zstd"))
            job = Job(ref.manifest_id, ref.digest, size, zstd=True)
        else:
            start, end = span or (0, size)
            status = 206 if span else 200
            if span:
                common.append(_h("Content-Range", f"bytes {start}-{end - 1}/{size}"))
            common.append(_h("Content-Length", end - start))
            job = Job(ref.manifest_id, ref.digest, size, start, end)
        if head:
            await send({"type": "http.response.start", "status": status, "headers": common})
            await send({"type": "http.response.body", "body": b""})
            return
        self.repo.counters.downloads += 1
        try:
            manifest = await trio.to_thread.run_sync(self.repo.catalog.manifest, ref.manifest_id)
        except KeyError:  # collected between the lookup and now: it is gone
            await self._not_found(request, send, "Not Found")
            return
        # GC keeps the manifest's chunks until the response ends, in whatever process
        # the job runs
        body = self.repo.pins.hold(manifest, self.repo.restores.stream(job))
        await self._stream(send, status, common, body, ref)

    async def _stream(
        self,
        send: Any,
        status: int,
        headers: Headers,
        body: AsyncIterator[bytes | bytearray],
        ref: Ref,
    ) -> None:
        # The restore job runs ahead of the client by its socket's buffer (cachesrv.restore).
        async with aclosing(body):  # type: ignore[type-var]
            # The first piece comes before the status line: a broken object is a clean 500.
            try:
                first = await anext(body, b"")
            except ChunkError as exc:
                self._corrupt(ref, exc)
                raise HttpError(500, f"stored object {ref.name!r} is damaged: {exc}") from exc
            await send({"type": "http.response.start", "status": status, "headers": headers})
            try:
                await send({"type": "http.response.body", "body": first, "more_body": True})
                async for data in body:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
            except ChunkError as exc:
                # Headers are gone: abort the connection so the client sees a failed transfer.
                self._corrupt(ref, exc)
                raise
        await send({"type": "http.response.body", "body": b""})

    def _corrupt(self, ref: Ref, exc: ChunkError) -> None:
        self.repo.counters.corrupt_chunks += 1
        log.error("serving %r: %s", ref.name, exc)

    # -- keyed caches ----------------------------------------------------------

    async def _cache_entry(self, request: Request, send: Any, raw_key: str) -> None:
        key = clean_key(raw_key)
        catalog = self.repo.catalog
        method = request.method
        if method in ("GET", "HEAD"):
            restore_keys = [
                k.strip()
                for value in request.args("restore-keys")
                for k in value.replace("\n", ",").split(",")
                if k.strip()
            ]
            self._authorize(request, Scope.READ, key, *restore_keys)
            exact = request.arg("exact") in ("1", "true", "True")
            ref = catalog.find_entry(key, restore_keys, exact=exact)
            if ref is None:
                await self._not_found(request, send, f"no cache entry matches {key!r}")
                return
            extra = [
                _h("Cachesrv-Key", quote(ref.name, safe="/:@,+=")),
                _h("Cachesrv-Match", "exact" if ref.name == key else "partial"),
                _h("Cachesrv-Age", max(0, math.floor(time.time() - ref.mtime))),
            ]
            self.repo.access.touch("entry", ref.name)
            await self._send_object(request, send, ref, "application/x-tar", extra)
        elif method in ("PUT", "POST"):
            self._authorize(request, Scope.WRITE, key)
            replace = request.arg("replace") in ("1", "true", "True")
            max_age_arg = request.arg("max-age")
            try:
                max_age = float(max_age_arg) if max_age_arg is not None else None
            except ValueError as exc:
                raise HttpError(400, "max-age must be a number of seconds") from exc
            existing = catalog.find_entry(key, exact=True)
            if (
                existing
                and not replace
                and (max_age is None or time.time() - existing.mtime <= max_age)
            ):
                raise HttpError(409, f"cache entry {key!r} exists (ask ?replace=true or ?max-age=)")
            stored = await self._ingest(request.body())
            try:
                await trio.to_thread.run_sync(
                    lambda: catalog.save_entry(key, stored, replace=replace, max_age=max_age)
                )
            except EntryExists as exc:
                raise HttpError(409, f"cache entry {key!r} exists") from exc
            await send_json(
                send,
                201,
                {"key": key, "size": stored.manifest.size, "etag": f'"{stored.manifest.etag}"'},
            )
        elif method == "DELETE":
            self._authorize(request, Scope.WRITE, key)
            if not await trio.to_thread.run_sync(catalog.delete_entry, key):
                raise HttpError(404, f"no cache entry {key!r}")
            await send_json(send, 202, {"deleted": key})
        else:
            raise HttpError(405, "Method Not Allowed", [_h("Allow", "GET, HEAD, PUT, DELETE")])

    # -- the server's own pages ------------------------------------------------

    async def _own_endpoint(self, request: Request, send: Any) -> None:
        if request.method == "PUT":
            clean_path(request.path)  # refused: -/ is reserved
        if request.method not in ("GET", "HEAD"):
            raise HttpError(405, "Method Not Allowed", [_h("Allow", "GET, HEAD")])
        path = request.path
        if path == "/-/healthz":
            self.repo.catalog.ping()
            await send_json(send, 200, {"status": "ok"})
        elif path == "/-/metrics":
            body = await trio.to_thread.run_sync(self.metrics.render)
            await _send_simple(send, 200, body, metrics.CONTENT_TYPE)
        elif path == "/-/stats":
            objects = request.arg("objects") in ("1", "true")  # per-object: a full mark
            if objects:  # every name in the store: a token limited to a prefix may not
                self._authorize(request, Scope.READ, "")
            stats = await trio.to_thread.run_sync(lambda: self.repo.stats(objects=objects))
            await send_json(send, 200, stats)
        elif path in ("/-/", "/-"):
            stats = await trio.to_thread.run_sync(self.repo.stats)
            rows = "".join(
                f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v))}</td></tr>"
                for k, v in stats.items()
            )
            await send_html(
                send,
                200,
                f"<!doctype html><title>cachesrv</title><h1>cachesrv</h1><table>{rows}</table>\n",
            )
        else:
            raise HttpError(404, "Not Found")
