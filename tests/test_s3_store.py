"""The S3 object store under cachesrv: a real SeaweedFS, started by the suite."""

from __future__ import annotations

from typing import Any

import pytest

from cachesrv.store.s3.client import (
    ConditionalWritesUnsupported,
    ObjectStore,
    PreconditionFailed,
    StoreUrl,
)


def test_a_store_url_names_bucket_and_prefix() -> None:
    assert StoreUrl.parse("s3://bucket/a/b/") == StoreUrl("bucket", "a/b/")
    assert StoreUrl.parse("s3://bucket") == StoreUrl("bucket", "")
    with pytest.raises(ValueError):
        StoreUrl.parse("/var/cache")


def test_seaweedfs_honours_conditional_writes(s3_url: str) -> None:
    store = ObjectStore(StoreUrl.parse(s3_url), timeout=10)
    store.check_conditional_writes()
    etag = store.put("ref", b"one", create=True)
    with pytest.raises(PreconditionFailed):
        store.put("ref", b"two", create=True)
    with pytest.raises(PreconditionFailed):
        store.put("ref", b"two", if_match='"0"')
    store.put("ref", b"three", if_match=etag)
    assert store.get("ref")[0] == b"three"
    assert store.get_range("ref", 1, 3) == b"hr"
    assert [k for k, _, _ in store.listing()] == ["ref"]  # the probe left nothing behind


class _IgnoresConditions:
    """A client for a store that accepts every PUT, conditional or not (as some
    S3-compatible stores do)."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def put_object(self, **kwargs: Any) -> Any:
        kwargs.pop("IfNoneMatch", None)
        kwargs.pop("IfMatch", None)
        return self._real.put_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_a_store_that_ignores_conditional_writes_is_refused_with_the_reason(
    s3_url: str,
) -> None:
    real = ObjectStore(StoreUrl.parse(s3_url), timeout=10)
    store = ObjectStore(real.url, 10, _IgnoresConditions(real.client))
    with pytest.raises(ConditionalWritesUnsupported, match="If-None-Match"):
        store.check_conditional_writes()
