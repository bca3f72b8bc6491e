"""Legacy paths (LEGACY-API.md is the contract): uploads, the old delete rules, reads."""

from __future__ import annotations

import mimetypes
from typing import Any
from urllib.parse import parse_qs, quote

from cachesrv.http import conditional
from cachesrv.http.auth import Scope
from cachesrv.http.download import not_found, send_object
from cachesrv.http.errors import HttpError
from cachesrv.http.forms import read_form
from cachesrv.http.limits import parse_days
from cachesrv.http.request import Request
from cachesrv.http.responses import header as _h
from cachesrv.http.responses import send_html, send_json, send_simple
from cachesrv.names import clean_path
from cachesrv.service import CacheService

mimetypes.add_type("application/x-tar", ".tar")
mimetypes.add_type("application/zstd", ".zst")

_TRUE = ("true", "True", "TRUE", "t", "T", "1")
_FALSE = ("false", "False", "FALSE", "f", "F", "0")


# -- uploads -----------------------------------------------------------------------


async def upload_form(service: CacheService, request: Request, send: Any) -> None:
    """``POST /upload``: multipart ``path``, ``file`` [, ``targz``]."""
    query_path = request.arg("path")
    if query_path is not None:  # refuse early: nothing is read or stored
        request.require(Scope.WRITE, clean_path(query_path))
    async with service.upload() as upload:
        form = await read_form(
            request.headers.get("content-type", ""), request.body(), upload.write
        )
        if not form.has_file:
            raise HttpError(400, "missing form field 'file' (curl -F file=@FILE)")
        raw_path = form.fields.get("path", query_path)
        if raw_path is None:
            raise HttpError(400, "missing form field 'path' (curl -F path=NAME)")
        path = clean_path(raw_path)
        # a 403 here discards the upload; targz members all lie below path
        request.require(Scope.WRITE, path)
        stored = await service.finish(upload)
    if form.fields.get("targz") or request.arg("targz"):
        await service.publish_archive(path, stored)
    else:
        await service.publish([(path, stored)])
    await send_html(send, 201, f"File has been uploaded to {raw_path} 🚀\n")


async def put(service: CacheService, request: Request, send: Any) -> None:
    """``PUT /<path>``: the raw body (the modern upload)."""
    path = clean_path(request.path)
    request.require(Scope.WRITE, path)
    stored, mtime = await service.put_object(path, request.body())
    await send_json(
        send,
        201,
        {
            "path": path,
            "size": stored.size,
            "etag": f'"{stored.etag}"',
            "last_modified": conditional.http_date(mtime),
        },
        [_h("ETag", f'"{stored.etag}"'), _h("Location", "/" + quote(path))],
    )


# -- deletes -----------------------------------------------------------------------


async def _form_values(request: Request) -> dict[str, str]:
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


async def delete_upload(service: CacheService, request: Request, send: Any) -> None:
    """``DELETE /upload?path=P``: the object or directory, recursively."""
    values = await _form_values(request)
    raw_path = values.get("path", "")
    path = clean_path(raw_path)
    request.require(Scope.ADMIN, path)
    if not await service.delete_tree(path):
        raise HttpError(404, "Could not find your file")
    await send_html(send, 202, f"File {raw_path} has been deleted 💇")


async def delete_old(service: CacheService, request: Request, send: Any) -> None:
    """``DELETE /delete?path=D&days=N&recursive=B``: old direct children of ``D``."""
    values = await _form_values(request)
    days = parse_days(values.get("days", ""))  # before anything is looked at
    flag = values.get("recursive", "") or "false"
    if flag not in _TRUE + _FALSE:
        raise HttpError(
            400,
            "DENIED: check if your formvalue recursive should be any of this ('true', "
            "'True', 'false','False','TRUE','FALSE','f','t','F','T', '') ",
        )
    recursive = flag in _TRUE
    directory = clean_path(values.get("path", ""), for_write=False)
    request.require(Scope.ADMIN, directory + "/" if directory else "")
    if not await service.delete_older_than(directory, days, recursive):
        await send_html(send, 202, f"There are NO Old Files more than {days} days to be deleted 💇")
        return
    what = "Old Files/child directories" if recursive else "Old Files"
    await send_html(send, 202, f"{what} more than {days} days has been deleted 💇")


# -- reads -------------------------------------------------------------------------


async def serve_path(service: CacheService, request: Request, send: Any) -> None:
    """``GET``/``HEAD /<path>``; ``/dir`` -> 301 ``/dir/``; ``/dir/`` -> ``dir/index.html``."""
    head = request.method == "HEAD"
    path = clean_path(request.path, for_write=False)
    wants_dir = request.path.endswith("/")
    request.require(Scope.READ, f"{path}/index.html" if wants_dir and path else path)
    if wants_dir:
        ref = await service.find_object(path + "/index.html" if path else "index.html")
    else:
        ref = await service.find_object(path)
    if ref is None and not wants_dir and path and await service.is_directory(path):
        location = quote("/" + path + "/")
        await send_simple(
            send, 301, b"", "text/html; charset=UTF-8", [_h("Location", location)], head
        )
        return
    if ref is None:
        await not_found(service, request, send, "Not Found")
        return
    content_type = mimetypes.guess_type(ref.name)[0] or "application/octet-stream"
    await send_object(service, request, send, ref, content_type, [])
