"""Specification of cachesrv.chunking: upload bytes in, ordered pieces out.

Most tests use small FastCDC sizes (SMALL) so that members "larger than
max_size" stay cheap to generate; one test runs the production defaults.
"""

from __future__ import annotations

import io
import random
import tarfile

import blake3
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pyfastcdc import FastCDC

from cachesrv.chunking import ChunkParams, Piece, Splitter
from cachesrv.chunking.tar import END_OF_MEMBER, Content, Meta, TarSplitter

SMALL = ChunkParams(min_size=256, avg_size=1024, max_size=4096)
FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}

# -- building tars ---------------------------------------------------------------------

# Sizes that sit on and around 512-byte block boundaries and around the chunk sizes.
_EDGE_SIZES = [0, 1, 2, 511, 512, 513, 1023, 1024, 1025, 4095, 4096, 4097, 3 * 4096 + 7]


@st.composite
def member_specs(draw: st.DrawFn, long_names: bool) -> dict:
    kind = draw(
        st.sampled_from(["file", "file", "file", "file", "dir", "symlink", "hardlink", "fifo"])
    )
    if long_names:
        stem = draw(
            st.one_of(
                st.text(alphabet="abcxyz_", min_size=1, max_size=12),
                st.text(alphabet="abcé漢字ü🙂-", min_size=1, max_size=20),  # unicode
                st.integers(101, 300).map(lambda n: "n" * n),  # > 100 chars
            )
        )
    else:
        stem = draw(st.text(alphabet="abcxyz_", min_size=1, max_size=12))
    size = draw(st.one_of(st.sampled_from(_EDGE_SIZES), st.integers(0, 5 * SMALL.max_size)))
    return {
        "kind": kind,
        "stem": stem,
        "size": size,
        "mtime": draw(st.integers(0, 2**33 - 1)),
        "xattr": draw(st.none() | st.text(min_size=0, max_size=40)),
        "seed": draw(st.integers(0, 2**32)),
    }


def build_tar(specs: list[dict], fmt: int, mtime_shift: int = 0) -> bytes:
    """A tar as Python's tarfile writes it; contents depend only on each spec's seed."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        first_file = None
        for i, spec in enumerate(specs):
            info = tarfile.TarInfo(f"d{i}/{spec['stem']}")
            info.mtime = spec["mtime"] + mtime_shift
            kind = spec["kind"]
            if kind == "hardlink" and first_file is None:
                kind = "file"
            if fmt == tarfile.PAX_FORMAT and spec["xattr"] is not None:
                info.pax_headers = {
                    "SCHILY.xattr.user.note": spec["xattr"],
                    "comment": spec["xattr"] * 3,
                }
            if kind == "file":
                data = random.Random(spec["seed"]).randbytes(spec["size"])
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                first_file = first_file or info.name
                continue
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = "target/" + spec["stem"]
            elif kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = first_file or ""
            else:
                info.type = tarfile.FIFOTYPE
            tar.addfile(info)
    return buf.getvalue()


@st.composite
def tars(draw: st.DrawFn, max_members: int = 12) -> bytes:
    """Random tars in every format; long and unicode names where the format allows."""
    fmt = draw(st.sampled_from(list(FORMATS.values())))
    long_names = fmt != tarfile.USTAR_FORMAT
    return build_tar(draw(st.lists(member_specs(long_names), max_size=max_members)), fmt)


def encodable(specs: list[dict], fmt: int) -> bool:
    try:
        build_tar(specs, fmt)
    except (ValueError, UnicodeEncodeError):  # e.g. ustar cannot hold a long name
        return False
    return True


# -- feeding ---------------------------------------------------------------------------


@st.composite
def feed_plans(draw: st.DrawFn, length: int) -> list[int]:
    """Cut points for feed(): random ones plus a stretch fed one byte at a time."""
    cuts = set(draw(st.lists(st.integers(0, length), max_size=40)))
    if length and draw(st.booleans()):
        start = draw(st.integers(0, length))
        cuts.update(range(start, min(length, start + 1500)))
    return sorted(cuts)


def split(
    data: bytes,
    cuts: list[int],
    params: ChunkParams = SMALL,
    tar_aware: bool = True,
    splitter: Splitter | None = None,
) -> list[Piece]:
    s = splitter or Splitter(params, tar_aware=tar_aware)
    pieces: list[Piece] = []
    prev = 0
    for cut in [*cuts, len(data)]:
        pieces += s.feed(data[prev:cut])
        prev = cut
    pieces += s.finish()
    return pieces


def assert_well_formed(pieces: list[Piece], data: bytes, params: ChunkParams) -> None:
    assert b"".join(p.data for p in pieces) == data
    assert all(type(p.data) is bytes for p in pieces)
    assert all(len(p.data) > 0 for p in pieces), "no empty pieces"
    assert all(len(p.data) <= params.max_size for p in pieces)


def piece_ranges(pieces: list[Piece]) -> list[tuple[bool, int, int]]:
    out, pos = [], 0
    for p in pieces:
        out.append((p.meta, pos, pos + len(p.data)))
        pos += len(p.data)
    return out


def member_data_ranges(data: bytes) -> list[tuple[int, int]]:
    """Where tarfile itself says each member's data lies."""
    ranges = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            if (m.isreg() or m.type not in tarfile.SUPPORTED_TYPES) and m.size:
                ranges.append((m.offset_data, m.offset_data + m.size))
    return ranges


