"""HTTP errors: raised anywhere below the app, turned into responses in one place."""

from __future__ import annotations


class HttpError(Exception):
    """A response with a JSON ``{"message": ...}`` body (the old server's error shape)."""

    def __init__(
        self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


class ClientGone(Exception):
    """The client disconnected before the request body was complete."""
