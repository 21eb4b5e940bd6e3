"""Bjøntegaard delta rate: average bitrate difference between two R-D curves at equal quality (pure).

Log-rate is interpolated as a function of quality with monotone piecewise-cubic (PCHIP)
interpolation, the variant VCEG recommends over the original cubic fit because it cannot
oscillate between points, and integrated over the quality range both curves cover.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator


class BDRateError(ValueError):
    """The curves cannot be compared (too few points, or no quality range in common)."""


def rd_curve(points: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """``(bitrate, quality)`` points as (quality, log10 bitrate) arrays, quality strictly increasing:
    the curve :func:`bd_rate` interpolates (``PchipInterpolator(*rd_curve(points))``)."""
    pts = sorted((q, np.log10(r)) for r, q in points if r > 0)
    # Keep quality strictly increasing: a point no better than a cheaper one is off the curve.
    qs: list[float] = []
    lrs: list[float] = []
    for q, lr in pts:
        if qs and q <= qs[-1]:
            continue
        qs.append(q)
        lrs.append(lr)
    if len(qs) < 2:
        raise BDRateError("each curve needs at least two points of distinct quality")
    return np.array(qs), np.array(lrs)


def bd_rate(reference: Sequence[tuple[float, float]], test: Sequence[tuple[float, float]]) -> float:
    """Percent bitrate change of ``test`` versus ``reference`` at equal quality.

    Points are ``(bitrate, quality)``.  Negative means ``test`` needs fewer bits (-20.0 = 20 % saved).
    """
    q1, r1 = rd_curve(reference)
    q2, r2 = rd_curve(test)
    lo, hi = max(q1[0], q2[0]), min(q1[-1], q2[-1])
    if hi <= lo:
        raise BDRateError(f"no common quality range: {q1[0]:.2f}-{q1[-1]:.2f} vs {q2[0]:.2f}-{q2[-1]:.2f}")
    f1, f2 = PchipInterpolator(q1, r1), PchipInterpolator(q2, r2)
    avg1 = float(f1.integrate(lo, hi)) / (hi - lo)
    avg2 = float(f2.integrate(lo, hi)) / (hi - lo)
    return float((10 ** (avg2 - avg1) - 1) * 100)
