"""Ladders (pure): fixed rungs never upscale; the hull and the per-title choice behave."""

from __future__ import annotations

import itertools
import math

import pytest

from control.encode.ladder import (
    RDPoint,
    _crf_at,
    candidate_heights,
    convex_hull,
    fixed_ladder,
    output_size,
    per_title_ladder,
)


def test_encode_fixed_ladder_never_upscales() -> None:
    rungs = fixed_ladder(1280, 720, ["h264", "hevc"])
    assert max(r.height for r in rungs) == 720
    assert {r.codec for r in rungs} == {"h264", "hevc"}
    h264 = {r.height: r.bitrate for r in rungs if r.codec == "h264"}
    hevc = {r.height: r.bitrate for r in rungs if r.codec == "hevc"}
    assert all(hevc[h] < h264[h] for h in h264)


def test_encode_fixed_ladder_for_a_tiny_source_has_one_rung_at_source_size() -> None:
    rungs = fixed_ladder(321, 181, ["h264"])
    assert [(r.width, r.height) for r in rungs] == [(320, 180)]


def test_encode_output_size_keeps_aspect_and_even() -> None:
    assert output_size(1920, 1080, 360) == (640, 360)
    assert output_size(1440, 1080, 720) == (960, 720)  # 4:3
    assert output_size(853, 480, 4000) == (852, 480)  # never upscaled, even
    w, h = output_size(321, 181, 181)
    assert w % 2 == 0 and h % 2 == 0


def test_encode_candidate_heights_include_source_and_stay_below_it() -> None:
    assert candidate_heights(1080)[-1] == 1080 and max(candidate_heights(500)) == 500


def _curve(height: int, width: int, offset: float, scale: float) -> list[RDPoint]:
    """A saturating R-D curve: quality = offset + scale * log2(bitrate / 100k), capped."""
    return [RDPoint("h264", width, height, b, min(offset + scale * math.log2(b / 100_000), 40 + height / 100))
            for b in (100_000, 200_000, 400_000, 800_000, 1_600_000, 3_200_000)]


def test_encode_hull_is_increasing_and_concave() -> None:
    points = _curve(360, 640, 30, 3) + _curve(720, 1280, 27, 4) + _curve(234, 416, 32, 1.5)
    hull = convex_hull(points)
    assert all(a.bitrate < b.bitrate and a.quality < b.quality for a, b in itertools.pairwise(hull))
    slopes = [(b.quality - a.quality) / math.log(b.bitrate / a.bitrate) for a, b in itertools.pairwise(hull)]
    assert all(s1 >= s2 - 1e-9 for s1, s2 in itertools.pairwise(slopes))
    for p in points:  # nothing lies above the hull
        for a, b in itertools.pairwise(hull):
            if a.bitrate <= p.bitrate <= b.bitrate:
                t = math.log(p.bitrate / a.bitrate) / math.log(b.bitrate / a.bitrate)
                assert p.quality <= a.quality + t * (b.quality - a.quality) + 1e-9


def test_encode_per_title_picks_small_sizes_cheap_and_large_sizes_rich() -> None:
    points = _curve(234, 416, 33, 1.0) + _curve(360, 640, 31, 2.5) + _curve(720, 1280, 27, 4.0)
    rungs = per_title_ladder(points, "h264", max_rungs=6)
    assert 2 <= len(rungs) <= 6
    assert rungs[0].height < rungs[-1].height
    assert all(a.height <= b.height and a.bitrate < b.bitrate for a, b in itertools.pairwise(rungs))


def test_encode_per_title_stops_where_bits_stop_paying() -> None:
    flat = [RDPoint("h264", 640, 360, b, 40 + 0.1 * math.log2(b / 100_000)) for b in (100_000, 400_000, 1_600_000)]
    steep = [RDPoint("h264", 640, 360, 100_000, 30.0), RDPoint("h264", 640, 360, 200_000, 34.0),
             RDPoint("h264", 640, 360, 400_000, 36.0), RDPoint("h264", 640, 360, 800_000, 36.1)]
    assert [r.bitrate for r in per_title_ladder(flat, "h264")] == [100_000]
    assert max(r.bitrate for r in per_title_ladder(steep, "h264")) == 400_000
    assert per_title_ladder(steep, "hevc") == []


def test_encode_per_title_asks_more_of_an_encoder_that_undershoots() -> None:
    # The encoder produced 60 % of what it was asked for at every trial.
    shy = [RDPoint("h264", 640, 360, round(b * 0.6), 30 + 3 * math.log2(b / 100_000), requested=b)
           for b in (100_000, 200_000, 400_000, 800_000)]
    honest = [RDPoint("h264", 640, 360, p.bitrate, p.quality) for p in shy]
    asked = per_title_ladder(shy, "h264")
    plain = per_title_ladder(honest, "h264")
    assert len(asked) == len(plain)
    for a, p in zip(asked, plain, strict=True):
        assert a.bitrate == pytest.approx(p.bitrate / 0.6, rel=0.02)


def _crf_curve(height: int, width: int, offset: float, top: int) -> list[RDPoint]:
    """CRF trials: ``top`` b/s and ``offset`` dB at CRF 16; each 6 CRF steps halve the rate and cost 3 dB."""
    return [RDPoint("h264", width, height, round(top * 2 ** (-(crf - 16) / 6)), offset - (crf - 16) / 2, crf=crf)
            for crf in (16, 22, 28, 34, 40)]


def test_encode_capped_crf_rungs_get_the_crf_that_lands_on_their_bitrate() -> None:
    tops = {360: 3_200_000, 234: 1_280_000}
    points = _crf_curve(360, 640, 44, tops[360]) + _crf_curve(234, 416, 41, tops[234])
    rungs = per_title_ladder(points, "h264")
    assert len(rungs) >= 3 and all(r.rate_control == "capped-crf" for r in rungs)
    assert rungs[0].height == 234 and rungs[-1].height == 360
    for r in rungs:  # the model above, inverted: crf = 16 - 6 log2(bitrate / top)
        assert r.crf == pytest.approx(16 - 6 * math.log2(r.bitrate / tops[r.height]), abs=0.11)
        assert r.to_dict()["crf"] == r.crf and r.to_dict()["maxrate"] == r.bitrate * 3 // 2
    # The bottom rung where the hull crosses 30 dB (234p at CRF 38), the top at the best trial.
    assert rungs[0].bitrate == pytest.approx(tops[234] * 2 ** (-22 / 6), rel=0.01)
    assert rungs[-1].bitrate == tops[360] and rungs[-1].crf == 16
    abr = per_title_ladder(points, "h264", rate_control="abr")
    assert [(r.height, r.bitrate) for r in abr] == [(r.height, r.bitrate) for r in rungs]
    assert all(r.crf is None and r.rate_control == "abr" for r in abr)


def test_encode_rung_crf_is_extrapolated_at_most_half_a_grid_step() -> None:
    curve = sorted(_crf_curve(360, 640, 44, 3_200_000), key=lambda p: p.bitrate)
    assert _crf_at(curve, 3_200_000) == 16 and _crf_at(curve, 3_200_000 * 2 ** -0.5) == 19
    assert _crf_at(curve, 100_000_000) == 13 and _crf_at(curve, 1_000) == 43
