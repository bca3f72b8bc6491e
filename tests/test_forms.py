"""Specification of cachesrv.http.forms: a multipart body in, field values and a streamed file out.

``read_form`` is driven in-process by ``trio.run`` with a fake receive loop: the body as
an async iterator of pieces cut wherever a test likes, and a sink that records what the
``file`` part streamed and when.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from cachesrv.http.errors import HttpError
from cachesrv.http.forms import FIELD_LIMIT, Form, boundary_of, read_form

BOUNDARY = "----cachesrvTestBoundary7MA4YWxk"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def field(name: str, value: bytes) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + value
        + b"\r\n"
    )


def file_part(data: bytes, name: str = "file", filename: str = "cache.tar") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; '
        f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        + data
        + b"\r\n"
    )


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


class Received:
    """What reached the sink, and how much of the body had been received by then."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.body_received_at_write: list[int] = []
        self.body_received = 0

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


def parse(
    body: bytes, cuts: list[int] | None = None, content_type: str = CONTENT_TYPE
) -> tuple[Form, Received]:
    """Run read_form over ``body`` delivered in pieces ending at ``cuts``."""
    received = Received()
    bounds = [0, *sorted(set(cuts or [])), len(body)]
    pieces = [body[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]

    async def receive() -> AsyncIterator[bytes]:
        for piece in pieces:
            await trio.lowlevel.checkpoint()
            received.body_received += len(piece)
            yield piece

    async def sink(data: bytes) -> None:
        assert isinstance(data, bytes) and data
        received.writes.append(data)
        received.body_received_at_write.append(received.body_received)
        await trio.lowlevel.checkpoint()

    async def main() -> Form:
        return await read_form(content_type, receive(), sink)

    return trio.run(main), received


def refused(body: bytes, content_type: str = CONTENT_TYPE) -> HttpError:
    with pytest.raises(HttpError) as info:
        parse(body, content_type=content_type)
    assert info.value.status == 400
    return info.value


# -- what a curl -F upload sends ------------------------------------------------------------


def test_fields_before_the_file_are_known_before_it() -> None:
    parsed, received = parse(form(field("path", b"some/dir/cache.tar"), file_part(b"tar bytes")))
    assert parsed.fields == {"path": "some/dir/cache.tar"}
    assert parsed.has_file and parsed.file_before == {"path"}
    assert received.data == b"tar bytes"


def test_fields_after_the_file_are_collected_too_but_not_as_before_it() -> None:
    body = form(field("targz", b"true"), file_part(b"tgz"), field("path", b"preview"))
    parsed, received = parse(body)
    assert parsed.fields == {"targz": "true", "path": "preview"}
    assert parsed.file_before == {"targz"}
    assert received.data == b"tgz"


def test_a_form_without_a_file_has_its_fields_and_no_file() -> None:
    parsed, received = parse(form(field("path", b"x")))
    assert parsed == Form(fields={"path": "x"}, has_file=False, file_before=set())
    assert received.writes == []


def test_an_empty_file_is_a_file() -> None:
    parsed, received = parse(form(field("path", b"empty"), file_part(b"")))
    assert parsed.has_file and received.data == b""


def test_only_the_first_file_part_is_streamed_and_the_first_value_of_a_field_counts() -> None:
    body = form(
        field("path", b"first"),
        file_part(b"one"),
        file_part(b"two", filename="other"),
        field("path", b"second"),
    )
    parsed, received = parse(body)
    assert received.data == b"one"
    assert parsed.fields == {"path": "first"}


def test_other_file_fields_are_not_the_file() -> None:
    parsed, received = parse(form(file_part(b"attachment", name="notes"), field("path", b"p")))
    assert not parsed.has_file and received.writes == []
    assert parsed.fields == {"notes": "attachment", "path": "p"}


def test_utf8_values_and_bytes_that_look_like_boundaries_survive() -> None:
    tricky = f"\r\n--{BOUNDARY[:-1]}\r\n--\r\n".encode() + bytes(range(256))
    parsed, received = parse(form(field("path", "é/漢字.tar".encode()), file_part(tricky)))
    assert parsed.fields["path"] == "é/漢字.tar"
    assert received.data == tricky


# -- streaming --------------------------------------------------------------------------------


def test_a_file_split_into_one_byte_receives_arrives_whole_and_in_order() -> None:
    data = bytes(range(256)) * 40 + b"\r\n--" + BOUNDARY[:10].encode()
    body = form(field("path", b"p"), file_part(data), field("after", b"1"))
    parsed, received = parse(body, cuts=list(range(len(body))))
    assert received.data == data
    assert parsed.fields == {"path": "p", "after": "1"}


@settings(max_examples=150, deadline=None)
@given(st.data(), st.binary(max_size=3000), st.binary(max_size=200))
def test_any_receive_boundaries_give_the_same_form_and_file(
    draw: st.DataObject, data: bytes, value: bytes
) -> None:
    body = form(field("path", value), file_part(data), field("after", value))
    cuts = draw.draw(st.lists(st.integers(0, len(body)), max_size=60))
    parsed, received = parse(body, cuts)
    expected = value.decode("utf-8", "replace")
    assert parsed.fields == {"path": expected, "after": expected}
    assert received.data == data


def test_the_file_is_streamed_while_the_body_is_still_arriving() -> None:
    data = bytes(1 << 20)
    body = form(field("path", b"big"), file_part(data))
    cuts = list(range(0, len(body), 64 * 1024))
    _, received = parse(body, cuts)
    assert received.data == data
    assert len(received.writes) > 1
    # the first bytes reached the sink when only the first receive had arrived
    assert received.body_received_at_write[0] <= 64 * 1024


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "",
        "application/octet-stream",
        "multipart/form-data",  # no boundary
        "multipart/form-data; boundary=",
        "multipart/mixed; boundary=" + BOUNDARY,
    ],
)
def test_a_body_that_is_not_a_multipart_form_is_400(content_type: str) -> None:
    error = refused(form(field("path", b"x"), file_part(b"d")), content_type)
    assert "multipart/form-data" in error.message