def cut_buf(data: bytes, params: ChunkParams) -> list[bytes]:
    cdc = FastCDC(params.avg_size, min_size=params.min_size, max_size=params.max_size)
    return [c.data.tobytes() for c in cdc.cut_buf(data)]


# -- byte identity ---------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), tars())
def test_reassembly_is_byte_identical_for_any_feed_boundaries(data: st.DataObject, tar: bytes):
    cuts = data.draw(feed_plans(len(tar)))
    pieces = split(tar, cuts)
    assert_well_formed(pieces, tar, SMALL)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), tars())
def test_pieces_do_not_depend_on_feed_boundaries(data: st.DataObject, tar: bytes):
    one_shot = split(tar, [])
    assert split(tar, data.draw(feed_plans(len(tar)))) == one_shot
    assert split(tar, data.draw(feed_plans(len(tar)))) == one_shot


@settings(max_examples=40, deadline=None)
@given(st.data(), st.sampled_from(list(FORMATS.values())))
def test_every_member_kind_and_name_survives_in_each_format(data: st.DataObject, fmt: int):
    specs = data.draw(st.lists(member_specs(long_names=fmt != tarfile.USTAR_FORMAT), max_size=8))
    assume(encodable(specs, fmt))
    tar = build_tar(specs, fmt)
    pieces = split(tar, data.draw(feed_plans(len(tar))))
    assert_well_formed(pieces, tar, SMALL)


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_empty_archive_is_all_metadata(fmt: int):
    buf = io.BytesIO()
    tarfile.open(fileobj=buf, mode="w", format=fmt).close()
    empty = buf.getvalue()
    s = Splitter(SMALL)
    pieces = split(empty, list(range(len(empty))), splitter=s)
    assert_well_formed(pieces, empty, SMALL)
    assert all(p.meta for p in pieces)
    assert s.is_tar


def test_empty_stream_gives_no_pieces():
    for tar_aware in (True, False):
        s = Splitter(SMALL, tar_aware=tar_aware)
        assert s.feed(b"") == []
        assert s.finish() == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), tars())
def test_truncated_archive_is_byte_identical(data: st.DataObject, tar: bytes):
    truncated = tar[: data.draw(st.integers(0, len(tar)))]
    one_shot = split(truncated, [])
    assert_well_formed(one_shot, truncated, SMALL)
    assert split(truncated, data.draw(feed_plans(len(truncated)))) == one_shot


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), tars(max_members=6), st.binary(min_size=1, max_size=3000))
def test_trailing_garbage_is_byte_identical(data: st.DataObject, tar: bytes, garbage: bytes):
    stream = tar + garbage
    one_shot = split(stream, [])
    assert_well_formed(one_shot, stream, SMALL)
    assert split(stream, data.draw(feed_plans(len(stream)))) == one_shot
    # The archive itself is still split as a tar: its pieces are a prefix.
    assert piece_ranges(split(tar, []))[:-1] == piece_ranges(one_shot)[: len(split(tar, [])) - 1]


