"""The S3 catalog: names -> manifests in the bucket every replica shares.

Layout under the catalog's prefix (``<prefix>/catalog/``)::

    manifests/<id hex>          a manifest as encoded (named by its id: written once)
    objects/<quoted path>       a legacy path's ref: JSON {m, s, d, t, a}
    entries/<quoted key>        a cache entry's ref, the same
    doomed/<id hex>/<since ms>  a manifest no name referred to, since then (GC's grace)
    locks/tree                  the tree lock: serialises publishes of legacy paths
    serving/<replica>           manifests a replica is serving, until when (announce)
    history/<replica>           a replica's status-page history points (zstd JSON)

Names are percent-quoted whole (``a/b`` -> ``a%2Fb``), so a path and the paths below it
never clash as keys, and a key prefix still lists a subtree.

Every ref switch is a conditional write: ``If-None-Match: *`` for a new name, ``If-Match``
with the ETag read for an existing one, and a lost race (412) is read again and retried;
two replicas never lose an update or mix versions. A keyed save decides "kept or
replaced" on what it read and writes on that condition, so of two racing saves one
wins and the other gets :class:`EntryExists`.

The rules that span several names (a path is a file or a directory, never both;
a multi-name publish is all or nothing) hold under ``locks/tree``: an object taken with
``If-None-Match: *`` that names its holder and expiry. The holder checks the tree, then
writes the items it is about to publish into the lock (the journal), then the refs,
then deletes the lock. A holder that dies leaves the lock to lapse after
:data:`LOCK_TTL`; whoever takes it over first writes the journal's refs, so a publish
that was checked is completed, never half-visible for longer than that.

With ``--data``, a replica remembers there (:class:`RememberedRefs`) the last ref it
read of each name and that version's manifest body. When the bucket does not answer, a
lookup of a name it served answers that ref if the hot cache holds every byte of the
version (``held``), so GET and HEAD of it go on (as identity: such a ref is
``remembered``, and a zstd body would need the chunks); any other lookup fails as the
bucket did (503: whether the name exists cannot be known). Writes always need the
bucket.

Read times (``touch``) are written into the refs by batches (the HTTP layer's access
log flushes them), so every replica's reads count for TTL and eviction. Each replica
rewrites its own status-page history object at each point it takes (one writer per
object: no condition needed) and deletes those of replicas gone for longer than the
history is kept; the status page reads all of them, so its counts are every replica's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, unquote

import zstandard

from cachesrv.manifest import Manifest
from cachesrv.store.s3.client import ObjectStore, ObjectStoreUnavailable, PreconditionFailed

from .records import (
    Conflict,
    EntryExists,
    History,
    Ref,
    StoredManifest,
    entry_is_kept,
    stored_manifest,
)
from .remembered import RememberedRefs

LOCK = "locks/tree"
LOCK_TTL = 60.0  # a dead publisher's lock lapses after this
LOCK_WAIT = 30.0  # a publish waits this long for the lock, then 503
RETRIES = 20  # conditional writes that lose a race are retried this often
TOTALS_FOR = 5.0  # seconds totals() and samples() answer from their last reading
HISTORY = "history/"
_PREFIX = {"object": "objects/", "entry": "entries/"}
T = TypeVar("T")
#: whether the hot cache holds every byte of the object with this digest and size
Held = Callable[[bytes, int], bool]


def _key(namespace: str, name: str) -> str:
    return _PREFIX[namespace] + quote(name, safe="")


def _encode(ref: dict[str, Any]) -> bytes:
    return json.dumps(ref, separators=(",", ":")).encode()


def _ref_fields(stored: StoredManifest, mtime: float, atime: float) -> dict[str, Any]:
    return {
        "m": stored.manifest_id.hex(),
        "s": stored.size,
        "d": stored.digest.hex(),
        "t": mtime,
        "a": atime,
    }


def _ref(name: str, fields: dict[str, Any]) -> Ref:
    return Ref(
        name, bytes.fromhex(fields["m"]), fields["s"], bytes.fromhex(fields["d"]), fields["t"]
    )


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


class S3Catalog:
    def __init__(
        self,
        objects: ObjectStore,
        threads: int = 8,
        remembered: RememberedRefs | None = None,
        held: Held | None = None,
    ) -> None:
        self.objects = objects
        self.remembered = remembered
        self.held = held
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="catalog")
        self._refs: dict[str, tuple[str, dict[str, Any]]] = {}  # key -> (etag, fields)
        self._refs_lock = threading.Lock()
        self._own: dict[str, History] = {}  # history key -> points of a replica here
        # the other replicas' points as last read: (when, since, points)
        self._others: tuple[float, float, list[tuple[float, dict[str, float]]]] | None = None
        self._totals: tuple[float, dict[str, int]] | None = None
        self._lock = threading.Lock()

    # -- refs ------------------------------------------------------------------------

    def _read(self, key: str) -> tuple[str, dict[str, Any]] | None:
        """A ref as it is now: (ETag, fields), None if there is none."""
        try:
            body, etag = self.objects.get(key)
        except KeyError:
            with self._refs_lock:
                self._refs.pop(key, None)
            return None
        fields = json.loads(body)
        with self._refs_lock:
            self._refs[key] = (etag, fields)
        return etag, fields

    def _map(self, work: Callable[[str], T], keys: list[str]) -> list[T]:
        return list(self._pool.map(work, keys)) if len(keys) > 1 else [work(k) for k in keys]

    def _listed(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        """Every ref under ``prefix`` as (key, fields): one listing, and a GET only for
        the refs whose ETag changed since this replica last read them."""
        listed = list(self.objects.etags(prefix))
        with self._refs_lock:
            stale = [k for k, etag in listed if self._refs.get(k, ("",))[0] != etag]
        self._map(self._read, stale)  # each read lands in the cache
        result = []
        with self._refs_lock:
            for key, _ in listed:
                cached = self._refs.get(key)
                if cached is not None:
                    result.append((key, cached[1]))
        return result

    def _switch(
        self,
        key: str,
        change: Callable[[dict[str, Any] | None], dict[str, Any] | None],
    ) -> bool:
        """Read a ref, compute its next value (None: leave it), write it on the condition
        that it is still what was read; retried on a lost race. Returns whether written."""
        for _ in range(RETRIES):
            current = self._read(key)
            fields = change(None if current is None else current[1])
            if fields is None:
                return False
            try:
                if current is None:
                    etag = self.objects.put(key, _encode(fields), create=True)
                else:
                    etag = self.objects.put(key, _encode(fields), if_match=current[0])
            except PreconditionFailed:
                continue
            with self._refs_lock:
                self._refs[key] = (etag, fields)
            self._totals = None
            return True
        raise ObjectStoreUnavailable(f"{key}: too many concurrent writers, retry later")

    def _remove(self, key: str, keep: Callable[[dict[str, Any]], bool] | None = None) -> bool:
        """Delete a ref unless ``keep`` says otherwise about what it is now (conditional:
        a ref changed meanwhile is read again)."""
        for _ in range(RETRIES):
            current = self._read(key)
            if current is None or (keep is not None and keep(current[1])):
                return False
            try:
                self.objects.delete(key, if_match=current[0])
            except PreconditionFailed:
                continue
            with self._refs_lock:
                self._refs.pop(key, None)
            self._totals = None
            return True
        raise ObjectStoreUnavailable(f"{key}: too many concurrent writers, retry later")

    # -- manifests -------------------------------------------------------------------

    def manifest(self, manifest_id: bytes) -> Manifest:
        return stored_manifest(manifest_id, self.manifest_body(manifest_id))

    def manifest_body(self, manifest_id: bytes) -> bytes | None:
        """The stored body, read from the bucket each time (GC may have dropped it: a
        restore of a collected version must fail). With the bucket out of reach, the
        one this replica remembers, if any."""
        try:
            body: bytes = self.objects.get(f"manifests/{manifest_id.hex()}")[0]
        except KeyError:
            return None
        except ObjectStoreUnavailable:
            remembered = self.remembered.manifest_body(manifest_id) if self.remembered else None
            if remembered is None:
                raise
            body = remembered
        return body

    def _put_manifest(self, stored: StoredManifest) -> None:
        # written whole each time (same name, same bytes): a publish that revives a
        # doomed manifest puts it back even if a GC drops it meanwhile
        self.objects.put(f"manifests/{stored.manifest_id.hex()}", stored.body)

    # -- objects ---------------------------------------------------------------------

    def publish(
        self, items: Iterable[tuple[str, StoredManifest]], mtime: float | None = None
    ) -> float:
        items = list(items)
        self._forget("object", [path for path, _ in items])
        for stored in {s.manifest_id: s for _, s in items}.values():
            self._put_manifest(stored)
        with _TreeLock(self) as lock:
            paths = {path for path, _ in items}
            for path, _ in items:
                self._check_tree(path, paths)
            now = time.time()
            journal = [
                [_key("object", path), _ref_fields(stored, now if mtime is None else mtime, now)]
                for path, stored in items
            ]
            lock.journal(journal)
            self._apply(journal)
        return now if mtime is None else mtime

    def _apply(self, journal: list[list[Any]]) -> None:
        def write(item: list[Any]) -> None:
            key, fields = item
            self._switch(key, lambda _: fields)

        list(self._pool.map(write, journal))

    def _check_tree(self, path: str, publishing: set[str]) -> None:
        for parent in _ancestors(path):
            if parent in publishing or self.objects.etag(_key("object", parent)) is not None:
                raise Conflict(f"{parent!r} is a file, so {path!r} cannot be stored below it")
        below = path + "/"
        if any(p.startswith(below) for p in publishing) or self.objects.exists_below(
            _key("object", below)
        ):
            raise Conflict(f"{path!r} is a directory")

    def get(self, path: str) -> Ref | None:
        try:
            current = self._read(_key("object", path))
        except ObjectStoreUnavailable as exc:
            return self._remembered_ref("object", path, exc)
        fields = None if current is None else current[1]
        self._remember("object", path, fields)
        return None if fields is None else _ref(path, fields)

    # -- what this replica remembers for when the bucket does not answer -------------

    def _remember(self, namespace: str, name: str, fields: dict[str, Any] | None) -> None:
        memory = self.remembered
        if memory is None:
            return
        if fields is not None:
            manifest_id = bytes.fromhex(fields["m"])
            if not memory.has_manifest(manifest_id):
                body = self.manifest_body(manifest_id)
                if body is None:
                    return  # collected meanwhile: the version is gone
                memory.remember_manifest(manifest_id, body)
        memory.remember(namespace, name, fields)

    def _forget(self, namespace: str, names: list[str]) -> None:
        """Names this replica changes: until read again, none is answered from memory."""
        if self.remembered is not None:
            for name in names:
                self.remembered.remember(namespace, name, None)

    def _remembered_ref(self, namespace: str, name: str, exc: ObjectStoreUnavailable) -> Ref:
        """The bucket did not answer (``exc``): the remembered ref of ``name`` if the
        bytes of its version are all held locally, else ``exc``."""
        memory = self.remembered
        fields = memory.ref(namespace, name) if memory is not None else None
        if memory is None or fields is None or self.held is None:
            raise exc
        ref = _ref(name, fields)
        if not (self.held(ref.digest, ref.size) and memory.has_manifest(ref.manifest_id)):
            raise exc
        return dataclasses.replace(ref, remembered=True)

    def is_directory(self, path: str) -> bool:
        return self.objects.exists_below(_key("object", path + "/" if path else ""))

    def _below(self, path: str) -> list[tuple[str, dict[str, Any]]]:
        prefix = _key("object", path + "/" if path else "")
        return [(unquote(k.removeprefix("objects/")), fields) for k, fields in self._listed(prefix)]

    def children(self, directory: str) -> list[tuple[str, bool, float]]:
        strip = len(directory) + 1 if directory else 0
        found: dict[str, tuple[bool, float]] = {}
        for path, fields in self._below(directory):
            name, sep, _ = path[strip:].partition("/")
            is_dir, newest = found.get(name, (False, 0.0))
            found[name] = (is_dir or bool(sep), max(newest, fields["t"]))
        return [(name, d, t) for name, (d, t) in sorted(found.items())]

    def delete_tree(self, path: str) -> int:
        names = [path] + [p for p, _ in self._below(path)]
        self._forget("object", names)
        return sum(self._map(self._remove, [_key("object", p) for p in names]))

    def delete_paths(self, paths: Iterable[str]) -> int:
        paths = list(paths)
        self._forget("object", paths)
        return sum(self._map(self._remove, [_key("object", p) for p in paths]))

    # -- keyed cache entries -----------------------------------------------------------

    def save_entry(
        self, key: str, stored: StoredManifest, replace: bool = False, max_age: float | None = None
    ) -> float:
        self._forget("entry", [key])
        self._put_manifest(stored)
        now = time.time()

        def change(current: dict[str, Any] | None) -> dict[str, Any]:
            existing = None if current is None else current["t"]
            if entry_is_kept(existing, now, replace, max_age):
                raise EntryExists(key)
            return _ref_fields(stored, now, now)

        self._switch(_key("entry", key), change)
        return now

    def find_entry(
        self, key: str, restore_keys: Iterable[str] = (), exact: bool = False
    ) -> Ref | None:
        try:
            found = self._read(_key("entry", key))
        except ObjectStoreUnavailable as exc:
            return self._remembered_ref("entry", key, exc)
        if found is not None:
            self._remember("entry", key, found[1])
            return _ref(key, found[1])
        if exact:
            self._remember("entry", key, None)
            return None
        for prefix in (key, *restore_keys):
            matches = [
                (fields["t"], unquote(k.removeprefix("entries/")), fields)
                for k, fields in self._listed(_key("entry", prefix))
            ]
            if matches:
                _, name, fields = max(matches, key=lambda m: (m[0], m[1]))
                return _ref(name, fields)
        return None

    def delete_entry(self, key: str) -> bool:
        self._forget("entry", [key])
        return self._remove(_key("entry", key))

    # -- lifecycle -------------------------------------------------------------------

    def _all(self) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
        """(namespace, name, key, fields) of every name."""
        for namespace, prefix in _PREFIX.items():
            for key, fields in self._listed(prefix):
                yield namespace, unquote(key.removeprefix(prefix)), key, fields

    def names(self) -> Iterator[tuple[str, str, bytes]]:
        rows = [(ns, name, bytes.fromhex(f["m"])) for ns, name, _, f in self._all()]
        return iter(rows)

    def touch(self, accessed: dict[tuple[str, str], float]) -> None:
        def one(item: tuple[tuple[str, str], float]) -> None:
            (namespace, name), when = item

            def change(current: dict[str, Any] | None) -> dict[str, Any] | None:
                if current is None or current["a"] >= when:
                    return None  # gone, or read later already: a time only moves forward
                return {**current, "a": when}

            self._switch(_key(namespace, name), change)

        list(self._pool.map(one, accessed.items()))

    def names_by_access(self) -> list[tuple[str, str, bytes, int, float]]:
        rows = [(ns, n, bytes.fromhex(f["m"]), f["s"], f["a"]) for ns, n, _, f in self._all()]
        rows.sort(key=lambda row: row[4])
        return rows

    def remove_if_unchanged(self, names: list[tuple[str, str, bytes, float]]) -> int:
        def one(item: tuple[str, str, bytes, float]) -> bool:
            namespace, name, manifest, atime = item
            return self._remove(
                _key(namespace, name),
                keep=lambda f: f["m"] != manifest.hex() or f["a"] > atime,
            )

        return sum(self._pool.map(one, names))

    def expire(self, cutoff: float) -> int:
        keys = [key for _, _, key, fields in self._all() if fields["a"] < cutoff]
        return sum(self._map(lambda k: self._remove(k, keep=lambda f: f["a"] >= cutoff), keys))

    def _doomed(self) -> dict[bytes, tuple[float, str]]:
        """Doomed manifests: id -> (since, marker key)."""
        result = {}
        for key, _, _ in self.objects.listing("doomed/"):
            manifest, _, since = key.removeprefix("doomed/").partition("/")
            if since.isdigit():
                result[bytes.fromhex(manifest)] = (int(since) / 1000, key)
        return result

    def _stored_manifests(self, after: bytes = b"") -> Iterator[bytes]:
        start = f"manifests/{after.hex()}" if after else ""
        for key, _, _ in self.objects.listing("manifests/", start_after=start):
            yield bytes.fromhex(key.removeprefix("manifests/"))

    def doom_unreferenced(self, now: float) -> None:
        referenced = self.live_manifest_ids()
        doomed = self._doomed()
        for manifest_id in self._stored_manifests():
            if manifest_id not in referenced and manifest_id not in doomed:
                marker = f"doomed/{manifest_id.hex()}/{int(now * 1000):016d}"
                self.objects.put(marker, b"")
        revived = [key for m, (_, key) in doomed.items() if m in referenced]
        self.objects.delete_many(revived)

    def root_manifests(
        self, doomed_before: float, after: bytes = b"", limit: int = 200
    ) -> list[tuple[bytes, bytes, bool]]:
        doomed = self._doomed()
        ids = []
        for manifest_id in self._stored_manifests(after):
            since = doomed.get(manifest_id, (None, ""))[0]
            if since is None or since >= doomed_before:
                ids.append((manifest_id, since is None))
                if len(ids) == limit:
                    break
        bodies = list(self._pool.map(self.manifest_body, [m for m, _ in ids]))
        return [
            (m, body, live) for (m, live), body in zip(ids, bodies, strict=True) if body is not None
        ]

    def drop_doomed(self, doomed_before: float) -> int:
        # a manifest some replica is serving stays, doomed or not: its download goes on
        referenced = self.live_manifest_ids() | self.announced(time.time())
        dropped: dict[bytes, bytes] = {}
        for manifest_id, (since, marker) in self._doomed().items():
            if since >= doomed_before:
                continue
            self.objects.delete(marker)
            if manifest_id in referenced:
                continue
            body = self.manifest_body(manifest_id)
            if body is not None:
                self.objects.delete(f"manifests/{manifest_id.hex()}")
                dropped[manifest_id] = body
        if dropped:  # a publish on another replica may have revived one meanwhile
            for manifest_id in dropped.keys() & self.live_manifest_ids():
                self.objects.put(f"manifests/{manifest_id.hex()}", dropped.pop(manifest_id))
        return len(dropped)

    def announce(self, replica: str, manifest_ids: set[bytes], until: float) -> None:
        key = f"serving/{quote(replica, safe='')}"
        if not manifest_ids:
            self.objects.delete(key)
            return
        body = {"until": until, "manifests": sorted(m.hex() for m in manifest_ids)}
        self.objects.put(key, _encode(body))

    def announced(self, at: float) -> set[bytes]:
        result: set[bytes] = set()
        for key, _, _ in self.objects.listing("serving/"):
            try:
                body = json.loads(self.objects.get(key)[0])
            except (KeyError, ValueError):
                continue
            if float(body.get("until", 0)) >= at:
                result.update(bytes.fromhex(m) for m in body.get("manifests", []))
        return result

    def live_manifest_ids(self) -> set[bytes]:
        return {bytes.fromhex(f["m"]) for _, _, _, f in self._all()}

    # -- numbers and health ------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        cached = self._totals
        if cached is not None and time.monotonic() - cached[0] < TOTALS_FOR:
            return dict(cached[1])
        counts = {"objects": 0, "cache_entries": 0, "logical_bytes": 0}
        for namespace, _, _, fields in self._all():
            counts["objects" if namespace == "object" else "cache_entries"] += 1
            counts["logical_bytes"] += fields["s"]
        self._totals = (time.monotonic(), counts)
        return dict(counts)

    def record_sample(
        self, replica: str, at: float, values: dict[str, float], since: float
    ) -> None:
        key = HISTORY + quote(replica, safe="")
        own = self._own.get(key)
        if own is None:  # a restarted replica of the same name goes on with its points
            own = self._own[key] = History()
            for before, kept in self._history_object(key):
                own.record(replica, before, kept, since)
        own.record(replica, at, values, since)
        body = zstandard.compress(json.dumps(own.samples(since)).encode())
        self.objects.put(key, body)
        gone = [
            other
            for other, _, modified in self.objects.listing(HISTORY)
            if modified < since and other not in self._own
        ]
        if gone:
            self.objects.delete_many(gone)

    def samples(self, since: float) -> list[tuple[float, dict[str, float]]]:
        cached = self._others
        if cached is None or time.monotonic() - cached[0] >= TOTALS_FOR or cached[1] > since:
            others: list[tuple[float, dict[str, float]]] = []
            for key, _, modified in self.objects.listing(HISTORY):
                if key not in self._own and modified >= since:
                    others.extend(self._history_object(key))
            cached = self._others = (time.monotonic(), since, others)
        points = [point for own in list(self._own.values()) for point in own.samples(since)]
        points.extend(point for point in cached[2] if point[0] >= since)
        points.sort(key=lambda point: point[0])
        return points

    def _history_object(self, key: str) -> list[tuple[float, dict[str, float]]]:
        try:
            body, _ = self.objects.get(key)
        except KeyError:  # none yet, or its replica was found gone meanwhile
            return []
        return [(at, values) for at, values in json.loads(zstandard.decompress(body))]

    def ping(self) -> None:
        self.objects.ping()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self.remembered is not None:
            self.remembered.close()


class _TreeLock:
    """``locks/tree`` held for one publish (see the module's docstring)."""

    def __init__(self, catalog: S3Catalog) -> None:
        self._catalog = catalog
        self._objects = catalog.objects
        self._owner = f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"
        self._etag = ""

    def _body(self, journal: list[list[Any]] | None = None) -> bytes:
        return _encode(
            {"owner": self._owner, "expires": time.time() + LOCK_TTL, "journal": journal or []}
        )

    def __enter__(self) -> _TreeLock:
        deadline = time.monotonic() + LOCK_WAIT
        pause = 0.005
        while True:
            try:
                self._etag = self._objects.put(LOCK, self._body(), create=True)
                return self
            except PreconditionFailed:
                pass
            try:
                body, seen = self._objects.get(LOCK)
                held = json.loads(body)
            except KeyError:
                continue  # released meanwhile
            if float(held.get("expires", 0)) < time.time():
                try:  # the holder died: take it over, then finish what it had checked
                    self._etag = self._objects.put(LOCK, self._body(), if_match=seen)
                except PreconditionFailed:
                    continue
                self._catalog._apply(held.get("journal") or [])
                return self
            if time.monotonic() > deadline:
                raise ObjectStoreUnavailable("the catalog's tree lock is busy; retry later")
            time.sleep(pause)  # another replica is publishing: back off
            pause = min(pause * 2, 0.2)

    def journal(self, items: list[list[Any]]) -> None:
        self._etag = self._objects.put(LOCK, self._body(items), if_match=self._etag)

    def __exit__(self, *exc: object) -> None:
        try:
            self._objects.delete(LOCK, if_match=self._etag)
        except PreconditionFailed:
            pass  # it lapsed and was taken over: the taker finished our journal


if TYPE_CHECKING:  # mypy checks the backend against the interface it claims
    from . import CatalogBackend

    _conforms: CatalogBackend = S3Catalog(ObjectStore.__new__(ObjectStore))
