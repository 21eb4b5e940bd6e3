"""Segment boundaries and chunk plans (pure)."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.encode.chunks import frame_count, plan_chunks, segment_starts
from control.encode.stats import IngestStats, JobTime


def test_encode_segment_starts_integer_rate() -> None:
    assert segment_starts(96, Fraction(24), 1.0) == (0, 24, 48, 72)
    assert segment_starts(100, Fraction(25), 2.0) == (0, 50)


def test_encode_segment_starts_ntsc_rate_does_not_drift() -> None:
    fps = Fraction(30000, 1001)
    starts = segment_starts(frame_count(60.0, fps), fps, 4.0)
    lengths = {b - a for a, b in itertools.pairwise(starts)}
    assert lengths <= {119, 120}
    # The 15th boundary sits at the frame nearest 60 s, not 15 x 120 frames later.
    assert abs(starts[-1] / fps - 56.0) < 1 / fps


def test_encode_segment_starts_merge_a_final_sliver() -> None:
    assert segment_starts(97, Fraction(24), 1.0) == (0, 24, 48, 72)
    assert segment_starts(110, Fraction(24), 1.0) == (0, 24, 48, 72, 96)


@given(n=st.integers(1, 5000), seg=st.sampled_from([1.0, 2.0, 4.0, 6.0]), workers=st.integers(1, 8),
       rate=st.sampled_from([Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(60)]))
def test_encode_chunks_cover_every_frame_once(n: int, seg: float, workers: int, rate: Fraction) -> None:
    starts = segment_starts(n, rate, seg)
    chunks = plan_chunks(starts, n, workers)
    assert chunks[0].start_frame == 0 and chunks[-1].end_frame == n
    for a, b in itertools.pairwise(chunks):
        assert a.end_frame == b.start_frame
    assert [k for c in chunks for k in c.keyframes] == list(starts)
    assert all(c.keyframes and c.keyframes[0] == c.start_frame for c in chunks)
    assert len(chunks) <= max(1, workers * 5 + 1)
    segments = [len(c.keyframes) for c in chunks]
    assert segments == sorted(segments, reverse=True)  # big chunks first, the small ones last


def test_encode_chunks_shrink_towards_the_end() -> None:
    starts = tuple(range(0, 48 * 12, 48))  # 12 segments
    assert [len(c.keyframes) for c in plan_chunks(starts, 48 * 12, 2)] == [3, 3, 2, 1, 1, 1, 1]
    assert [len(c.keyframes) for c in plan_chunks(starts, 48 * 12, 1)] == [12]
    sizes = [len(c.keyframes) for c in plan_chunks(tuple(range(1000)), 1000, 2)]
    assert sizes[0] == 250 and sizes[-1] <= 63 and len(sizes) <= 11


def test_encode_plan_rejects_starts_not_at_zero() -> None:
    with pytest.raises(ValueError):
        plan_chunks((5, 10), 20, 2)


def test_encode_makespan_models_workers_taking_jobs_in_order() -> None:
    stats = IngestStats(jobs=[JobTime("ChunkJob", cpu, start, start + 1, 1) for start, cpu in
                              enumerate((3.0, 3.0, 2.0, 1.0, 1.0))])
    assert stats.makespan(1) == 10.0
    assert stats.makespan(2) == 5.0  # 3+2 | 3+1+1
    assert stats.makespan(8) == 3.0
