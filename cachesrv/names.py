"""Stored paths and cache keys: cleaned once, here, before anything touches storage."""

from __future__ import annotations

import re


class InvalidName(ValueError):
    """A path or key that is refused; ``escapes``: it climbs out of the store root."""

    def __init__(self, message: str, escapes: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.escapes = escapes


TRAVERSAL = "DENIED: You should not upload outside the upload directory."
_KEY = re.compile(r"[A-Za-z0-9._+=:@,/-]{1,512}")


def clean_path(raw: str, *, for_write: bool = True) -> str:
    """Resolve ``raw`` lexically (like Go's filepath.Clean under the store root).

    ``a/../b`` is ``b``, as with the old server; anything that climbs out of the
    root is refused (``escapes``: a 403); a leading ``/`` is accepted. The result
    has no empty, ``.`` or ``..`` segments; ``""`` is the root.
    """
    if "\x00" in raw or "\\" in raw:
        raise InvalidName("path must not contain NUL or backslash")
    if "\ufffd" in raw:  # what a decoder left of bytes that are not UTF-8
        raise InvalidName("path is not valid UTF-8")
    parts: list[str] = []
    for segment in raw.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not parts:
                raise InvalidName(TRAVERSAL, escapes=True)
            parts.pop()
        else:
            parts.append(segment)
    path = "/".join(parts)
    if for_write:
        if not path:
            raise InvalidName("path is empty: name the object to store or delete")
        if parts[0] == "-":
            raise InvalidName("paths under -/ are reserved for the server's own endpoints")
    return path


def clean_key(raw: str) -> str:
    if not _KEY.fullmatch(raw) or ".." in raw.split("/"):
        raise InvalidName(
            "cache key must be 1-512 characters of A-Z a-z 0-9 . _ + = : @ , / - without '..'"
        )
    return raw