@settings(max_examples=60, deadline=None)
@given(st.data(), st.binary(min_size=1, max_size=40_000))
def test_non_tar_bytes_fall_back_to_plain_cdc(data: st.DataObject, blob: bytes):
    stream = b"\x01" + blob  # never a zero block, and a valid header is vanishingly rare
    s = Splitter(SMALL)
    pieces = split(stream, data.draw(feed_plans(len(stream))), splitter=s)
    assert not s.is_tar
    assert pieces == [Piece(False, c) for c in cut_buf(stream, SMALL)]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), tars(max_members=8))
def test_mutating_the_fed_buffer_afterwards_changes_nothing(data: st.DataObject, tar: bytes):
    s = Splitter(SMALL)
    pieces: list[Piece] = []
    prev = 0
    scratch = bytearray(len(tar))
    for cut in [*data.draw(feed_plans(len(tar))), len(tar)]:
        view = memoryview(scratch)[: cut - prev]
        view[:] = tar[prev:cut]
        pieces += s.feed(view)
        view[:] = b"\xaa" * len(view)  # a receive loop reusing its buffer
        prev = cut
    pieces += s.finish()
    assert pieces == split(tar, [])


# -- where the cuts are ----------------------------------------------------------------


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), tars())
def test_content_pieces_are_exactly_member_data_and_never_span_members(
    data: st.DataObject, tar: bytes
):
    pieces = split(tar, data.draw(feed_plans(len(tar))))
    members = member_data_ranges(tar)
    content = [(a, b) for meta, a, b in piece_ranges(pieces) if not meta]
    # Each member's data is chunked on its own, exactly as FastCDC cuts it whole.
    expected = []
    for start, end in members:
        offset = start
        for chunk in cut_buf(tar[start:end], SMALL):
            expected.append((offset, offset + len(chunk)))
            offset += len(chunk)
    assert content == expected
    assert all(b - a <= SMALL.max_size for a, b in content)


@settings(max_examples=25, deadline=None)
@given(st.data(), st.binary(max_size=5000))
def test_tar_aware_false_is_exactly_fastcdc_over_the_whole_stream(data: st.DataObject, head: bytes):
    rng = random.Random(len(head))
    stream = head + rng.randbytes(rng.randrange(0, 300_000))
    s = Splitter(SMALL, tar_aware=False)
    pieces = split(stream, data.draw(feed_plans(len(stream))), splitter=s)
    assert not s.is_tar
    assert pieces == [Piece(False, c) for c in cut_buf(stream, SMALL)]


@settings(max_examples=10, deadline=None)
@given(st.data())
def test_plain_cdc_across_many_windows_is_exactly_fastcdc_over_the_whole_stream(
    data: st.DataObject,
):
    # default sizes: the chunker's window (twice the largest chunk) is cut and carried
    # over a dozen times in 3 MB, wherever the feeds end
    params = ChunkParams()
    stream = random.Random(data.draw(st.integers(0, 1000))).randbytes(3_000_000)
    pieces = split(stream, data.draw(feed_plans(len(stream))), params=params, tar_aware=False)
    assert pieces == [Piece(False, c) for c in cut_buf(stream, params)]


def test_default_sizes_on_members_larger_than_max_size():
    params = ChunkParams()
    assert params == (16 * 1024, 64 * 1024, 256 * 1024)
    rng = random.Random(7)
    specs = [
        {"kind": "file", "stem": f"f{i}", "size": size, "mtime": 0, "xattr": None, "seed": i}
        for i, size in enumerate([3_000_000, 0, 200, 262_144, 262_145, 1_000_001])
    ]
    tar = build_tar(specs, tarfile.PAX_FORMAT)
    cuts = sorted(rng.sample(range(len(tar)), 200))
    pieces = split(tar, cuts, params=params)
    assert_well_formed(pieces, tar, params)
    assert pieces == split(tar, [], params=params)
    content = [(a, b) for meta, a, b in piece_ranges(pieces) if not meta]
    starts = {a for a, _ in member_data_ranges(tar)}
    assert starts <= {a for a, _ in content}  # every member starts a chunk


