"""Specification of cachesrv.names: what a stored path or a cache key may be.

``clean_path`` sees a path already percent-decoded (the ASGI scope's ``path``, or a form
field, which is never decoded): it resolves ``.``/``..`` lexically inside the store root,
like Go's ``filepath.Clean`` under the old server's upload directory.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachesrv.http.errors import HttpError, as_http_error
from cachesrv.names import TRAVERSAL, InvalidName, clean_key, clean_path


def refusal(call: Callable[[], object]) -> HttpError:
    """The HTTP answer for a name ``call`` refuses (the one place errors become responses)."""
    with pytest.raises(InvalidName) as info:
        call()
    error = as_http_error(info.value)
    assert error is not None
    return error


def status_of(raw: str, *, for_write: bool = True) -> int:
    return refusal(lambda: clean_path(raw, for_write=for_write)).status


# -- clean_path: what a name resolves to ----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("cache.tar", "cache.tar"),
        ("some/dir/file.bin", "some/dir/file.bin"),
        ("/lead/x.txt", "lead/x.txt"),  # a leading slash is accepted
        ("//lead//x.txt", "lead/x.txt"),  # double slashes collapse
        ("a///b////c", "a/b/c"),
        ("a/b/", "a/b"),  # a trailing slash goes
        ("./a/./b/.", "a/b"),
        ("a/../b.txt", "b.txt"),  # .. inside the root resolves, as with the old server
        ("a/b/../../c", "c"),
        ("a/b/c/../../../d/../e", "e"),
        # names that merely contain dots are names
        ("...", "..."),
        ("..a/b..", "..a/b.."),
        (".hidden/.x", ".hidden/.x"),
        ("a/.../b", "a/.../b"),
        # percent-encoding is not decoded again: these are literal names inside the root
        ("%2e%2e/x", "%2e%2e/x"),
        ("%2E%2E%2Fetc%2Fpasswd", "%2E%2E%2Fetc%2Fpasswd"),
        ("..%2f..%2fx", "..%2f..%2fx"),
        ("a/%00", "a/%00"),
        # not reserved: only a first segment of exactly "-" is
        ("-x/stats", "-x/stats"),
        ("a/-/b", "a/-/b"),
        ("é/漢字 with space.tar", "é/漢字 with space.tar"),
    ],
)
def test_a_path_resolves_lexically_inside_the_root(raw: str, expected: str) -> None:
    assert clean_path(raw) == expected
    assert clean_path(raw, for_write=False) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "..",
        "../",
        "../x",
        "/../x",
        "//../x",
        "./../x",
        "a/../../x",
        "a/b/../../../x",
        "../../etc/passwd",
        "a/./.././../x",
        "a/../b/../../x",
        "x/../..",
    ],
)
def test_climbing_out_of_the_root_in_any_disguise_is_403(raw: str) -> None:
    assert status_of(raw) == 403
    assert status_of(raw, for_write=False) == 403
    assert refusal(lambda: clean_path(raw)).message == TRAVERSAL  # the old server's words


@pytest.mark.parametrize(
    "raw",
    ["a\x00b", "\x00", "a/\x00/../b", "..\\x", "a\\..\\..\\x", "a\\b", "\\etc\\passwd"],
)
def test_nul_and_backslash_are_400_whatever_else_the_path_says(raw: str) -> None:
    assert status_of(raw) == 400
    assert status_of(raw, for_write=False) == 400


@pytest.mark.parametrize("raw", ["", "/", "//", ".", "./", "a/..", "a/b/../..", "/./"])
def test_a_path_that_is_the_root_is_400_for_a_write_and_the_root_for_a_read(raw: str) -> None:
    assert status_of(raw) == 400
    assert clean_path(raw, for_write=False) == ""


@pytest.mark.parametrize("raw", ["-", "-/", "-/stats", "/-/metrics", "//-//x", "./-/x", "a/../-/x"])
def test_writes_under_dash_are_reserved_however_the_path_gets_there(raw: str) -> None:
    assert status_of(raw) == 400
    assert clean_path(raw, for_write=False).split("/")[0] == "-"


segments = st.lists(
    st.sampled_from(["a", "b", "..", ".", "", "c.d", "..."]), min_size=0, max_size=12
)


@settings(max_examples=300, deadline=None)
@given(segments, st.booleans())
def test_any_path_is_refused_if_it_climbs_out_and_is_what_posixpath_says_if_not(
    parts: list[str], lead: bool
) -> None:
    raw = ("/" if lead else "") + "/".join(parts)
    resolved = posixpath.normpath("/root/" + raw)  # no segment is "root": no way back in
    if resolved == "/root" or resolved.startswith("/root/"):
        cleaned = clean_path(raw, for_write=False)
        assert cleaned == resolved.removeprefix("/root").removeprefix("/")
        assert cleaned == "" or all(s not in ("", ".", "..") for s in cleaned.split("/"))
    else:
        assert status_of(raw, for_write=False) == 403


# -- clean_key: cache keys -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "go-build",
        "go-build/linux-amd64/3f9a0c",
        "npm@9.8.1,node=20:lock+hash.v2",
        "UPPER_lower-09",
        "a" * 512,
        "a/./b",  # keys are names, not paths: only ".." is refused
        "...",
    ],
)
def test_a_valid_key_is_kept_as_is(key: str) -> None:
    assert clean_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        "",
        "a" * 513,
        "..",
        "../x",
        "a/../b",
        "a/..",
        "with space",
        "percent%2e",
        "back\\slash",
        "nul\x00",
        "new\nline",
        "query?x",
        "hash#x",
        "é",
        "semi;colon",
        "tab\t",
    ],
)
def test_an_invalid_key_is_400(key: str) -> None:
    assert refusal(lambda: clean_key(key)).status == 400
