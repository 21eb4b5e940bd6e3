"""Measuring quality for the per-title ladder: trial encodes of sampled scenes, PSNR at source size.

Each trial job (one codec at one resolution) decodes the sample windows once, encodes them at
every candidate bitrate in memory (no files), decodes the result, scales it back up to the
source size the way a player's display would, and compares luma against the source (PSNR, dB).
VMAF is not in the PyAV wheels; PSNR is what the BD-rate bench uses too, so the two agree.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import av
import numpy as np
from av.video.frame import PictureType
from av.video.reformatter import Interpolation, VideoReformatter
from numpy.typing import NDArray

from .chunks import frame_count
from .encoder import cfr_frames, encoder_settings, rc_bit_rate
from .errors import EncodeFailed, one_line
from .ladder import CRF_GRID, RDPoint, candidate_bitrates, candidate_heights, output_size
from .probe import ProbeResult
from .spec import Codec, RateControl, VideoRung

DECODERS = {"h264": "h264", "hevc": "hevc", "av1": "libdav1d"}
T = TypeVar("T")
MapFn = Callable[[Callable[[Any], T], Sequence[Any], Callable[[int], None]], list[T]]


def luma(frame: av.VideoFrame) -> NDArray[np.uint8]:
    """The Y plane of a planar YUV frame as a 2-D array (a view, no copy)."""
    plane = frame.planes[0]
    rows: NDArray[np.uint8] = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
    return rows[:, : plane.width]


def psnr(ref: NDArray[np.uint8], test: NDArray[np.uint8]) -> float:
    """Peak signal-to-noise ratio of two 8-bit planes, dB; identical planes give 100."""
    if ref.shape != test.shape:
        raise ValueError(f"plane shapes differ: {ref.shape} vs {test.shape}")
    mse = float(np.mean((ref.astype(np.float64) - test.astype(np.float64)) ** 2))
    return 100.0 if mse <= 1e-10 else min(100.0, 10 * math.log10(255.0**2 / mse))


class SsimMeter:
    """Luma SSIM of frame pairs through FFmpeg's ``ssim`` filter (C, SIMD), one graph per size."""

    def __init__(self, width: int, height: int) -> None:
        self.graph = av.filter.Graph()
        tb = Fraction(1, 1000)
        fmt = av.VideoFormat("yuv420p")
        self.main = self.graph.add_buffer(width=width, height=height, format=fmt, time_base=tb)
        self.ref = self.graph.add_buffer(width=width, height=height, format=fmt, time_base=tb)
        ssim = self.graph.add("ssim")
        self.sink = self.graph.add("buffersink")
        self.main.link_to(ssim, 0, 0)
        self.ref.link_to(ssim, 0, 1)
        ssim.link_to(self.sink)
        self.graph.configure()
        self.count = 0

    def __call__(self, test: av.VideoFrame, ref: av.VideoFrame) -> float:
        """SSIM-Y of two yuv420p frames of this meter's size (their pts are overwritten)."""
        for src, frame in ((self.main, test), (self.ref, ref)):
            frame.pts, frame.time_base = self.count, Fraction(1, 1000)
            src.push(frame)
        self.count += 1
        out = self.sink.pull()
        return float(out.metadata["lavfi.ssim.Y"])