def test_long_runs_of_headers_are_cut_into_max_size_meta_pieces():
    specs = [
        {"kind": "dir", "stem": f"dir{i}", "size": 0, "mtime": i, "xattr": None, "seed": 0}
        for i in range(40)  # 40 headers = 20 KiB of metadata with no content between
    ]
    tar = build_tar(specs, tarfile.GNU_FORMAT)
    pieces = split(tar, list(range(0, len(tar), 333)))
    assert_well_formed(pieces, tar, SMALL)
    assert all(p.meta for p in pieces)
    assert [len(p.data) for p in pieces[:-1]] == [SMALL.max_size] * (len(pieces) - 1)


# -- tar-awareness pays ----------------------------------------------------------------


def _content_ids(pieces: list[Piece]) -> set[str]:
    return {blake3.blake3(p.data).hexdigest() for p in pieces if not p.meta}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(member_specs(long_names=True), min_size=1, max_size=10),
    st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
    st.integers(1, 10**6),
)
def test_touching_every_mtime_leaves_content_chunks_identical(specs, fmt, shift):
    v1 = build_tar(specs, fmt)
    v2 = build_tar(specs, fmt, mtime_shift=shift)
    assert _content_ids(split(v1, [])) == _content_ids(split(v2, []))


def _share_already_stored(v1: list[Piece], v2: list[Piece]) -> float:
    stored = _content_ids(v1)
    content = [p.data for p in v2 if not p.meta]
    reused = sum(len(d) for d in content if blake3.blake3(d).hexdigest() in stored)
    return reused / sum(len(d) for d in content)


def test_plain_cdc_would_not_dedup_small_files_after_an_mtime_change():
    # Why tar-awareness exists: the same change ruins most of plain CDC's chunks.
    specs = [
        {"kind": "file", "stem": f"f{i}", "size": 200 + i, "mtime": 1000, "xattr": None, "seed": i}
        for i in range(50)
    ]
    v1, v2 = (build_tar(specs, tarfile.GNU_FORMAT, shift) for shift in (0, 3600))
    plain = _share_already_stored(split(v1, [], tar_aware=False), split(v2, [], tar_aware=False))
    aware = _share_already_stored(split(v1, []), split(v2, []))
    assert plain < 0.5
    assert aware == 1.0


# -- falling back ----------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.data(), st.integers(0, 511), st.integers(1, 255))
def test_corrupted_header_stops_tar_parsing_and_stays_byte_identical(
    data: st.DataObject, where: int, flip: int
):
    specs = [
        {"kind": "file", "stem": f"f{i}", "size": 700 * i, "mtime": 5, "xattr": None, "seed": i}
        for i in range(4)
    ]
    tar = bytearray(build_tar(specs, tarfile.USTAR_FORMAT))
    second = 512  # header of the second member (the first holds 0 bytes)
    tar[second + where] ^= flip
    stream = bytes(tar)
    s = Splitter(SMALL)
    pieces = split(stream, data.draw(feed_plans(len(stream))), splitter=s)
    assert_well_formed(pieces, stream, SMALL)
    if where not in range(148, 156):
        # Any flipped byte outside the checksum field breaks the checksum. (A flip
        # inside it may still leave a valid field, e.g. its NUL becoming a space.)
        assert not s.is_tar
    if not s.is_tar:
        # Everything from the rejected header on is plain content.
        assert pieces[0] == Piece(True, stream[:second])
        assert pieces[1:] == [Piece(False, c) for c in cut_buf(stream[second:], SMALL)]


