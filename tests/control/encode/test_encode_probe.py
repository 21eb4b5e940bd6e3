"""Garbage masters are refused with a one-line reason and leave nothing behind; odd ones pass."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from control.encode.artwork import jpeg
from control.encode.errors import (
    AbsurdDimensions,
    BadMaster,
    BadSpec,
    EmptyMaster,
    NotAVideo,
    NoVideoStream,
    TitleExists,
    TruncatedMaster,
)
from control.encode.pipeline import ingest
from control.encode.probe import probe
from control.encode.spec import IngestSpec
from control.encode.synth import make_master


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=48000)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((2, 1024), np.float32), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 48000, i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _bad_masters(tmp: Path, good: Path) -> list[tuple[Path, type[BadMaster]]]:
    empty = tmp / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp / "notes.mp4"
    text.write_text("this is not a video\n" * 200)
    cut = tmp / "cut.mp4"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size * 6 // 10])
    mkv = make_master(tmp / "long.mkv", seconds=3, width=33, height=19, audio=False)
    cut_mkv = tmp / "cut.mkv"
    cut_mkv.write_bytes(mkv.read_bytes()[: mkv.stat().st_size // 3])
    tiny = make_master(tmp / "tiny.mkv", seconds=0.5, width=9, height=7, audio=False)
    wide = make_master(tmp / "wide.mkv", seconds=0.1, width=8201, height=17, audio=False, fps=10, noise=0)
    image = tmp / "still.jpg"
    frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 128, np.uint8), format="rgb24")
    image.write_bytes(jpeg(frame, 64, 64))
    frantic = make_master(tmp / "frantic.mkv", seconds=0.3, width=33, height=19, audio=False, fps=1000, noise=0)
    garbage = tmp / "random.mp4"
    garbage.write_bytes(np.random.default_rng(3).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    return [
        (empty, EmptyMaster),
        (text, NotAVideo),
        (cut, TruncatedMaster),
        (cut_mkv, TruncatedMaster),
        (tiny, AbsurdDimensions),
        (wide, AbsurdDimensions),
        (image, NotAVideo),
        (garbage, NotAVideo),
        (frantic, NotAVideo),
        (_audio_only(tmp / "sound.m4a"), NoVideoStream),
        (tmp / "missing.mp4", BadMaster),
        (tmp, BadMaster),
    ]


def test_encode_probe_describes_a_good_master(master: Path) -> None:
    info = probe(master)
    assert (info.width, info.height, info.fps, info.vfr) == (640, 360, Fraction(24), False)
    assert info.has_audio and info.audio_channels == 2 and info.audio_rate == 48000
    assert abs(info.duration - 4.0) < 0.05


def test_encode_probe_handles_odd_sizes_and_variable_rate(tmp_path: Path) -> None:
    info = probe(make_master(tmp_path / "vfr.mkv", seconds=2, width=321, height=181, vfr=True, audio=False))
    assert (info.width, info.height) == (321, 181)
    assert info.vfr and info.fps == Fraction(24)


def test_encode_bad_masters_get_one_line_typed_errors(tmp_path: Path, master: Path) -> None:
    for path, expected in _bad_masters(tmp_path, master):
        with pytest.raises(expected) as info:
            probe(path)
        message = str(info.value)
        assert "\n" not in message and 0 < len(message) <= 200, message
        assert info.value.http_status == 400


def test_encode_bad_master_ingest_leaves_nothing_behind(tmp_path: Path, master: Path) -> None:
    origin, keys = tmp_path / "origin", tmp_path / "keys"
    (tmp_path / "in").mkdir()
    for i, (path, expected) in enumerate(_bad_masters(tmp_path / "in", master)):
        spec = IngestSpec(title_id=f"bad-{i}", name="Bad", ladder="fixed", encrypt="cenc", workers=1)
        with pytest.raises(expected):
            ingest(path, origin, keys, spec)
    assert not origin.exists() or list(origin.iterdir()) == []
    assert not keys.exists() or list(keys.iterdir()) == []


def test_encode_hostile_specs_are_refused() -> None:
    for kwargs in (
        {"title_id": "../etc"},
        {"title_id": "a/b"},
        {"title_id": "x" * 65},
        {"title_id": ""},
        {"codecs": ("vp9",)},
        {"codecs": ("hevc",)},
        {"codecs": ("h264", "h264")},
        {"segment_seconds": 0.1},
        {"segment_seconds": 60.0},
        {"encrypt": "rot13"},
        {"ladder": "magic"},
        {"rate_control": "vbr"},
        {"workers": 0},
        {"preset": "placebo; rm -rf /"},
        {"name": ""},
        {"name": "bad\x1bname"},
        {"genres": ("x" * 41,)},
        {"genres": tuple(f"g{i}" for i in range(21))},
    ):
        args = {"title_id": "ok", "name": "ok", **kwargs}
        with pytest.raises(BadSpec) as info:
            IngestSpec(**args)  # type: ignore[arg-type]
        assert "\n" not in str(info.value)


def test_encode_existing_title_is_not_overwritten(tmp_path: Path, master: Path) -> None:
    origin = tmp_path / "origin"
    (origin / "taken").mkdir(parents=True)
    (origin / "taken" / "keep.txt").write_text("precious")
    with pytest.raises(TitleExists):
        ingest(master, origin, tmp_path / "keys", IngestSpec(title_id="taken", name="Taken", ladder="fixed"))
    assert (origin / "taken" / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in origin.iterdir()) == ["taken"]
