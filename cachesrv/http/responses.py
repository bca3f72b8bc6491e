"""Small whole responses: a status, headers and a body in one go."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

Headers = Sequence[tuple[bytes, bytes]]


def header(name: str, value: str | int) -> tuple[bytes, bytes]:
    # Names keep their canonical case on the wire: scripts grep "Last-Modified" with sed.
    return name.encode("latin-1"), str(value).encode("latin-1")


async def send_simple(
    send: Any,
    status: int,
    body: bytes,
    content_type: str,
    headers: Headers = (),
    head: bool = False,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                header("Content-Type", content_type),
                header("Content-Length", len(body)),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})


async def send_json(send: Any, status: int, payload: object, headers: Headers = ()) -> None:
    body = (json.dumps(payload) + "\n").encode()
    await send_simple(send, status, body, "application/json", headers)


async def send_html(send: Any, status: int, text: str, headers: Headers = ()) -> None:
    await send_simple(send, status, text.encode(), "text/html; charset=UTF-8", headers)
