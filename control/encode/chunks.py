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


def plan_chunks(starts: tuple[int, ...], n_frames: int, workers: int) -> tuple[Chunk, ...]:
    """Group segments into chunks that shrink towards the end of the title (guided scheduling).

    Each chunk takes about ``1 / (2 * workers)`` of the segments still unassigned, but at least
    ``1 / (8 * workers)`` of them all (and one), so there are at most about ``5 * workers`` chunks.  Workers take
    chunks in order, so the big ones go first and the last few are small: when one worker
    finishes, the other has little left, instead of up to a whole equal-sized chunk.  One worker
    gets one chunk (no joins, no repeated decoder seeks).
    """
    if not starts or starts[0] != 0:
        raise ValueError("segment starts must begin at frame 0")
    total = len(starts)
    sizes: list[int] = []
    if workers <= 1:
        sizes = [total]
    else:
        least = math.ceil(total / (8 * workers))
        left = total
        while left:
            size = min(left, max(least, math.ceil(left / (2 * workers))))
            sizes.append(size)
            left -= size
    chunks: list[Chunk] = []
    first_seg = 0
    for i, size in enumerate(sizes):
        first = starts[first_seg]
        end = starts[first_seg + size] if first_seg + size < total else n_frames
        chunks.append(Chunk(i, first, end, starts[first_seg:first_seg + size]))
        first_seg += size
    return tuple(chunks)
