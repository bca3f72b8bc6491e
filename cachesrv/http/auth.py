"""Who may read and write what: the legacy ``user:pass`` and a tokens file.

A tokens file holds one token a line, ``TOKEN SCOPE [PREFIX]``, ``#`` comments::

    # team A's pipelines: their own caches only
    4f1c...e2  write  team-a/
    9b07...1d  read
    c3d8...aa  admin

``read`` reads; ``write`` reads and writes; ``admin`` also deletes trees
(``DELETE /upload``, ``DELETE /delete``) and reaches maintenance endpoints. A
PREFIX (compared without a leading ``/``) limits a token of any scope to object
paths and cache keys that start with it; end it with ``/`` to mean a directory.

A token arrives as ``Authorization: Bearer TOKEN`` or as the password of Basic
auth (any user name), so ``curl -u ci:TOKEN`` works. The old ``user:pass`` means
what it meant: every write everywhere, deletes included (an unprefixed admin).

The file is re-read when what its path resolves to changes (inode, size,
mtime), which also catches a Kubernetes Secret volume swapping its ``..data``
symlink. A file that fails to parse or vanishes keeps the tokens in force and
is logged. Tokens and passwords are compared in constant time and never logged:
errors name line numbers only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from cachesrv.http.errors import HttpError

log = logging.getLogger("cachesrv.auth")


class Scope(IntEnum):
    """What a request needs; a credential of a higher scope may do it too."""

    READ = 1
    WRITE = 2
    ADMIN = 3


_SCOPES = {"read": Scope.READ, "write": Scope.WRITE, "admin": Scope.ADMIN}
CHALLENGE = [(b"WWW-Authenticate", b'basic realm="Restricted"')]


class TokensFileError(ValueError):
    """A tokens file that cannot be used; the message names lines, never tokens."""


@dataclass(frozen=True)
class Grant:
    """What one credential may do."""

    scope: Scope
    prefix: str = ""  # "" : everywhere
    label: str = ""  # for logs: "credentials" or "token at line N", never the secret

    def covers(self, name: str) -> bool:
        return name.startswith(self.prefix)


LEGACY = Grant(Scope.ADMIN, "", "credentials")


def _digest(secret: str) -> bytes:
    # Tokens are compared as fixed-size digests, so a comparison's time says nothing
    # about how much of a guess was right, nor about a token's length.
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def parse_tokens(text: str) -> list[tuple[bytes, Grant]]:
    """The (token digest, grant) pairs of a tokens file's text."""
    grants: list[tuple[bytes, Grant]] = []
    seen: dict[bytes, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) not in (2, 3):
            raise TokensFileError(f"line {number}: expected 'TOKEN SCOPE [PREFIX]'")
        token, scope_name = fields[0], fields[1].lower()
        if scope_name not in _SCOPES:
            raise TokensFileError(f"line {number}: scope must be read, write or admin")
        prefix = fields[2].lstrip("/") if len(fields) == 3 else ""
        digest = _digest(token)
        if digest in seen:
            raise TokensFileError(f"line {number}: the token of line {seen[digest]} again")
        seen[digest] = number
        grants.append((digest, Grant(_SCOPES[scope_name], prefix, f"token at line {number}")))
    return grants


class TokensFile:
    """The tokens of a file, re-read when the file it resolves to changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._grants: list[tuple[bytes, Grant]] = []
        self._version: tuple[int, int, int, int] | None = None
        try:
            self._load(os.stat(path))
        except OSError as exc:
            raise TokensFileError(f"cannot read tokens file {path}: {exc.strerror}") from exc
        except TokensFileError as exc:
            raise TokensFileError(f"tokens file {path}: {exc}") from exc

    def _load(self, st: os.stat_result) -> None:
        with open(self.path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
        self._grants = parse_tokens(text)
        self._version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        log.info("tokens file %s: %d token(s)", self.path, len(self._grants))

    def refresh(self) -> None:
        """Re-read the file if it changed (one stat per call)."""
        try:
            st = os.stat(self.path)  # follows the symlinks: a swapped ..data is a new inode
        except OSError as exc:
            if self._version is not None:
                log.error("tokens file %s: %s; the last tokens stay in force", self.path, exc)
                self._version = None
            return
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == self._version:
            return
        try:
            self._load(st)
        except (OSError, TokensFileError) as exc:
            self._version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            log.error("tokens file %s: %s; the last tokens stay in force", self.path, exc)

    def find(self, token: str) -> Grant | None:
        digest = _digest(token)
        found: Grant | None = None
        for candidate, grant in self._grants:  # every entry compared: no early exit
            if hmac.compare_digest(candidate, digest):
                found = grant
        return found


class Authorizer:
    """Turns a request's ``Authorization`` header into a decision, or an HttpError.

    Without credentials and tokens configured, everything is open (the old
    server's default); otherwise writes need a credential, and reads do with
    ``read_auth``."""

    def __init__(
        self,
        credentials: tuple[str, str] | None = None,
        tokens: TokensFile | None = None,
        read_auth: bool = False,
    ) -> None:
        if read_auth and credentials is None and tokens is None:
            raise TokensFileError("--read-auth needs --tokens or --credentials")
        self.credentials = credentials
        self.tokens = tokens
        self.read_auth = read_auth

    @property
    def enabled(self) -> bool:
        return self.credentials is not None or self.tokens is not None

    def identify(self, authorization: str) -> Grant | None:
        """The grant of the credential in an ``Authorization`` value; None when there is
        none; 401 when one is sent and does not match."""
        if not authorization:
            return None
        scheme, _, value = authorization.strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer":
            grant = self.tokens.find(value) if self.tokens is not None else None
        elif scheme == "basic":
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                decoded = ""
            user, _, password = decoded.partition(":")
            grant = None
            if self.credentials is not None:
                good_user = hmac.compare_digest(user.encode(), self.credentials[0].encode())
                good_password = hmac.compare_digest(password.encode(), self.credentials[1].encode())
                if good_user and good_password:
                    grant = LEGACY
            if grant is None and self.tokens is not None:
                grant = self.tokens.find(password)
        else:
            grant = None
        if grant is None:
            raise HttpError(401, "Unauthorized", list(CHALLENGE))
        return grant

    def check(self, authorization: str, need: Scope, names: list[str] | None = None) -> None:
        """Allow a request that needs ``need`` on every one of ``names`` (None: a request
        that names nothing yet, or aggregate numbers), or raise 401/403."""
        if not self.enabled or (need is Scope.READ and not self.read_auth):
            return
        if self.tokens is not None:
            self.tokens.refresh()
        grant = self.identify(authorization)
        if grant is None:
            raise HttpError(401, "Unauthorized", list(CHALLENGE))
        if grant.scope < need:
            what = {Scope.READ: "read", Scope.WRITE: "write", Scope.ADMIN: "admin"}[need]
            raise HttpError(403, f"Forbidden: this token's scope does not include {what}")
        for name in names or ():
            if not grant.covers(name):
                raise HttpError(
                    403, f"Forbidden: {name!r} is outside this token's prefix {grant.prefix!r}"
                )