def test_boundary_of_reads_quoted_and_unquoted_boundaries() -> None:
    assert boundary_of(f"multipart/form-data; boundary={BOUNDARY}") == BOUNDARY.encode()
    assert boundary_of(f'multipart/form-data; boundary="{BOUNDARY}"') == BOUNDARY.encode()
    assert boundary_of(f"Multipart/Form-Data; charset=utf-8; boundary={BOUNDARY}") == (
        BOUNDARY.encode()
    )


def test_a_body_with_another_boundary_than_declared_is_400() -> None:
    body = form(field("path", b"x"), file_part(b"d")).replace(BOUNDARY.encode(), b"Other123")
    refused(body)


def test_a_truncated_body_is_400_truncated() -> None:
    body = form(field("path", b"x"), file_part(b"0123456789"))
    for cut in (0, 10, body.index(b"0123456789") + 5, len(body) - 4):
        assert "truncated" in refused(body[:cut]).message, cut


def test_garbage_is_400() -> None:
    refused(b"this is not multipart at all\r\n\r\n")


def test_a_field_over_the_limit_is_400_but_a_file_of_any_size_is_fine() -> None:
    at_limit = b"v" * FIELD_LIMIT
    parsed, _ = parse(form(field("path", at_limit), file_part(b"d")))
    assert parsed.fields["path"] == at_limit.decode()
    error = refused(form(field("path", at_limit + b"v"), file_part(b"d")))
    assert "path" in error.message
    _, received = parse(form(field("path", b"p"), file_part(b"f" * (4 * FIELD_LIMIT))))
    assert received.data == b"f" * (4 * FIELD_LIMIT)
