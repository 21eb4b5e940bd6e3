"""ISO-BMFF cutting and re-timing on real encoder output, and refusal of broken boxes."""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import pytest

from control.encode import boxes
from control.encode.encoder import ChunkJob, encode_chunk
from control.encode.errors import EncodeFailed
from control.encode.spec import VideoRung


@pytest.fixture(scope="module")
def chunk(tmp_path_factory: pytest.TempPathFactory, master: Path) -> bytes:
    out = tmp_path_factory.mktemp("chunk")
    rung = VideoRung("h264", 320, 180, 200_000)
    job = ChunkJob(str(master), 0.0, Fraction(24), 24, 72, (24, 48), 100, (rung,), str(out), 7)
    return Path(encode_chunk(job)[rung.id]).read_bytes()


def test_encode_split_gives_one_fragment_per_forced_keyframe(chunk: bytes) -> None:
    init, fragments = boxes.split_fmp4(chunk)
    info = boxes.track_info(init)
    assert info.codec.startswith("avc1.64") and (info.width, info.height) == (320, 180)
    assert len(fragments) == 2
    frags = [boxes.fragment_info(f, info.default_duration) for f in fragments]
    assert [f.samples for f in frags] == [24, 24]
    assert frags[0].base_time == 0 and frags[1].base_time == frags[0].duration == info.timescale


def test_encode_retime_shifts_decode_time_and_renumbers(chunk: bytes, tmp_path: Path) -> None:
    init, fragments = boxes.split_fmp4(chunk)
    info = boxes.track_info(init)
    moved = boxes.retime_fragment(fragments[1], 10 * info.timescale, 42)
    assert len(moved) == len(fragments[1])
    assert boxes.fragment_info(moved).base_time == 11 * info.timescale
    mfhd = boxes.find(moved, (b"moof", b"mfhd"))
    assert mfhd is not None and struct.unpack_from(">I", moved, mfhd.body + 4)[0] == 42
    # A real demuxer agrees: the re-timed fragment starts at 11 s.
    path = tmp_path / "moved.mp4"
    path.write_bytes(init + moved)
    with av.open(str(path)) as c:
        first = next(iter(c.demux(video=0)))
        assert first.dts is not None and first.time_base is not None
        assert abs(float(first.dts * first.time_base) - 11.0) < 0.2


def test_encode_broken_boxes_are_refused(chunk: bytes) -> None:
    with pytest.raises(EncodeFailed):
        boxes.split_fmp4(chunk[: len(chunk) - 100])
    with pytest.raises(EncodeFailed):
        boxes.split_fmp4(struct.pack(">I4s", 4, b"moov") + b"\0" * 20)
    with pytest.raises(EncodeFailed):
        boxes.split_fmp4(b"\0\0\0\x10mdat" + b"\0" * 8)
    with pytest.raises(EncodeFailed):
        boxes.fragment_info(b"\0\0\0\x08moof")