def test_fallback_is_reported_by_is_tar():
    tar = build_tar(
        [{"kind": "file", "stem": "a", "size": 10, "mtime": 0, "xattr": None, "seed": 1}],
        tarfile.GNU_FORMAT,
    )
    s = Splitter(SMALL)
    s.feed(tar[:1024])
    assert s.is_tar
    s.feed(b"this is where the tar stops and something else begins" * 20)
    assert not s.is_tar
    assert Splitter(SMALL, tar_aware=False).is_tar is False


def test_zero_padding_after_the_trailer_is_metadata_but_garbage_is_content():
    tar = build_tar(
        [{"kind": "file", "stem": "a", "size": 10, "mtime": 0, "xattr": None, "seed": 1}],
        tarfile.GNU_FORMAT,
    )
    s = Splitter(SMALL)
    pieces = split(tar + bytes(20_000), [], splitter=s)
    assert s.is_tar
    assert [p.meta for p in pieces][-1] is True
    s = Splitter(SMALL)
    pieces = split(tar + b"garbage", [], splitter=s)
    assert not s.is_tar
    assert pieces[-1] == Piece(False, b"garbage")


# -- header encodings tarfile rarely writes ---------------------------------------------


def _rewrite_header(tar: bytearray, at: int, field: slice, value: bytes) -> None:
    tar[field.start + at : field.stop + at] = value
    block = tar[at : at + 512]
    block[148:156] = b" " * 8
    tar[at + 148 : at + 156] = b"%06o\0 " % sum(block)


def _content_of(tar: bytes) -> list[bytes]:
    return [p.data for p in split(tar, list(range(len(tar)))) if not p.meta]


def test_base256_size_field_is_understood():
    data = random.Random(3).randbytes(5000)
    info = tarfile.TarInfo("big-endian-size")
    info.size = len(data)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(data))
    raw = bytearray(buf.getvalue())
    _rewrite_header(raw, 0, slice(124, 136), b"\x80" + len(data).to_bytes(11, "big"))
    stream = bytes(raw)
    assert tarfile.open(fileobj=io.BytesIO(stream)).getmembers()[0].size == len(data)
    assert b"".join(_content_of(stream)) == data


def test_pax_size_overrides_the_header_size_field():
    data = random.Random(4).randbytes(3000)
    info = tarfile.TarInfo("pax-sized")
    info.size = len(data)
    info.pax_headers = {"size": str(len(data))}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(data))
    raw = bytearray(buf.getvalue())
    member_header = 1024  # after the pax header and its one-block record
    _rewrite_header(raw, member_header, slice(124, 136), b"%011o\0" % 0)
    stream = bytes(raw)
    assert tarfile.open(fileobj=io.BytesIO(stream)).getmembers()[0].size == len(data)
    assert b"".join(_content_of(stream)) == data


def test_gnu_old_sparse_extension_blocks_are_metadata():
    data = random.Random(5).randbytes(1500)
    info = tarfile.TarInfo("sparse")
    info.size = len(data)
    info.type = tarfile.GNUTYPE_SPARSE
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    _rewrite_header(header, 0, slice(482, 483), b"\x01")  # one extension block follows
    extension = bytes(512)  # no more entries, isextended = 0
    stream = bytes(header) + extension + data + bytes(-len(data) % 512) + bytes(1024)
    s = Splitter(SMALL)
    pieces = split(stream, list(range(0, len(stream), 100)), splitter=s)
    assert s.is_tar
    assert pieces[0] == Piece(True, bytes(header) + extension)
    assert b"".join(p.data for p in pieces if not p.meta) == data


def test_tar_splitter_events_in_order():
    tar = build_tar(
        [{"kind": "file", "stem": "a", "size": 600, "mtime": 0, "xattr": None, "seed": 1}],
        tarfile.USTAR_FORMAT,
    )
    t = TarSplitter()
    events = t.feed(tar) + t.finish()
    kinds = [type(e) for e in events]
    assert kinds[:4] == [Meta, Content, type(END_OF_MEMBER), Meta]
    assert isinstance(events[1], Content) and len(events[1].data) == 600
    assert b"".join(bytes(e.data) for e in events if isinstance(e, (Meta, Content))) == tar
