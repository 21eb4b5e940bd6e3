"""Look at a master before spending CPU on it, and refuse garbage with a one-line reason.

Everything the encoder later relies on (a decodable video stream, sane dimensions, a frame rate,
frames all the way to the end) is checked here, so a bad upload fails in a second instead of
half-way through an hour of encoding.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from .errors import AbsurdDimensions, BadMaster, EmptyMaster, NotAVideo, NoVideoStream, TruncatedMaster, one_line

MIN_SIDE = 16
MAX_SIDE = 8192
MAX_PIXELS = 8192 * 4320
MAX_DURATION_S = 12 * 3600.0
MAX_FPS = Fraction(240)
#: Still-image demuxers: a picture is not a title.
_IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "gif", "webp_pipe", "tiff_pipe")


@dataclass(frozen=True)
class ProbeResult:
    path: str
    size: int
    format_name: str
    duration: float
    #: Presentation time of the first video frame, seconds; the encoder's zero.
    start_time: float
    width: int
    height: int
    #: Pixel aspect ratio, as the display needs it; 1 for square pixels.
    sample_aspect: Fraction
    fps: Fraction
    vfr: bool
    video_codec: str
    pix_fmt: str
    has_audio: bool
    audio_codec: str | None
    audio_channels: int
    audio_rate: int

    @property
    def display_width(self) -> int:
        return max(2, round(self.width * self.sample_aspect))

    def to_dict(self) -> dict[str, object]:
        return {
            "size": self.size,
            "format": self.format_name,
            "duration": round(self.duration, 3),
            "width": self.width,
            "height": self.height,
            "sample_aspect": str(self.sample_aspect),
            "fps": str(self.fps),
            "vfr": self.vfr,
            "video_codec": self.video_codec,
            "pix_fmt": self.pix_fmt,
            "audio_codec": self.audio_codec,
            "audio_channels": self.audio_channels,
            "audio_rate": self.audio_rate,
        }


def probe(path: Path | str) -> ProbeResult:
    """Describe ``path`` or raise a :class:`BadMaster` subclass whose ``str()`` is one line."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise BadMaster(f"cannot read master {p.name!r}: {one_line(exc.strerror or str(exc))}") from None
    if not p.is_file():
        raise BadMaster(f"master {p.name!r} is not a regular file")
    if size == 0:
        raise EmptyMaster(f"master {p.name!r} is empty (0 bytes)")
    try:
        container = av.open(os.fspath(p), metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        with p.open("rb") as f:
            head = f.read(12)
        if head[4:8] == b"ftyp":
            raise TruncatedMaster(f"master {p.name!r} is an MP4 whose index is missing (truncated upload?)") from None
        raise NotAVideo(f"master {p.name!r} is not a video FFmpeg can read: {one_line(str(exc), 120)}") from None
    with container:
        return _describe(p, size, container)


def _describe(p: Path, size: int, container: av.container.InputContainer) -> ProbeResult:
    fmt = container.format.name
    if not container.streams.video:
        raise NoVideoStream(f"master {p.name!r} has no video stream")
    if any(fmt.startswith(name) for name in _IMAGE_FORMATS):
        raise NotAVideo(f"master {p.name!r} is a still image ({fmt}), not a video")
    vs = container.streams.video[0]
    cc = vs.codec_context
    width, height = int(cc.width or 0), int(cc.height or 0)
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE) or width * height > MAX_PIXELS:
        raise AbsurdDimensions(
            f"master {p.name!r} is {width}x{height}: each side must be {MIN_SIDE}-{MAX_SIDE} pixels"
        )
    duration = _duration(container, vs)
    if duration is None or duration <= 0:
        raise NotAVideo(f"master {p.name!r} has no duration: not a playable video")
    if duration > MAX_DURATION_S:
        raise NotAVideo(f"master {p.name!r} lasts {duration / 3600:.1f} h: the limit is {MAX_DURATION_S / 3600:g} h")
    fps, vfr, first_pts = _frame_rate(container, vs)
    if fps <= 0 or fps > MAX_FPS:
        raise NotAVideo(f"master {p.name!r} has an implausible frame rate {float(fps):.3f}")
    start_time, last_time = _check_decodable(p, container, vs, duration, first_pts)
    sar = vs.sample_aspect_ratio or cc.sample_aspect_ratio or Fraction(1)
    sar = Fraction(sar) if Fraction(sar) > 0 else Fraction(1)
    if not Fraction(1, 4) <= sar <= 4:
        sar = Fraction(1)
    audio = container.streams.audio[0] if container.streams.audio else None
    return ProbeResult(
        path=os.fspath(p),
        size=size,
        format_name=fmt,
        duration=max(duration, last_time - start_time),
        start_time=start_time,
        width=width,
        height=height,
        sample_aspect=sar,
        fps=fps,
        vfr=vfr,
        video_codec=cc.name,
        pix_fmt=str(cc.pix_fmt),
        has_audio=audio is not None,
        audio_codec=audio.codec_context.name if audio is not None else None,
        audio_channels=int(audio.codec_context.channels) if audio is not None else 0,
        audio_rate=int(audio.codec_context.sample_rate or 0) if audio is not None else 0,
    )


