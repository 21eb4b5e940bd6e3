"""End to end: a generated master through ingest, checked with ffprobe over HTTP and real parsers."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import aiohttp
import m3u8
import pytest
from mpegdash.parser import MPEGDASHParser

from control.encode import boxes
from control.encode.errors import EncodeFailed
from control.encode.fileset import MANIFEST_NAME, FileSetManifest, sha256_file
from control.encode.quality import RenditionCheck, measure_rendition


def test_encode_manifest_lists_every_file_with_hash(published: tuple[Path, FileSetManifest]) -> None:
    root, manifest = published
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {MANIFEST_NAME}
    assert {f.path for f in manifest.files} == on_disk
    for entry in manifest.files:
        assert (root / entry.path).stat().st_size == entry.size
        assert sha256_file(root / entry.path) == entry.sha256
    kinds = Counter(f.kind for f in manifest.files)
    assert kinds["segment"] == 8 and kinds["init"] == 2 and kinds["audio"] >= 5
    assert kinds["artwork"] >= 2 and kinds["thumbs"] >= 2 and kinds["manifest"] >= 6
    again = FileSetManifest.from_dict(json.loads((root / MANIFEST_NAME).read_text()))
    assert again == manifest
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".staging-")]


def test_encode_hls_parses_and_describes_variants(published: tuple[Path, FileSetManifest]) -> None:
    root, manifest = published
    master = m3u8.load(str(root / "master.m3u8"))
    assert master.is_variant
    variants = {p.uri: p.stream_info for p in master.playlists}
    assert set(variants) == {"h264_234p_145k/playlist.m3u8", "h264_360p_365k/playlist.m3u8"}
    for uri, info in variants.items():
        assert info.bandwidth >= info.average_bandwidth > 0
        assert info.codecs.startswith("avc1.") and info.codecs.endswith("mp4a.40.2")
        assert info.frame_rate == 24.0 and info.audio == "aac"
        assert info.resolution[1] in (234, 360)
        media = m3u8.load(str(root / uri))
        assert media.segment_map[0].uri == "init.mp4" and media.is_endlist
        durations = [s.duration for s in media.segments]
        assert len(durations) == 4
        assert all(abs(d - 1.0) <= 0.1 for d in durations[:-1])
    assert [m.group_id for m in master.media] == ["aac"]
    assert len(master.iframe_playlists) == 2
    iframes = m3u8.load(str(root / "h264_360p_365k/iframes.m3u8"))
    assert iframes.is_i_frames_only
    for seg in iframes.segments:
        length = int(seg.byterange.split("@")[0])
        data = (root / "h264_360p_365k" / seg.uri).read_bytes()
        assert length <= len(data)
        assert data[4:8] == b"moof"


def test_encode_dash_mpd_parses_with_timeline(published: tuple[Path, FileSetManifest]) -> None:
    root, _ = published
    mpd = MPEGDASHParser.parse(str(root / "manifest.mpd"))
    sets = mpd.periods[0].adaptation_sets
    assert [a.content_type for a in sets] == ["video", "audio"]
    video = sets[0]
    assert video.segment_alignment and len(video.representations) == 2
    for rep in video.representations:
        tmpl = rep.segment_templates[0]
        rungs = sum((s.r or 0) + 1 for s in tmpl.segment_timelines[0].Ss)
        assert rungs == 4
        assert (root / rep.id / "init.mp4").exists()
        assert rep.codecs.startswith("avc1.")


def _keyframe_times(root: Path, rendition: str) -> list[float]:
    """Composition time of each segment's first sample, from the boxes we wrote (tfdt)."""
    init = (root / rendition / "init.mp4").read_bytes()
    info = boxes.track_info(init)
    times = []
    for seg in sorted((root / rendition).glob("seg_*.m4s")):
        frag = boxes.fragment_info(seg.read_bytes(), info.default_duration)
        times.append(frag.base_time / info.timescale)
    return times