def sample_windows(n_frames: int, fps: Fraction, windows: int = 3, seconds: float = 1.0) -> list[tuple[int, int]]:
    """``windows`` spans of ``seconds`` spread evenly over the title (the whole title if short)."""
    length = max(1, round(seconds * fps))
    if n_frames <= length * windows:
        return [(0, n_frames)]
    spacing = n_frames / windows
    return [(int(spacing * (i + 0.5)) - length // 2, int(spacing * (i + 0.5)) - length // 2 + length)
            for i in range(windows)]


@dataclass(frozen=True)
class TrialJob:
    master: str
    start_time: float
    fps: Fraction
    windows: tuple[tuple[int, int], ...]
    codec: Codec
    width: int
    height: int
    bitrates: tuple[int, ...]
    preset: str
    threads: int = 1
    #: When set, the trial encodes at these CRFs (uncapped) instead of at ``bitrates``.
    crfs: tuple[float, ...] = ()
    #: Frames per keyframe in the title (its frames over its segments); 0 = count bits as sampled.
    keyframe_interval: float = 0.0


def run_trial(job: TrialJob) -> list[RDPoint]:
    """Worker entry point: the (bitrate, PSNR) points of one codec at one resolution."""
    try:
        with av.open(job.master, metadata_errors="ignore") as src:
            frames = [f for a, b in job.windows for _, f in cfr_frames(src, job.start_time, job.fps, a, b)]
        if not frames:
            raise EncodeFailed("trial: no frames in the sample windows")
        ref = [f.reformat(format="yuv420p") for f in frames]
        ref_y = [luma(f) for f in ref]
        width, height = frames[0].width, frames[0].height
        scaler = VideoReformatter()
        scaled = [scaler.reformat(f, width=job.width, height=job.height, format="yuv420p",
                                  interpolation=Interpolation.BICUBIC) for f in frames]
        points = []
        settings = [VideoRung(job.codec, job.width, job.height, 0, crf) for crf in job.crfs] or [
            VideoRung(job.codec, job.width, job.height, bitrate) for bitrate in job.bitrates]
        for rung in settings:
            sizes, decoded = _encode_decode(job, scaled, rung)
            up = VideoReformatter()
            meter = SsimMeter(width, height)
            psnrs, ssims = [], []
            for r, ry, d in zip(ref, ref_y, decoded, strict=True):
                shown = up.reformat(d, width=width, height=height, format="yuv420p",
                                    interpolation=Interpolation.BICUBIC)
                psnrs.append(psnr(ry, luma(shown)))
                ssims.append(meter(shown, r))
            points.append(RDPoint(job.codec, job.width, job.height, _bitrate(job, sizes), float(np.mean(psnrs)),
                                  float(np.mean(ssims)), requested=rung.bitrate, crf=rung.crf))
        return points
    except av.error.FFmpegError as exc:
        raise EncodeFailed(f"trial {job.codec} {job.height}p: {one_line(str(exc), 160)}") from None


def _encode_decode(
    job: TrialJob, frames: list[av.VideoFrame], rung: VideoRung
) -> tuple[list[tuple[int, bool]], list[av.VideoFrame]]:
    """Encode ``frames`` (windows back to back, an IDR at each window start) and decode them again."""
    name, options = encoder_settings(job.codec, rung, 10_000, job.preset, job.threads)
    enc = av.CodecContext.create(name, "w")
    assert isinstance(enc, av.video.codeccontext.VideoCodecContext)
    enc.width, enc.height, enc.pix_fmt = job.width, job.height, "yuv420p"
    enc.time_base = 1 / job.fps
    enc.framerate = job.fps
    enc.bit_rate = rc_bit_rate(rung)
    enc.options = options
    starts = set()
    pos = 0
    for a, b in job.windows:
        starts.add(pos)
        pos += b - a
    packets: list[av.Packet[Any]] = []
    for i, frame in enumerate(frames):
        frame.pts = i
        frame.time_base = 1 / job.fps
        frame.pict_type = PictureType.I if i in starts else PictureType.NONE
        packets += enc.encode(frame)
    packets += enc.encode(None)
    dec = av.CodecContext.create(DECODERS[job.codec], "r")
    assert isinstance(dec, av.video.codeccontext.VideoCodecContext)
    decoded: list[av.VideoFrame] = []
    for packet in packets:
        decoded += dec.decode(packet)
    decoded += dec.decode(None)
    if len(decoded) != len(frames):
        raise EncodeFailed(f"trial {job.codec} {job.height}p: decoded {len(decoded)} of {len(frames)} frames")
    decoded.sort(key=lambda f: f.pts if f.pts is not None else 0)
    return [(p.size, p.is_keyframe) for p in packets], decoded


def _bitrate(job: TrialJob, sizes: list[tuple[int, bool]]) -> int:
    """Bits per second the title would take: keyframes at the title's rate, not the samples'.

    The samples start an IDR at every window (a second apart); the title has one a segment.
    Keyframes cost several times a predicted frame, so the raw sample rate would overstate the
    title's by a good part, and a CRF chosen from it would land well below its target.
    """
    key = [n for n, k in sizes if k]
    other = [n for n, k in sizes if not k]
    if job.keyframe_interval <= 0 or not key or not other:
        per_frame = sum(n for n, _ in sizes) / len(sizes)
    else:
        share = 1 / job.keyframe_interval
        per_frame = sum(key) / len(key) * share + sum(other) / len(other) * (1 - share)
    return round(per_frame * 8 * float(job.fps))


@dataclass(frozen=True)
class RenditionCheck:
    """A packaged rendition to score against its master: init segment first, then media segments."""

    master: str
    start_time: float
    fps: Fraction
    n_frames: int
    files: tuple[str, ...]


def measure_rendition(job: RenditionCheck) -> tuple[float, float]:
    """Mean PSNR-Y (dB) and SSIM-Y of a whole packaged rendition, shown at the master's size.

    Decodes the CMAF track as a player would (init + segments back to back, clear content only)
    in step with the constant-rate master frames, so what is scored is what was published.
    """
    data = b"".join(Path(f).read_bytes() for f in job.files)
    try:
        with av.open(job.master, metadata_errors="ignore") as src, av.open(io.BytesIO(data), "r", format="mp4") as enc:
            up = VideoReformatter()
            meter: SsimMeter | None = None
            psnrs, ssims = [], []
            decoded = enc.decode(video=0)
            for _, ref_frame in cfr_frames(src, job.start_time, job.fps, 0, job.n_frames):
                test = next(decoded, None)
                if test is None:
                    break
                ref = ref_frame.reformat(format="yuv420p")
                if meter is None:
                    meter = SsimMeter(ref.width, ref.height)
                shown = up.reformat(test, width=ref.width, height=ref.height, format="yuv420p",
                                    interpolation=Interpolation.BICUBIC)
                psnrs.append(psnr(luma(ref), luma(shown)))
                ssims.append(meter(shown, ref))
    except av.error.FFmpegError as exc:
        raise EncodeFailed(f"measure {Path(job.files[0]).parent.name}: {one_line(str(exc), 160)}") from None
    if len(psnrs) != job.n_frames:
        raise EncodeFailed(f"measure {Path(job.files[0]).parent.name}: {len(psnrs)} of {job.n_frames} frames")
    return float(np.mean(psnrs)), float(np.mean(ssims))


def trial_jobs(info: ProbeResult, fps: Fraction, codecs: Sequence[Codec], preset: str,
               rate_control: RateControl = "capped-crf", keyframe_interval: float = 0.0) -> list[TrialJob]:
    """One job per codec and candidate resolution: a CRF grid, or for ABR ladders a bitrate grid."""
    n_frames = frame_count(info.duration, fps)
    windows = tuple(sample_windows(n_frames, fps))
    jobs = []
    for codec in codecs:
        for h in candidate_heights(info.height):
            w, hh = output_size(info.display_width, info.height, h)
            scale = 0.65 if codec == "hevc" else 0.55 if codec == "av1" else 1.0
            bitrates = tuple(max(40_000, round(b * scale / 1000) * 1000)
                             for b in candidate_bitrates(info.display_width, info.height, float(fps)))
            crfs = CRF_GRID[codec] if rate_control == "capped-crf" else ()
            jobs.append(TrialJob(info.path, info.start_time, fps, windows, codec, w, hh, bitrates, preset, crfs=crfs,
                                 keyframe_interval=keyframe_interval))
    return jobs


def measure_points(
    info: ProbeResult,
    fps: Fraction,
    codecs: Sequence[Codec],
    preset: str,
    run: MapFn[list[RDPoint]],
    progress: Callable[[float], None],
    rate_control: RateControl = "capped-crf",
    keyframe_interval: float = 0.0,
) -> list[RDPoint]:
    jobs = trial_jobs(info, fps, codecs, preset, rate_control, keyframe_interval)
    results = run(run_trial, jobs, lambda n: progress(n / len(jobs)))
    return [p for points in results for p in points]
