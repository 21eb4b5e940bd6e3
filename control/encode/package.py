"""Join encoded chunks into CMAF tracks: one init segment plus numbered media segments each.

Every chunk's muxer started its clock at zero, so each fragment is re-timed by its chunk's start
and renumbered.  Chunks of one rendition must share a sample description (same encoder settings
give the same SPS/PPS); if they do not, the join would produce undecodable output, so it fails.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from . import boxes
from .errors import EncodeFailed


@dataclass(frozen=True)
class Segment:
    number: int
    #: Path relative to the title root, POSIX separators.
    path: str
    start: int
    duration: int
    size: int
    #: Bytes from the segment start through its first (key) frame: the I-frame playlist range.
    keyframe_bytes: int


@dataclass(frozen=True)
class Track:
    """One CMAF track (a rendition) as the manifests need to describe it."""

    id: str
    kind: str  # "video" | "audio"
    codec: str
    codec_family: str  # h264 | hevc | av1 | aac
    width: int
    height: int
    fps: Fraction | None
    timescale: int
    target_bitrate: int
    init_path: str
    segments: tuple[Segment, ...]

    @property
    def duration_ticks(self) -> int:
        return sum(s.duration for s in self.segments)

    @property
    def average_bitrate(self) -> int:
        seconds = self.duration_ticks / self.timescale
        return round(sum(s.size for s in self.segments) * 8 / seconds) if seconds > 0 else 0

    @property
    def peak_bitrate(self) -> int:
        rates = [s.size * 8 * self.timescale / s.duration for s in self.segments if s.duration > 0]
        return round(max(rates)) if rates else 0


def join_chunks(
    chunk_files: list[tuple[int, str]],
    out_root: Path,
    track_id: str,
    *,
    kind: str,
    codec_family: str,
    fps: Fraction | None,
    target_bitrate: int,
) -> Track:
    """Cut ``[(start_frame, path)]`` chunk files (in order) into ``out_root/track_id/``."""
    rel_dir = track_id
    (out_root / rel_dir).mkdir(parents=True, exist_ok=True)
    init_ref: bytes | None = None
    info: boxes.TrackInfo | None = None
    segments: list[Segment] = []
    for start_frame, path in chunk_files:
        data = Path(path).read_bytes()
        init, fragments = boxes.split_fmp4(data)
        tinfo = boxes.track_info(init)
        if info is None:
            info, init_ref = tinfo, init
        elif tinfo.stsd != info.stsd or tinfo.timescale != info.timescale:
            raise EncodeFailed(f"{track_id}: chunk {path!r} has a different codec configuration; cannot join")
        offset = 0
        if fps is not None and start_frame:
            ticks = Fraction(info.timescale) / fps
            if ticks.denominator != 1:
                raise EncodeFailed(f"{track_id}: timescale {info.timescale} is not a multiple of {fps} fps")
            offset = start_frame * int(ticks)
        for frag in fragments:
            number = len(segments) + 1
            frag_out = boxes.retime_fragment(frag, offset, number)
            finfo = boxes.fragment_info(frag_out, info.default_duration)
            rel = f"{rel_dir}/seg_{number:05d}.m4s"
            _write(out_root / rel, frag_out)
            segments.append(
                Segment(number, rel, finfo.base_time, finfo.duration, len(frag_out), finfo.first_sample_end)
            )
    if info is None or init_ref is None or not segments:
        raise EncodeFailed(f"{track_id}: the encoder produced no media")
    _write(out_root / rel_dir / "init.mp4", init_ref)
    for prev, nxt in itertools.pairwise(segments):
        if prev.start + prev.duration != nxt.start:
            raise EncodeFailed(f"{track_id}: gap or overlap between segments {prev.number} and {nxt.number}")
    return Track(
        id=track_id,
        kind=kind,
        codec=info.codec,
        codec_family=codec_family,
        width=info.width,
        height=info.height,
        fps=fps,
        timescale=info.timescale,
        target_bitrate=target_bitrate,
        init_path=f"{rel_dir}/init.mp4",
        segments=tuple(segments),
    )


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