def test_encode_keyframes_align_across_renditions(published: tuple[Path, FileSetManifest]) -> None:
    root, _ = published
    a, b = _keyframe_times(root, "h264_234p_145k"), _keyframe_times(root, "h264_360p_365k")
    assert a == b == [0.0, 1.0, 2.0, 3.0]


async def test_encode_ffprobe_decodes_hls_and_dash_over_http(
    published: tuple[Path, FileSetManifest], serve, probe_url
) -> None:
    root, _ = published
    base = await serve(root)
    for manifest_name in ("master.m3u8", "manifest.mpd"):
        url = f"{base}/{manifest_name}"
        streams = (await probe_url(url, "-show_streams"))["streams"]
        kinds = Counter(s["codec_type"] for s in streams)
        assert kinds == {"video": 2, "audio": 1}, (manifest_name, kinds)
        keys: list[list[float]] = []
        # One stream at a time: with every stream selected, FFmpeg's DASH demuxer drops the
        # decoder's final flush at EOF (the last B-frames), which is a reader quirk, not ours.
        for sel in ("v:0", "v:1", "a:0"):
            frames = (await probe_url(url, "-select_streams", sel, "-show_entries", "frame=key_frame,pts_time"))[
                "frames"
            ]
            times = [float(f["pts_time"]) for f in frames]
            if sel.startswith("v"):
                # First segment to last: every one of the 96 frames of 4 s at 24 fps decodes.
                assert len(frames) == 96, (manifest_name, sel, len(frames))
                assert max(times) - min(times) > 3.9
                keys.append([round(float(f["pts_time"]) - min(times), 3) for f in frames if f["key_frame"] == 1])
            else:
                assert len(frames) >= 187, (manifest_name, sel, len(frames))
        assert keys[0] == keys[1] and len(keys[0]) == 4, keys


async def test_encode_iframe_ranges_hold_exactly_one_idr_over_http(
    published: tuple[Path, FileSetManifest], serve
) -> None:
    """FFmpeg cannot play I-frame playlists of fMP4, so fetch each byte range as a player would and
    check that it ends exactly after the segment's first access unit, an IDR picture."""
    root, _ = published
    base = await serve(root)
    playlist = m3u8.load(str(root / "h264_360p_365k/iframes.m3u8"))
    async with aiohttp.ClientSession() as session:
        for seg in playlist.segments:
            length, offset = (int(x) for x in seg.byterange.split("@"))
            headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
            async with session.get(f"{base}/h264_360p_365k/{seg.uri}", headers=headers) as resp:
                assert resp.status == 206
                data = await resp.read()
            assert len(data) == length
            assert data[4:8] == b"moof"
            moof_size = int.from_bytes(data[:4], "big")
            pos = moof_size + 8  # past the mdat header
            nal_types = []
            while pos < len(data):
                size = int.from_bytes(data[pos : pos + 4], "big")
                nal_types.append(data[pos + 4] & 0x1F)
                pos += 4 + size
            assert pos == len(data), "the range must end on a NAL unit boundary"
            assert 5 in nal_types, nal_types


def test_encode_published_renditions_score_against_the_master(
    published: tuple[Path, FileSetManifest], master: Path
) -> None:
    root, manifest = published
    rung = max((r for r in manifest.renditions if r["kind"] == "video"), key=lambda r: r["height"])
    files = (str(root / rung["id"] / "init.mp4"), *sorted(str(p) for p in (root / rung["id"]).glob("seg_*.m4s")))
    check = RenditionCheck(str(master), 0.0, Fraction(24), 96, files)
    quality, ssim = measure_rendition(check)
    assert 30 < quality < 60 and 0.7 < ssim <= 1
    with pytest.raises(EncodeFailed, match="frames"):  # a segment missing: fewer frames than the title
        measure_rendition(replace(check, files=files[:-1]))
