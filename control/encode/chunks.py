"""Where segments start and how the title splits into chunks for parallel encoding (pure).

Every rendition of every codec forces a keyframe on the same output frame indices, so segment
boundaries align everywhere; chunks are runs of whole segments, so each chunk starts on a
keyframe and the encoded chunks join by concatenation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Chunk:
    index: int
    start_frame: int
    end_frame: int
    #: Output frame indices (absolute) that must be IDR frames: the segment starts in this chunk.
    keyframes: tuple[int, ...]


def frame_count(duration: float, fps: Fraction) -> int:
    """Frames of the constant-rate output for ``duration`` seconds (at least one)."""
    return max(1, math.floor(duration * fps + Fraction(1, 1000)))


def segment_starts(n_frames: int, fps: Fraction, segment_seconds: float) -> tuple[int, ...]:
    """First frame of every segment.

    Boundaries sit at the frame nearest each multiple of the segment length, so a 29.97 fps title
    with 4 s segments alternates 120- and 119-frame segments instead of drifting.  A final sliver
    shorter than a quarter segment is merged into its predecessor: a 0.1 s segment helps nobody.
    """
    seg = Fraction(segment_seconds).limit_denominator(1000)
    starts: list[int] = []
    k = 0
    while True:
        b = round(k * seg * fps)
        if b >= n_frames:
            break
        starts.append(b)
        k += 1
    if len(starts) > 1 and n_frames - starts[-1] < seg * fps / 4:
        starts.pop()
    return tuple(starts)


def plan_chunks(starts: tuple[int, ...], n_frames: int, workers: int, per_worker: int = 3) -> tuple[Chunk, ...]:
    """Group segments into about ``workers * per_worker`` chunks of similar length.

    More chunks than workers keeps both cores busy to the end when chunks differ in difficulty;
    one worker gets one chunk (no joins, no repeated decoder seeks).
    """
    if not starts or starts[0] != 0:
        raise ValueError("segment starts must begin at frame 0")
    n_chunks = 1 if workers <= 1 else min(len(starts), workers * per_worker)
    bounds = [starts[round(i * len(starts) / n_chunks)] for i in range(n_chunks)]
    chunks: list[Chunk] = []
    for i, first in enumerate(bounds):
        end = bounds[i + 1] if i + 1 < len(bounds) else n_frames
        chunks.append(Chunk(i, first, end, tuple(s for s in starts if first <= s < end)))
    return tuple(chunks)
