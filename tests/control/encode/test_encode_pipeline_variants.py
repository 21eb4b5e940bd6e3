"""Ingest variants: all three codecs, odd/variable-rate sources, the per-title ladder, cancellation."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import m3u8
import pytest
from mpegdash.parser import MPEGDASHParser

from control.encode import boxes
from control.encode.errors import EncodeFailed, IngestCancelled
from control.encode.ladder import CRF_GRID
from control.encode.pipeline import ingest
from control.encode.spec import IngestSpec
from control.encode.stats import IngestStats
from control.encode.synth import make_master


@pytest.fixture(scope="module")
def small_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_master(tmp_path_factory.mktemp("vm") / "m.mp4", seconds=2, width=320, height=180)


def _first_sample_times(root: Path, rendition: str) -> list[float]:
    info = boxes.track_info((root / rendition / "init.mp4").read_bytes())
    return [boxes.fragment_info(p.read_bytes(), info.default_duration).base_time / info.timescale
            for p in sorted((root / rendition).glob("seg_*.m4s"))]


async def test_encode_three_codecs_align_and_decode(tmp_path: Path, small_master: Path, serve, probe_url) -> None:
    spec = IngestSpec(title_id="multi", name="Multi", codecs=("h264", "hevc", "av1"), ladder="fixed",
                      segment_seconds=1.0, workers=2, artwork_candidates=0)
    manifest = await asyncio.to_thread(ingest, small_master, tmp_path, tmp_path / "keys", spec)
    root = tmp_path / "multi"
    videos = [r for r in manifest.renditions if r["kind"] == "video"]
    assert sorted(r["codec_family"] for r in videos) == ["av1", "h264", "hevc"]
    assert {r["codec"].split(".")[0] for r in videos} == {"avc1", "hvc1", "av01"}
    times = {r["id"]: _first_sample_times(root, r["id"]) for r in videos}
    assert all(t == [0.0, 1.0] for t in times.values()), times
    mpd = MPEGDASHParser.parse(str(root / "manifest.mpd"))
    assert [len(a.representations) for a in mpd.periods[0].adaptation_sets] == [1, 1, 1, 1]
    master = m3u8.load(str(root / "master.m3u8"))
    assert [p.stream_info.codecs.split(".")[0] for p in master.playlists] == ["avc1", "av01", "hvc1"]
    base = await serve(root)
    for sel in ("v:0", "v:1", "v:2"):
        frames = (await probe_url(f"{base}/manifest.mpd", "-select_streams", sel, "-show_entries", "frame=key_frame"))
        assert len(frames["frames"]) == 48, sel


def test_encode_odd_variable_rate_source_gets_even_constant_rate_output(tmp_path: Path) -> None:
    src = make_master(tmp_path / "vfr.mkv", seconds=2.5, width=321, height=181, vfr=True, audio=False)
    spec = IngestSpec(title_id="odd", name="Odd", ladder="fixed", segment_seconds=1.0, workers=2,
                      artwork_candidates=1)
    manifest = ingest(src, tmp_path / "origin", tmp_path / "keys", spec)
    (video,) = manifest.renditions
    assert (video["width"], video["height"]) == (320, 180)
    root = tmp_path / "origin" / "odd"
    media = m3u8.load(str(root / video["id"] / "playlist.m3u8"))
    assert all(abs(s.duration - 1.0) < 0.1 for s in media.segments[:-1])
    assert manifest.source["vfr"] is True and not (root / "audio_aac").exists()


def test_encode_auto_ladder_records_points_and_picks_from_them(tmp_path: Path, small_master: Path) -> None:
    spec = IngestSpec(title_id="auto", name="Auto", segment_seconds=1.0, workers=2, artwork_candidates=0)
    manifest = ingest(small_master, tmp_path, tmp_path / "keys", spec)
    points = manifest.ladder["points"]
    assert manifest.ladder["mode"] == "auto" and len(points) >= 12
    assert {p["height"] for p in points} >= {144, 180}
    assert all(p["height"] <= 180 for p in points)  # never above the source
    rungs = manifest.ladder["rungs"]
    assert 1 <= len(rungs) <= 6
    measured = {(p["width"], p["height"]) for p in points}
    assert all((r["width"], r["height"]) in measured for r in rungs)
    assert [r["bitrate"] for r in rungs] == sorted(r["bitrate"] for r in rungs)
    # Capped CRF: each rung records the CRF its trials map to its bitrate, and the encoder used it
    # (x264 writes its settings into the stream).
    assert all(p["crf"] in CRF_GRID["h264"] for p in points)
    for rung in rungs:
        assert rung["rate_control"] == "capped-crf" and rung["maxrate"] == rung["bitrate"] * 3 // 2
        settings = (tmp_path / "auto" / rung["id"] / "seg_00001.m4s").read_bytes()
        assert b"rc=crf" in settings and f" crf={rung['crf']:.1f}".encode() in settings
        assert f"vbv_maxrate={rung['maxrate'] // 1000}".encode() in settings


def test_encode_progress_is_monotonic_and_ends_done(tmp_path: Path, small_master: Path) -> None:
    seen: list[tuple[str, float]] = []
    spec = IngestSpec(title_id="prog", name="Prog", ladder="fixed", workers=2, artwork_candidates=0)
    stats = IngestStats()
    ingest(small_master, tmp_path, tmp_path / "keys", spec, progress=lambda s, f: seen.append((s, f)), stats=stats)
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and seen[0] == ("probe", 0.0) and seen[-1] == ("done", 1.0)
    assert {s for s, _ in seen} >= {"probe", "encode", "package", "done"}
    # The time accounting saw every job, in the workers, and the workers' whole lives.
    assert sorted({j.kind for j in stats.jobs}) == ["AudioJob", "ChunkJob"]
    assert len({j.pid for j in stats.jobs}) <= 2 and all(j.cpu > 0 and j.end >= j.start for j in stats.jobs)
    assert stats.workers == 2 and stats.workers_cpu > stats.job_cpu() > 0
    assert {"probe", "encode+join", "manifests", "publish"} <= set(stats.phases)


def test_encode_unwritable_origin_is_a_typed_error(tmp_path: Path, small_master: Path) -> None:
    origin = tmp_path / "origin"
    origin.write_text("a file where the origin directory should be")
    spec = IngestSpec(title_id="nowhere", name="Nowhere", ladder="fixed", workers=1)
    with pytest.raises(EncodeFailed) as info:
        ingest(small_master, origin, tmp_path / "keys", spec)
    assert "\n" not in str(info.value) and origin.read_text().startswith("a file")


def test_encode_cancel_publishes_nothing(tmp_path: Path, small_master: Path) -> None:
    cancel = threading.Event()

    def progress(stage: str, fraction: float) -> None:
        if stage == "encode":
            cancel.set()

    spec = IngestSpec(title_id="gone", name="Gone", ladder="fixed", encrypt="cenc", workers=2)
    with pytest.raises(IngestCancelled):
        ingest(small_master, tmp_path / "origin", tmp_path / "keys", spec, progress=progress, cancel=cancel)
    assert list((tmp_path / "origin").iterdir()) == []
    assert not (tmp_path / "keys").exists() or list((tmp_path / "keys").iterdir()) == []
