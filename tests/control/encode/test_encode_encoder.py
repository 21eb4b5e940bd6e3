"""Worker-side pieces: the prefetch thread, constant-rate frame mapping, encoder settings."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import pytest

from control.encode.encoder import ChunkJob, cfr_frames, encode_chunk, encoder_settings, prefetch, rc_bit_rate
from control.encode.spec import VideoRung
from control.encode.synth import make_master


def test_encode_prefetch_keeps_order_and_bounds() -> None:
    produced: list[int] = []

    def items() -> Iterator[int]:
        for i in range(50):
            produced.append(i)
            yield i

    out = []
    for x in prefetch(items(), depth=3):
        out.append(x)
        assert len(produced) - len(out) <= 3 + 1  # never more than depth (+ one in hand) ahead
    assert out == list(range(50))


def test_encode_prefetch_surfaces_producer_errors() -> None:
    def items() -> Iterator[int]:
        yield 1
        raise RuntimeError("decoder exploded")

    with pytest.raises(RuntimeError, match="decoder exploded"):
        list(prefetch(items(), depth=2))


def test_encode_prefetch_stops_its_thread_when_abandoned() -> None:
    def items() -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    before = threading.active_count()
    gen = prefetch(items(), depth=2)
    assert next(gen) == 0
    gen.close()
    assert threading.active_count() == before


def test_encode_cfr_maps_variable_rate_to_every_output_frame(tmp_path: Path) -> None:
    src = make_master(tmp_path / "vfr.mkv", seconds=2, width=64, height=36, vfr=True, audio=False, fps=20)
    with av.open(str(src)) as c:
        frames = list(cfr_frames(c, 0.0, Fraction(20), 0, 40))
    assert [n for n, _ in frames] == list(range(40))
    # Each output frame shows a source frame from no later than half a frame after its slot.
    assert all(f.time is not None and f.time <= n / 20 + 0.025 + 1e-6 for n, f in frames)
    with av.open(str(src)) as c:
        tail = list(cfr_frames(c, 0.0, Fraction(20), 30, 40))
    assert [n for n, _ in tail] == list(range(30, 40))


def test_encode_settings_close_gops_and_cap_rate() -> None:
    rung = VideoRung("h264", 640, 360, 500_000)
    name, opts = encoder_settings("h264", rung, 49, "veryfast", 1)
    assert name == "libx264" and "scenecut=0" in opts["x264-params"] and "open-gop=0" in opts["x264-params"]
    assert opts["forced-idr"] == "1" and int(opts["maxrate"]) == 750_000 and int(opts["bufsize"]) == 1_000_000
    assert encoder_settings("hevc", rung, 49, "veryfast", 1)[0] == "libx265"
    assert encoder_settings("av1", rung, 49, "veryfast", 1)[0] == "libsvtav1"
    crf = VideoRung("h264", 640, 360, 500_000, 23.5)
    assert encoder_settings("h264", crf, 49, "veryfast", 1)[1]["crf"] == "23.5"
    assert rc_bit_rate(crf) == 0 and rc_bit_rate(rung) == 500_000
    trial = encoder_settings("h264", VideoRung("h264", 640, 360, 0, 30.0), 49, "veryfast", 1)[1]
    assert "maxrate" not in trial and trial["crf"] == "30"  # a trial maps a CRF's own rate: uncapped
    _, av1 = encoder_settings("av1", crf, 49, "veryfast", 1)
    assert av1["crf"] == "23.5" and av1["maxrate"] == "750000"


def test_encode_chunk_is_the_same_with_or_without_the_decode_thread(tmp_path: Path,
                                                                    fixed_heap: ProcessPoolExecutor) -> None:
    src = make_master(tmp_path / "m.mp4", seconds=1, width=160, height=90, audio=False)
    rungs = (VideoRung("h264", 160, 90, 150_000, 26.0), VideoRung("h264", 96, 54, 60_000))
    outs = []
    for helper in (True, False):
        out = tmp_path / str(helper)
        out.mkdir()
        job = ChunkJob(str(src), 0.0, Fraction(24), 0, 24, (0, 12), 25, rungs, str(out), 0, prefetch=helper)
        paths = fixed_heap.submit(encode_chunk, job).result()
        outs.append({rid: Path(p).read_bytes() for rid, p in paths.items()})
    assert outs[0] == outs[1] and len(outs[0]) == 2
