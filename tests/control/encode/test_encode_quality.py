"""Quality measurement: PSNR and SSIM agree with their definitions; trial points behave."""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from control.encode.quality import SsimMeter, TrialJob, luma, psnr, run_trial, sample_windows


def _frame(img: np.ndarray) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")


def test_encode_psnr_matches_the_formula() -> None:
    ref = np.full((10, 10), 100, np.uint8)
    test = ref.copy()
    test[0, 0] = 110  # one pixel off by 10: MSE = 100 / 100 = 1
    assert psnr(ref, test) == pytest.approx(10 * math.log10(255**2))
    assert psnr(ref, ref) == 100.0
    with pytest.raises(ValueError):
        psnr(ref, ref[:5])


def test_encode_luma_is_the_y_plane_even_for_odd_widths() -> None:
    img = np.zeros((19, 33, 3), np.uint8)
    img[:, 17:] = 255  # black left, white right
    y = luma(_frame(img))
    assert y.shape == (19, 33)
    assert abs(int(y[:, :15].mean()) - 16) <= 2 and abs(int(y[:, 19:].mean()) - 235) <= 2


def test_encode_ssim_is_one_for_identical_and_lower_for_damaged() -> None:
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (36, 64, 3), dtype=np.uint8)
    blurred = ((img.astype(np.float32) + np.roll(img, 1, axis=1) + np.roll(img, 1, axis=0)) / 3).astype(np.uint8)
    meter = SsimMeter(64, 36)
    assert meter(_frame(img), _frame(img)) == pytest.approx(1.0)
    assert meter(_frame(blurred), _frame(img)) < 0.9


def test_encode_sample_windows_spread_or_cover() -> None:
    assert sample_windows(30, Fraction(24)) == [(0, 30)]
    wins = sample_windows(2400, Fraction(24))
    assert len(wins) == 3 and all(b - a == 24 for a, b in wins)
    assert wins[0][0] > 0 and wins[-1][1] < 2400


def test_encode_trial_points_improve_with_bitrate(master: Path) -> None:
    job = TrialJob(str(master), 0.0, Fraction(24), ((0, 24),), "h264", 416, 234, (60_000, 600_000), "veryfast")
    low, high = run_trial(job)
    assert low.bitrate < high.bitrate
    assert low.quality < high.quality and low.ssim is not None and high.ssim is not None
    assert 0 < low.ssim < high.ssim <= 1


def test_encode_crf_trials_count_keyframes_at_the_titles_rate(master: Path, fixed_heap: ProcessPoolExecutor) -> None:
    # Two one-second windows, each starting with an IDR; the title has one every four seconds.
    job = TrialJob(str(master), 0.0, Fraction(24), ((0, 24), (48, 72)), "h264", 416, 234, (), "veryfast",
                   crfs=(24, 34))
    sampled = fixed_heap.submit(run_trial, job).result()
    title = fixed_heap.submit(run_trial, replace(job, keyframe_interval=96)).result()
    assert [p.crf for p in sampled] == [24, 34] and [p.requested for p in sampled] == [0, 0]
    assert [p.quality for p in title] == [p.quality for p in sampled]
    for s, t in zip(sampled, title, strict=True):
        assert t.bitrate < s.bitrate
    assert sampled[0].bitrate > sampled[1].bitrate and sampled[0].quality > sampled[1].quality
