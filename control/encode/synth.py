"""Generated masters: test patterns, noise, moving shapes and a tone, encoded with PyAV.

Tests, benches and ``nearcast demo`` need a title without shipping a video file.  The pattern
changes scene every ``scene_seconds`` (so artwork picking and scene sampling have something to
find) and carries film-like noise (so bitrate matters).
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from numpy.typing import NDArray

AUDIO_RATE = 48000


def make_master(
    path: Path | str,
    *,
    seconds: float = 4.0,
    width: int = 640,
    height: int = 360,
    fps: Fraction | int = 24,
    audio: bool = True,
    vfr: bool = False,
    scene_seconds: float = 2.0,
    noise: float = 6.0,
    seed: int = 1,
) -> Path:
    """Write a master to ``path`` (container chosen by suffix) and return the path."""
    out_path = Path(path)
    rate = Fraction(fps)
    rng = np.random.default_rng(seed)
    n_frames = round(seconds * rate)
    tb = Fraction(1, 90000) if vfr else 1 / rate
    with av.open(os.fspath(out_path), "w") as out:
        odd = width % 2 or height % 2
        # 4:2:0 H.264 cannot carry odd dimensions; FFV1 (lossless, in Matroska) can.
        vs = out.add_stream("ffv1" if odd else "libx264", rate=rate)
        pix_fmt = "yuv444p" if odd else "yuv420p"
        vs.width, vs.height, vs.pix_fmt = width, height, pix_fmt
        vs.time_base = tb
        if not odd:
            # A keyframe a second, like a mezzanine file: chunk workers seek without decoding far.
            gop = max(1, round(rate))
            params = f"keyint={gop}:log-level=error"
            vs.codec_context.options = {"crf": "14", "preset": "ultrafast", "x264-params": params}
        aus = None
        if audio:
            aus = out.add_stream("aac", rate=AUDIO_RATE)
            aus.layout = "stereo"
        t = 0.0
        for i in range(n_frames):
            img = _frame(i, rate, width, height, scene_seconds, noise, rng)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format=pix_fmt)
            if vfr:
                # Irregular spacing around the nominal rate: 0.5x to 1.5x a frame interval.
                frame.pts = round(t * 90000)
                t += float(1 / rate) * float(rng.uniform(0.5, 1.5))
            else:
                frame.pts = i
            frame.time_base = tb
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if aus is not None:
            total = round((t if vfr else seconds) * AUDIO_RATE)
            for start in range(0, total, 1024):
                n = min(1024, total - start)
                tt = np.arange(start, start + n) / AUDIO_RATE
                tone = 0.2 * np.sin(2 * np.pi * (330 + 110 * (start // AUDIO_RATE % 3)) * tt)
                samples = np.stack([tone, tone * 0.8]).astype(np.float32)
                aframe = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo")
                aframe.sample_rate = AUDIO_RATE
                aframe.pts = start
                for packet in aus.encode(aframe):
                    out.mux(packet)
            for packet in aus.encode():
                out.mux(packet)
    return out_path


def _frame(
    i: int, rate: Fraction, width: int, height: int, scene_seconds: float, noise: float, rng: np.random.Generator
) -> NDArray[np.uint8]:
    t = float(i / rate)
    scene = int(t // scene_seconds)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    palette = np.array([[1.0, 0.6, 0.3], [0.3, 0.8, 1.0], [0.9, 0.3, 0.8], [0.5, 1.0, 0.4]][scene % 4], np.float32)
    # Scene-dependent backdrop: gradients and stripes of different spatial detail.
    freq = (scene % 3 + 1) * 0.05
    base = 96 + 60 * np.sin(xx * freq + t * 2.0) * np.cos(yy * freq * 0.7 - t)
    img = base[..., None] * palette[None, None, :]
    # Colour bars in the top band (testsrc-like).
    bars = np.array([[235, 235, 235], [235, 235, 16], [16, 235, 235], [16, 235, 16], [235, 16, 235], [235, 16, 16]])
    band = height // 8
    img[:band] = bars[(xx[:band] * len(bars) // width).astype(int)]
    # Moving shapes: a disc and a box.
    cx = (0.5 + 0.4 * np.sin(t * 1.3 + scene)) * width
    cy = (0.5 + 0.3 * np.cos(t * 0.9)) * height
    r = min(width, height) / 6
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
    img[disc] = (255, 220, 40)
    bx = int((t * width / 3) % width)
    img[height // 2 : height // 2 + height // 6, bx : bx + width // 8] = (30, 30, 200)
    if noise > 0:
        img += rng.normal(0.0, noise, size=img.shape[:2])[..., None]
    return np.asarray(np.clip(img, 0, 255), dtype=np.uint8)
