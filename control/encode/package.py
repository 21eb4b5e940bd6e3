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
    joiner = TrackJoiner(out_root, track_id, kind=kind, codec_family=codec_family, fps=fps,
                         target_bitrate=target_bitrate)
    for start_frame, path in chunk_files:
        joiner.add(start_frame, path)
    return joiner.finish()


class TrackJoiner:
    """Joins one rendition's chunk files as they arrive, in title order, so the join of the early
    chunks overlaps the encoding of the later ones; :meth:`finish` writes the init segment."""

    def __init__(self, out_root: Path, track_id: str, *, kind: str, codec_family: str, fps: Fraction | None,
                 target_bitrate: int) -> None:
        self.out_root, self.track_id, self.kind, self.codec_family = out_root, track_id, kind, codec_family
        self.fps, self.target_bitrate = fps, target_bitrate
        (out_root / track_id).mkdir(parents=True, exist_ok=True)
        self.init_ref: bytes | None = None
        self.info: boxes.TrackInfo | None = None
        self.segments: list[Segment] = []

    def add(self, start_frame: int, path: str) -> None:
        """Cut the next chunk (starting at output frame ``start_frame``) into numbered segments."""
        track_id = self.track_id
        data = Path(path).read_bytes()
        init, fragments = boxes.split_fmp4(data)
        tinfo = boxes.track_info(init)
        if self.info is None:
            self.info, self.init_ref = tinfo, init
        elif tinfo.stsd != self.info.stsd or tinfo.timescale != self.info.timescale:
            raise EncodeFailed(f"{track_id}: chunk {path!r} has a different codec configuration; cannot join")
        info = self.info
        offset = 0
        if self.fps is not None and start_frame:
            ticks = Fraction(info.timescale) / self.fps
            if ticks.denominator != 1:
                raise EncodeFailed(f"{track_id}: timescale {info.timescale} is not a multiple of {self.fps} fps")
            offset = start_frame * int(ticks)
        for frag in fragments:
            number = len(self.segments) + 1
            frag_out = boxes.retime_fragment(frag, offset, number)
            finfo = boxes.fragment_info(frag_out, info.default_duration)
            rel = f"{track_id}/seg_{number:05d}.m4s"
            _write(self.out_root / rel, frag_out)
            self.segments.append(
                Segment(number, rel, finfo.base_time, finfo.duration, len(frag_out), finfo.first_sample_end)
            )

    def finish(self) -> Track:
        track_id, info, segments = self.track_id, self.info, self.segments
        if info is None or self.init_ref is None or not segments:
            raise EncodeFailed(f"{track_id}: the encoder produced no media")
        _write(self.out_root / track_id / "init.mp4", self.init_ref)
        for prev, nxt in itertools.pairwise(segments):
            if prev.start + prev.duration != nxt.start:
                raise EncodeFailed(f"{track_id}: gap or overlap between segments {prev.number} and {nxt.number}")
        return Track(
            id=track_id,
            kind=self.kind,
            codec=info.codec,
            codec_family=self.codec_family,
            width=info.width,
            height=info.height,
            fps=self.fps,
            timescale=info.timescale,
            target_bitrate=self.target_bitrate,
            init_path=f"{track_id}/init.mp4",
            segments=tuple(segments),
        )


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
