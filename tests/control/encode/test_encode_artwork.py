"""Artwork picking (pure) and the stills and sprites of a published title."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import av
import numpy as np

from control.encode.artwork import pick_stills, sharpness
from control.encode.fileset import FileSetManifest


def test_encode_pick_stills_skips_black_and_blurry_and_spreads() -> None:
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (54, 96), dtype=np.uint8)
    black = np.full((54, 96), 5, np.uint8)
    flat = np.full((54, 96), 128, np.uint8)
    samples = [(0.0, black), (0.5, flat), (1.0, sharp), (1.5, sharp), (2.0, black), (3.0, sharp.T[:54, :96].copy())]
    stills = pick_stills(samples, 3, min_gap=1.0)
    times = [s.time for s in stills]
    assert 0.0 not in times and 0.5 not in times and 2.0 not in times
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(times))
    assert sharpness(sharp) > sharpness(flat) == 0.0


def test_encode_title_has_jpeg_artwork_and_thumbnail_track(published: tuple[Path, FileSetManifest]) -> None:
    root, _ = published
    index = json.loads((root / "artwork" / "candidates.json").read_text())
    assert 2 <= len(index) <= 4
    for entry in index:
        with av.open(str(root / "artwork" / entry["file"])) as c:
            frame = next(c.decode(video=0))
            assert frame.width == 640 and frame.to_ndarray(format="gray").mean() > 28
    vtt = (root / "thumbs" / "thumbs.vtt").read_text().splitlines()
    assert vtt[0] == "WEBVTT"
    cues = [line for line in vtt if "#xywh=" in line]
    assert len(cues) == 2  # 4 s at one thumbnail per 2 s
    with av.open(str(root / "thumbs" / cues[0].split("#")[0])) as c:
        assert next(c.decode(video=0)).width == 160 * 5
