"""Property tests, thousands of examples each, for the edge's pure parsers of hostile input: request
paths (edge/paths.py), Range and conditional headers (edge/ranges.py) and file-set manifests
(edge/manifest.py).  Each may only accept something safe, and may only refuse with its own error."""

from __future__ import annotations

import hashlib
import json
import os.path
import string
from typing import Any
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.manifest import BadManifest, parse_manifest
from edge.paths import BadPath, check_relative_path, parse_content_path
from edge.ranges import ByteRange, RangeNotSatisfiable, not_modified, parse_range, range_applies
from shared.errors import SignatureError
from shared.signing import Signer, sign_document
from tests.hostile import examples, hostile_text, json_leaf

SAFE_FIRST = string.ascii_letters + string.digits + "_"
SAFE_REST = SAFE_FIRST + ".~+=@,-"
ROOT = "/srv/cache/sets"


def inside(root: str, *parts: str) -> bool:
    joined = os.path.normpath(os.path.join(root, *parts))
    return joined.startswith(root + "/")


def assert_canonical(path: str) -> None:
    assert "\\" not in path and "\x00" not in path and "%" not in path
    for seg in path.split("/"):
        assert seg and seg[0] in SAFE_FIRST and all(c in SAFE_REST for c in seg), path
    assert inside(ROOT, "t1", "v1", path)


@settings(max_examples=examples(400), deadline=None)
@given(hostile_text, hostile_text, hostile_text)
def test_request_paths_are_accepted_only_when_canonical_and_inside(token: str, title: str, rest: str) -> None:
    raw = f"/v1/content/{token}/{title}/{rest}"
    try:
        req = parse_content_path(raw)
    except BadPath:
        return
    assert_canonical(req.path)
    assert_canonical(req.title_id)
    assert inside(ROOT, req.title_id, "v1", req.path)


@settings(max_examples=examples(300), deadline=None)
@given(st.text(alphabet=SAFE_REST + "/", min_size=1, max_size=60), st.integers(0, 2**60))
def test_any_encoding_of_a_safe_path_reaches_the_same_file(text: str, mask: int) -> None:
    """Percent-encoding any characters once changes nothing; encoding a '/' or twice is refused."""
    segments = [seg if seg and seg[0] in SAFE_FIRST else "x" + seg for seg in text.split("/")][:8]
    path = "/".join(segments)
    encoded = "/".join("".join(quote(c, safe="") if mask >> (i % 60) & 1 else c for i, c in enumerate(seg))
                       for seg in segments)
    assert parse_content_path(f"/v1/content/tok.en/t1/{encoded}").path == path
    refused = []
    if "/" in encoded:
        refused.append(encoded.replace("/", "%2f", 1))  # an encoded separator
    if "%" in encoded:
        refused.append(quote(encoded, safe="/"))  # encoded twice
    for bad in refused:
        try:
            parse_content_path(f"/v1/content/tok.en/t1/{bad}")
        except BadPath:
            continue
        raise AssertionError(f"{bad!r} was accepted")


@settings(max_examples=examples(400), deadline=None)
@given(hostile_text | st.text(max_size=60))
def test_manifest_paths_are_accepted_only_when_canonical_and_inside(path: str) -> None:
    try:
        check_relative_path(path)
    except BadPath:
        return
    assert_canonical(path)


range_text = st.text(alphabet="bytes=-, 0123456789\t+ex", max_size=30) | st.sampled_from(
    ["bytes=0-18446744073709551616", "bytes=-18446744073709551616", "bytes=" + "9" * 40 + "-", "items=0-1"])


@settings(max_examples=examples(400), deadline=None)
@given(range_text | st.text(max_size=40), st.integers(0, 10**13))
def test_range_headers_give_a_range_inside_the_body_or_none(header: str, size: int) -> None:
    try:
        rng = parse_range(header, size)
    except RangeNotSatisfiable:
        return
    if rng is not None:
        assert 0 <= rng.start < rng.stop <= size
        assert rng.content_range(size) == f"bytes {rng.start}-{rng.stop - 1}/{size}"


