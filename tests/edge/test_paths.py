"""Path rules: what the server accepts is exactly what a manifest may name."""

from __future__ import annotations

import pytest

from edge.paths import BadPath, check_relative_path, content_type, kind_of, memory_cacheable, parse_content_path

T = "1.k1.abc.def"


def test_parses_token_title_and_path() -> None:
    req = parse_content_path(f"/v1/content/{T}/title-1/hls/720p/seg_00001.m4s")
    assert (req.token, req.title_id, req.path) == (T, "title-1", "hls/720p/seg_00001.m4s")
    assert req.token_path == "title-1/hls/720p/seg_00001.m4s"
    # one level of percent-encoding of harmless characters is decoded once
    assert parse_content_path(f"/v1/content/{T}/t/a%2Bb.m4s").path == "a+b.m4s"


@pytest.mark.parametrize("raw", [
    "/v1/content/T/t/../x", "/v1/content/T/t/%2e%2e/x", "/v1/content/T/t/%2E%2E/x", "/v1/content/T/t/a%2fb",
    "/v1/content/T/t/%252e%252e/x", "/v1/content/T/t/a%5cb", "/v1/content/T/t/a\\b", "/v1/content/T/t/a%00",
    "/v1/content/T/t//x", "/v1/content/T/t/", "/v1/content/T/t/.x", "/v1/content/T/t/./x",
    "/v1/content/T/../x/y", "/v1/content/T/t/%ff", "/v1/content/T/t", "/v1/content/T", "/v2/content/T/t/x",
    "/v1/content/T!/t/x", "/v1/content/T/t/x y", "/v1/content/T/t/" + "a/" * 9 + "x",
])
def test_hostile_request_paths_are_refused(raw: str) -> None:
    with pytest.raises(BadPath):
        parse_content_path(raw)


@pytest.mark.parametrize("path", ["/abs", "a/../b", "a\\b", "a\x00", "a//b", "", "a/", "..", ".", "~/x",
                                  "a/.git/config", "x" * 2000])
def test_manifest_paths_are_held_to_the_same_rules(path: str) -> None:
    with pytest.raises(BadPath):
        check_relative_path(path)


def test_content_types_and_kinds() -> None:
    assert content_type("a/master.m3u8") == "application/vnd.apple.mpegurl"
    assert content_type("a.MPD") == "application/dash+xml"
    assert content_type("x.m4s") == "video/iso.segment"
    assert content_type("noext") == "application/octet-stream"
    assert kind_of("v/init.mp4") == "init" and kind_of("v/seg_1.m4s") == "segment"
    assert kind_of("subs/en.vtt") == "subtitle" and kind_of("art/x.jpg") == "image"
    assert memory_cacheable("a.m3u8", 1000) and memory_cacheable("v/init_0.mp4", 900)
    assert not memory_cacheable("v/seg.m4s", 1000) and not memory_cacheable("a.m3u8", 2 << 20)
