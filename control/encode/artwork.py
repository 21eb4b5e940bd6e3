"""Artwork candidates and trick-play thumbnails, from one decode pass over the master.

Artwork: stills just after scene changes (a new shot is usually a composed one), skipping black
and blurry frames, spread over the title; the recommender's artwork bandit chooses among them.
Trick play: small thumbnails at a fixed interval tiled into JPEG sprites, with a WebVTT track
mapping time ranges to sprite regions (``sprite.jpg#xywh=x,y,w,h``) for scrub previews.
JPEGs come from FFmpeg's MJPEG encoder, so no imaging library is needed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from numpy.typing import NDArray

from .errors import EncodeFailed, one_line
from .probe import ProbeResult

THUMB_W, THUMB_H = 160, 90
GRID = 5
BLACK_LUMA = 28.0
ANALYSIS_W, ANALYSIS_H = 96, 54


@dataclass(frozen=True)
class Still:
    time: float
    score: float
    brightness: float
    sharpness: float


def sharpness(gray: NDArray[np.uint8]) -> float:
    """Variance of a 4-neighbour Laplacian: low for blurry or flat frames."""
    g = gray.astype(np.float32)
    lap = -4 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    return float(lap.var())


def pick_stills(samples: list[tuple[float, NDArray[np.uint8]]], count: int, min_gap: float) -> list[Still]:
    """Choose up to ``count`` stills (pure): scene-change strength times sharpness, no black frames,
    at least ``min_gap`` seconds apart."""
    scored: list[Still] = []
    prev: NDArray[np.float32] | None = None
    for t, gray in samples:
        hist = np.histogram(gray, bins=32, range=(0, 256))[0].astype(np.float32)
        hist /= max(1.0, float(hist.sum()))
        change = 1.0 if prev is None else float(np.abs(hist - prev).sum())
        prev = hist
        bright = float(gray.mean())
        sharp = sharpness(gray)
        if bright < BLACK_LUMA or sharp < 5.0:
            continue
        scored.append(Still(t, (0.2 + change) * np.log1p(sharp), bright, sharp))
    chosen: list[Still] = []
    for still in sorted(scored, key=lambda s: -s.score):
        if all(abs(still.time - c.time) >= min_gap for c in chosen):
            chosen.append(still)
        if len(chosen) >= count:
            break
    return sorted(chosen, key=lambda s: s.time)


def jpeg(frame: av.VideoFrame, width: int, height: int, quality: int = 4) -> bytes:
    enc = av.CodecContext.create("mjpeg", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuvj420p"
    enc.time_base = Fraction(1, 25)
    enc.options = {"qmin": str(quality), "qmax": str(quality)}
    img = frame.reformat(width=width, height=height, format="yuvj420p")
    img.pts = 0
    data = b"".join(bytes(p) for p in enc.encode(img))
    data += b"".join(bytes(p) for p in enc.encode(None))
    return data


def _vtt_time(t: float) -> str:
    ms = round(t * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


@dataclass(frozen=True)
class ArtworkJob:
    master: str
    start_time: float
    duration: float
    width: int
    height: int
    out_dir: str
    candidates: int
    thumb_interval: float = 2.0


def run_artwork(job: ArtworkJob) -> list[str]:
    """Worker entry point: writes ``artwork/`` and ``thumbs/`` under ``out_dir``; returns paths.

    One pass analyses tiny grey samples and fills thumbnail sprites as it goes (memory stays
    bounded for long titles); a second pass seeks to the chosen stills to encode them full size.
    """
    out = Path(job.out_dir)
    art_dir, thumb_dir = out / "artwork", out / "thumbs"
    art_dir.mkdir(exist_ok=True)
    thumb_dir.mkdir(exist_ok=True)
    step = max(0.1, min(0.5, job.duration / 40))
    samples: list[tuple[float, NDArray[np.uint8]]] = []
    sprites = _SpriteWriter(thumb_dir, job.thumb_interval, job.duration)
    next_sample, next_thumb = 0.0, 0.0
    art_w = min(job.width, 640) // 2 * 2
    art_h = round(art_w * job.height / job.width) // 2 * 2
    written: list[str] = []
    try:
        with av.open(job.master, metadata_errors="ignore") as src:
            vs = src.streams.video[0]
            vs.thread_type = "AUTO"
            for frame in src.decode(vs):
                t = (frame.time or 0.0) - job.start_time
                if t >= next_thumb:
                    sprites.add(np.asarray(frame.reformat(width=THUMB_W, height=THUMB_H, format="rgb24").to_ndarray(),
                                           dtype=np.uint8))
                    next_thumb += job.thumb_interval
                if t >= next_sample:
                    gray = frame.reformat(width=ANALYSIS_W, height=ANALYSIS_H, format="gray").to_ndarray()
                    samples.append((t, np.asarray(gray, dtype=np.uint8)))
                    next_sample += step
            written += sprites.close()
            stills = pick_stills(samples, job.candidates, min_gap=max(job.duration / (job.candidates * 2 + 1), step))
            index = []
            for i, still in enumerate(stills, 1):
                frame = _frame_at(src, job.start_time + still.time)
                name = f"candidate_{i:02d}.jpg"
                (art_dir / name).write_bytes(jpeg(frame, art_w, art_h))
                index.append({"file": name, "time": round(still.time, 3), "score": round(still.score, 3),
                              "brightness": round(still.brightness, 1), "sharpness": round(still.sharpness, 1)})
                written.append(f"artwork/{name}")
    except av.error.FFmpegError as exc:
        raise EncodeFailed(f"artwork: {one_line(str(exc), 160)}") from None
    (art_dir / "candidates.json").write_text(json.dumps(index, indent=1))
    written.append("artwork/candidates.json")
    return written


def _frame_at(src: av.container.InputContainer, t: float) -> av.VideoFrame:
    vs = src.streams.video[0]
    src.seek(int(t / vs.time_base) if vs.time_base else 0, stream=vs, backward=True)
    last: av.VideoFrame | None = None
    for frame in src.decode(vs):
        last = frame
        if frame.time is not None and frame.time >= t - 1e-3:
            break
    if last is None:
        raise EncodeFailed(f"artwork: no frame at {t:.2f} s")
    return last


class _SpriteWriter:
    """Tiles thumbnails GRIDxGRID per JPEG and writes the WebVTT index, a sheet at a time."""

    def __init__(self, thumb_dir: Path, interval: float, duration: float) -> None:
        self.dir, self.interval, self.duration = thumb_dir, interval, duration
        self.pending: list[NDArray[np.uint8]] = []
        self.count = 0
        self.cues = ["WEBVTT", ""]
        self.written: list[str] = []

    def add(self, rgb: NDArray[np.uint8]) -> None:
        self.pending.append(rgb)
        if len(self.pending) == GRID * GRID:
            self._flush()

    def _flush(self) -> None:
        sheet_no = len(self.written) + 1
        name = f"sprite_{sheet_no:03d}.jpg"
        rows = (len(self.pending) + GRID - 1) // GRID
        sheet = np.zeros((THUMB_H * rows, THUMB_W * GRID, 3), np.uint8)
        for j, th in enumerate(self.pending):
            r, c = divmod(j, GRID)
            sheet[r * THUMB_H : (r + 1) * THUMB_H, c * THUMB_W : (c + 1) * THUMB_W] = th
            t0 = self.count * self.interval
            t1 = min(self.duration, t0 + self.interval)
            self.cues += [f"{_vtt_time(t0)} --> {_vtt_time(t1)}",
                          f"{name}#xywh={c * THUMB_W},{r * THUMB_H},{THUMB_W},{THUMB_H}", ""]
            self.count += 1
        img = av.VideoFrame.from_ndarray(sheet, format="rgb24")
        (self.dir / name).write_bytes(jpeg(img, img.width, img.height, quality=5))
        self.written.append(f"thumbs/{name}")
        self.pending = []

    def close(self) -> list[str]:
        if self.pending:
            self._flush()
        (self.dir / "thumbs.vtt").write_text("\n".join(self.cues))
        return [*self.written, "thumbs/thumbs.vtt"]


def artwork_job(master: Path, info: ProbeResult, out_dir: Path, candidates: int) -> ArtworkJob:
    return ArtworkJob(os.fspath(master), info.start_time, info.duration, info.display_width, info.height,
                      os.fspath(out_dir), candidates)