def _duration(container: av.container.InputContainer, vs: av.video.stream.VideoStream) -> float | None:
    if vs.duration is not None and vs.time_base is not None:
        return float(vs.duration * vs.time_base)
    if container.duration is not None:
        return float(container.duration / av.time_base)
    return None


def _frame_rate(
    container: av.container.InputContainer, vs: av.video.stream.VideoStream
) -> tuple[Fraction, bool, float | None]:
    """The rate to encode at, whether the source is variable-rate, and its first timestamp.

    Variable frame rate is judged from the spacing of the first few hundred packet timestamps,
    which needs only demuxing, not decoding.
    """
    stamps: list[float] = []
    try:
        for packet in container.demux(vs):
            if packet.pts is not None and packet.time_base is not None:
                stamps.append(float(packet.pts * packet.time_base))
            if len(stamps) >= 300:
                break
    except av.error.FFmpegError:
        pass
    container.seek(0)
    stamps.sort()
    deltas = [b - a for a, b in itertools.pairwise(stamps) if b > a]
    vfr = bool(deltas) and (max(deltas) - min(deltas)) > 0.02 * (sum(deltas) / len(deltas))
    rate = vs.average_rate if vfr else (vs.guessed_rate or vs.average_rate)
    if not rate and deltas:
        rate = Fraction(len(deltas), 1) / Fraction(sum(deltas)).limit_denominator(1000)
    fps = Fraction(rate or 0).limit_denominator(1001)
    if vfr:
        # An average of jittery timestamps is not a rate to encode at: snap to a familiar one.
        fps = min((Fraction(n, d) for n, d in _COMMON_RATES), key=lambda r: abs(float(r) - float(fps)))
    return fps, vfr, stamps[0] if stamps else None


_COMMON_RATES = ((15, 1), (24000, 1001), (24, 1), (25, 1), (30000, 1001), (30, 1), (50, 1), (60000, 1001), (60, 1))


def _check_decodable(
    p: Path,
    container: av.container.InputContainer,
    vs: av.video.stream.VideoStream,
    duration: float,
    first_pts: float | None,
) -> tuple[float, float]:
    """Decode the first frame and a frame near the end: a truncated master fails one of the two."""
    first = _first_frame_time(container, vs)
    if first is None:
        raise TruncatedMaster(f"master {p.name!r} has no decodable video frame")
    start = first_pts if first_pts is not None else first
    target = start + max(0.0, duration - 1.0)
    try:
        container.seek(int(target / vs.time_base), stream=vs, backward=True) if vs.time_base else container.seek(0)
    except av.error.FFmpegError:
        container.seek(0)
    last: float | None = None
    try:
        for frame in container.decode(vs):
            if frame.time is not None:
                last = frame.time
    except av.error.FFmpegError:
        pass
    if last is None or last < start + duration * 0.9 - 1.0:
        seen = 0.0 if last is None else last - start
        raise TruncatedMaster(
            f"master {p.name!r} claims {duration:.1f} s but frames stop at {seen:.1f} s (truncated?)"
        )
    return start, last


def _first_frame_time(container: av.container.InputContainer, vs: av.video.stream.VideoStream) -> float | None:
    container.seek(0)
    try:
        for frame in container.decode(vs):
            return float(frame.time) if frame.time is not None else 0.0
    except av.error.FFmpegError:
        return None
    return None