@settings(max_examples=examples(300), deadline=None)
@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 10**6))
def test_well_formed_ranges_are_exact(first: int, last: int, size: int) -> None:
    header = f"bytes={first}-{last}"
    if last < first:
        assert parse_range(header, size) is None
    elif first >= size:
        try:
            parse_range(header, size)
        except RangeNotSatisfiable:
            pass
        else:
            raise AssertionError("a range starting past the end must be 416")
    else:
        assert parse_range(header, size) == ByteRange(first, min(last + 1, size))
    suffix = parse_range(f"bytes=-{last}", size) if last else None
    assert suffix is None or suffix == ByteRange(max(0, size - last), size)


header_text = st.text(max_size=60) | st.text(alphabet='"W/*, abc-10\x00', max_size=30) | st.sampled_from(
    ["Mon, 12 Jan 1970 13:46:40 GMT", "Mon, 12 Jan 99999 13:46:40 GMT", "Mon, 32 Foo 1970 25:61:61 GMT", "0", "-1"])


@settings(max_examples=examples(400), deadline=None)
@given(header_text, header_text, header_text, st.floats(0, 1e12, allow_nan=False))
def test_conditional_headers_only_answer_yes_or_no(inm: str, ims: str, if_range: str, mtime: float) -> None:
    assert not_modified(etag="abc-10", last_modified_s=mtime, if_none_match=inm, if_modified_since=None) in (True,
                                                                                                          False)
    assert not_modified(etag="abc-10", last_modified_s=mtime, if_none_match=None, if_modified_since=ims) in (True,
                                                                                                          False)
    assert range_applies(etag="abc-10", last_modified_http="Mon, 12 Jan 1970 13:46:40 GMT",
                         if_range=if_range) in (True, False)


SIGNER = Signer.generate()
KEYS = {SIGNER.key_id: SIGNER.public_raw}
SHA = hashlib.sha256(b"x").hexdigest()
entry = st.fixed_dictionaries({
    "path": hostile_text | st.sampled_from(["hls/a.m4s", "../x", "/etc/passwd", "a/../../b", "a", "a/b"]) | json_leaf,
    "size": st.integers(-5, 2**41) | json_leaf,
    "sha256": st.sampled_from([SHA, SHA.upper(), SHA[:-1], ""]) | json_leaf,
}, optional={"extra": json_leaf})


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(entry, max_size=6) | json_leaf, st.sampled_from(["t1", "t2", "../t1", ""]),
       st.sampled_from(["v1", "v2", "v1/..", 7]))
def test_signed_manifests_with_hostile_entries_are_refused_or_safe(files: Any, title: str, version: Any) -> None:
    data = json.dumps(sign_document(SIGNER, {"title_id": title, "version": version, "files": files})).encode()
    try:
        manifest = parse_manifest(data, KEYS, title_id="t1", version="v1")
    except BadManifest:
        return
    assert manifest.files and len({f.path for f in manifest.files}) == len(manifest.files)
    for f in manifest.files:
        assert_canonical(f.path)
        assert f.size >= 0 and len(f.sha256) == 64


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode), st.integers(0, 400))
def test_mutated_manifest_bytes_only_raise_manifest_or_signature_errors(junk: bytes, pos: int) -> None:
    good = json.dumps(sign_document(SIGNER, {"title_id": "t1", "version": "v1", "files": [
        {"path": "hls/a.m4s", "size": 1, "sha256": SHA}]})).encode()
    pos %= len(good)
    for data in (junk, good[:pos] + junk + good[pos + len(junk):]):
        try:
            manifest = parse_manifest(data, KEYS, title_id="t1", version="v1")
        except (BadManifest, SignatureError):
            continue
        assert [f.path for f in manifest.files] == ["hls/a.m4s"]  # only an intact signature passes
