"""Streaming multipart/form-data: field values collected, the ``file`` part streamed.

python-multipart is a push parser with synchronous callbacks; the callbacks
only record what arrived, and the bytes of the ``file`` part are then passed
to an async sink after each ``write`` so the body is never held whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from cachesrv.http.errors import HttpError

FIELD_LIMIT = 64 * 1024  # a non-file field larger than this is refused
FILE_FIELD = "file"


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    has_file: bool = False
    file_before: set[str] = field(default_factory=set)  # fields that arrived before the file


def boundary_of(content_type: str) -> bytes:
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise HttpError(400, "expected a multipart/form-data body with fields 'path' and 'file'")
    return params[b"boundary"]


async def read_form(
    content_type: str,
    body: AsyncIterator[bytes],
    on_file_data: Callable[[bytes], Awaitable[None]],
) -> Form:
    """Parse the whole form, streaming the first ``file`` part to ``on_file_data``."""
    form = Form()
    header_name, header_value = bytearray(), bytearray()
    part_headers: dict[bytes, bytes] = {}
    chunks: list[bytes] = []  # file bytes seen during one parser.write
    value = bytearray()
    current: list[str | None] = [None]  # name of the part being read ("" for a 2nd file)
    finished = [False]

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        part_headers[bytes(header_name).lower()] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, params = parse_options_header(part_headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        part_headers.clear()
        if name == FILE_FIELD:
            if form.has_file:
                current[0] = ""  # only the first file part counts, as with the old server
                return
            form.has_file = True
            form.file_before = set(form.fields)
        value.clear()
        current[0] = name

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if current[0] == FILE_FIELD:
            chunks.append(data[start:end])
        elif current[0]:
            value.extend(data[start:end])
            if len(value) > FIELD_LIMIT:
                raise HttpError(
                    400, f"form field {current[0]!r} is larger than {FIELD_LIMIT} bytes"
                )

    def on_part_end() -> None:
        name = current[0]
        if name and name != FILE_FIELD:
            form.fields.setdefault(name, value.decode("utf-8", "replace"))
        current[0] = None

    def on_end() -> None:
        finished[0] = True

    parser = MultipartParser(
        boundary_of(content_type),
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_end": on_end,
        },
    )
    async for data in body:
        try:
            parser.write(data)
        except MultipartParseError as exc:
            raise HttpError(400, f"malformed multipart body: {exc}") from exc
        if chunks:
            joined = b"".join(chunks) if len(chunks) > 1 else chunks[0]
            chunks.clear()
            await on_file_data(joined)
    if not finished[0]:
        raise HttpError(400, "truncated multipart body: the closing boundary never arrived")
    return form
