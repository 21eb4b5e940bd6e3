"""Range and conditional rules for bodies served from memory."""

from __future__ import annotations

import pytest

from edge.ranges import ByteRange, RangeNotSatisfiable, not_modified, parse_range, range_applies


@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("bytes=0-9", ByteRange(0, 10)), ("bytes=5-", ByteRange(5, 100)), ("bytes=-10", ByteRange(90, 100)),
    ("bytes=-500", ByteRange(0, 100)), ("bytes=90-500", ByteRange(90, 100)), ("bytes=0-0", ByteRange(0, 1)),
    ("bytes=0-1,5-6", None), ("items=0-1", None), ("bytes=9-3", None), ("bytes=-", None), ("garbage", None),
    ("bytes=" + "9" * 30 + "-", None),
])
def test_parse_range(header: str | None, expected: ByteRange | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=150-200", "bytes=-0"])
def test_unsatisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


def test_conditionals() -> None:
    kw = {"etag": "abc-10", "last_modified_s": 1_000_000.5}
    assert not_modified(**kw, if_none_match='"abc-10"', if_modified_since=None)
    assert not_modified(**kw, if_none_match='W/"abc-10", "x"', if_modified_since=None)
    assert not_modified(**kw, if_none_match="*", if_modified_since=None)
    # If-None-Match wins over If-Modified-Since
    assert not not_modified(**kw, if_none_match='"zzz"', if_modified_since="Fri, 01 Jan 2100 00:00:00 GMT")
    assert not_modified(**kw, if_none_match=None, if_modified_since="Mon, 12 Jan 1970 13:46:40 GMT")
    assert not not_modified(**kw, if_none_match=None, if_modified_since="Mon, 12 Jan 1970 13:46:39 GMT")
    assert not not_modified(**kw, if_none_match=None, if_modified_since="not a date")
    assert range_applies(etag="e", last_modified_http="D", if_range=None)
    assert range_applies(etag="e", last_modified_http="D", if_range='"e"')
    assert not range_applies(etag="e", last_modified_http="D", if_range='"f"')
    assert not range_applies(etag="e", last_modified_http="D", if_range='W/"e"')
    assert range_applies(etag="e", last_modified_http="D", if_range="D")
