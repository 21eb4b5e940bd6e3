"""Bitrate ladders: the classic fixed one, and the per-title convex-hull choice (pure).

Per-title (Netflix's method): trial-encode samples of the title at a grid of resolutions and
bitrates, measure quality at the source resolution, and keep, for each bitrate, the resolution
that looks best there.  The upper convex hull of all measured points is the efficient frontier;
rungs are picked along it.  Nothing here touches files: :mod:`control.encode.quality` measures.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from .spec import Codec, RateControl, VideoRung

#: Apple's HLS authoring ladder (H.264), height -> average bitrate.
FIXED_H264: tuple[tuple[int, int], ...] = (
    (234, 145_000), (360, 365_000), (432, 730_000), (540, 2_000_000),
    (720, 4_500_000), (1080, 7_800_000), (1440, 12_000_000), (2160, 18_000_000),
)
#: Bitrate relative to H.264 for the same quality, a conservative industry rule of thumb.
CODEC_FACTOR: dict[str, float] = {"h264": 1.0, "hevc": 0.65, "av1": 0.55}
#: Heights tried by the per-title search (the source height is always added).
CANDIDATE_HEIGHTS = (144, 234, 360, 432, 540, 720, 1080, 1440, 2160)
MIN_BITRATE = 60_000
#: CRFs the per-title trials try at every candidate resolution (capped-CRF ladders).  Wide enough
#: that the smallest sizes reach the bottom of a ladder and the source size its top.
CRF_GRID: dict[str, tuple[float, ...]] = {
    "h264": (16, 20, 24, 28, 32, 36, 40),
    "hevc": (18, 22, 26, 30, 34, 38, 42),
    "av1": (20, 28, 36, 44, 52, 60),
}


def output_size(display_width: int, height: int, target_height: int) -> tuple[int, int]:
    """Width and height for ``target_height`` keeping the display aspect; even, never upscaled."""
    h = min(target_height, height)
    h -= h % 2
    w = round(display_width * h / height / 2) * 2
    return max(w, 2), max(h, 2)


def fixed_ladder(display_width: int, height: int, codecs: Sequence[Codec], max_rungs: int = 6) -> list[VideoRung]:
    rows = [(h, b) for h, b in FIXED_H264 if h <= height]
    if not rows:
        # A source below the smallest rung gets one rung at its own size, bitrate scaled by area.
        w, h = output_size(display_width, height, height)
        rows = [(h, max(MIN_BITRATE, round(FIXED_H264[0][1] * (w * h) / (416 * 234))))]
    rows = rows[-max_rungs:]
    rungs: list[VideoRung] = []
    for codec in codecs:
        for h, bitrate in rows:
            w, hh = output_size(display_width, height, h)
            rungs.append(VideoRung(codec, w, hh, round(bitrate * CODEC_FACTOR[codec] / 1000) * 1000))
    return rungs


@dataclass(frozen=True)
class RDPoint:
    """One trial encode: a resolution at a measured bitrate and quality (PSNR-Y dB at source size)."""

    codec: str
    width: int
    height: int
    bitrate: int
    quality: float
    #: SSIM-Y at source size, recorded for operators; decisions use PSNR (``quality``).
    ssim: float | None = None
    #: The bitrate the encoder was asked for (``bitrate`` is what it produced); 0 = the same.
    requested: int = 0
    #: The CRF of a constant-rate-factor trial (``None``: an ABR trial).
    crf: float | None = None

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"codec": self.codec, "width": self.width, "height": self.height,
                                "bitrate": self.bitrate, "quality": round(self.quality, 3)}
        if self.ssim is not None:
            d["ssim"] = round(self.ssim, 5)
        if self.requested:
            d["requested"] = self.requested
        if self.crf is not None:
            d["crf"] = self.crf
        return d


def candidate_heights(height: int) -> list[int]:
    hs = sorted({h for h in CANDIDATE_HEIGHTS if h < height} | {height - height % 2})
    return hs[-5:]  # the five largest: tiny renditions of a large source are never on the hull


def candidate_bitrates(width: int, height: int, fps: float, count: int = 6) -> list[int]:
    """A geometric grid from ~0.02 to ~0.25 bits per pixel per frame at the source size."""
    pixels = width * height * fps
    lo, hi = max(MIN_BITRATE, pixels * 0.02), max(MIN_BITRATE * 4, pixels * 0.25)
    return [round(lo * (hi / lo) ** (i / (count - 1)) / 1000) * 1000 for i in range(count)]


def convex_hull(points: Sequence[RDPoint]) -> list[RDPoint]:
    """Upper convex hull in (log bitrate, quality), increasing in both: the efficient frontier."""
    pts = sorted(points, key=lambda p: (p.bitrate, -p.quality))
    frontier: list[RDPoint] = []
    for p in pts:  # Pareto: drop points no better than a cheaper one
        if not frontier or p.quality > frontier[-1].quality:
            frontier.append(p)
    hull: list[RDPoint] = []
    for p in frontier:
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) >= 0:
            hull.pop()
        hull.append(p)
    return hull


def _cross(a: RDPoint, b: RDPoint, c: RDPoint) -> float:
    ax, bx, cx = math.log(a.bitrate), math.log(b.bitrate), math.log(c.bitrate)
    return (bx - ax) * (c.quality - a.quality) - (b.quality - a.quality) * (cx - ax)


def per_title_ladder(
    points: Sequence[RDPoint],
    codec: Codec,
    *,
    max_rungs: int = 6,
    top_quality: float = 46.0,
    bottom_quality: float = 30.0,
    min_gain: float = 1.0,
    step: float = 1.6,
    rate_control: RateControl = "capped-crf",
) -> list[VideoRung]:
    """Rungs along the hull, from where quality is still watchable up to where more bits stop paying.

    The bottom rung sits where the hull reaches ``bottom_quality`` dB (or at its cheapest point,
    if that is better already); the top where it reaches ``top_quality`` dB, or where doubling
    the bitrate gains less than ``min_gain`` dB.  Rungs are spaced about ``step``x in bitrate,
    each at the resolution that wins at that bitrate; resolutions never decrease as bitrate
    rises.  With ``capped-crf`` and CRF trials, each rung gets the CRF that the winning
    resolution's trials say lands its average on the target (interpolated in log bitrate);
    otherwise it asks for the target as an ABR average.
    """
    mine = [p for p in points if p.codec == codec]
    hull = convex_hull(mine)
    if not hull:
        return []
    hi = float(hull[-1].bitrate)
    for a, b in itertools.pairwise(hull):
        per_doubling = (b.quality - a.quality) / math.log2(b.bitrate / a.bitrate)
        if a.quality >= top_quality or per_doubling < min_gain:
            hi = a.bitrate
            break
        if b.quality >= top_quality:
            hi = _rate_between(a, b, top_quality)
            break
    lo = float(hull[0].bitrate)
    if hull[0].quality < bottom_quality:
        lo = next((_rate_between(a, b, bottom_quality) for a, b in itertools.pairwise(hull)
                   if b.quality >= bottom_quality), hi)
    lo = min(lo, hi)
    n = 1 if hi <= lo * 1.01 else min(max_rungs, max(2, 1 + round(math.log(hi / lo) / math.log(step))))
    targets = [lo] if n == 1 else [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
    rungs: list[VideoRung] = []
    for target in targets:
        best = _best_at(mine, target)
        if rungs and best.height < rungs[-1].height:
            best = next(p for p in sorted(mine, key=lambda q: abs(math.log(q.bitrate / target)))
                        if p.height >= rungs[-1].height)
        curve = sorted((p for p in mine if p.height == best.height), key=lambda p: p.bitrate)
        crfs = [p.crf for p in curve]
        if rate_control == "capped-crf" and len(curve) >= 2 and None not in crfs:
            rung = VideoRung(codec, best.width, best.height, round(target / 1000) * 1000, _crf_at(curve, target))
        else:
            ask = target * _overshoot(mine, best.height, target)
            rung = VideoRung(codec, best.width, best.height, round(ask / 1000) * 1000)
        if not rungs or rung.bitrate > rungs[-1].bitrate * 1.15:
            rungs.append(rung)
    return rungs


def _rate_between(a: RDPoint, b: RDPoint, quality: float) -> float:
    """The bitrate at which the hull segment ``a``-``b`` (straight in log bitrate) reaches ``quality``."""
    t = (quality - a.quality) / (b.quality - a.quality)
    return float(a.bitrate * (b.bitrate / a.bitrate) ** t)


def _crf_at(curve: list[RDPoint], bitrate: float) -> float:
    """The CRF that produces ``bitrate`` on one resolution's trials (sorted by bitrate), to 0.1.

    Log bitrate is close to linear in CRF, so the two trials around ``bitrate`` are interpolated
    (the end pair extrapolated, by at most half a grid step beyond the trials).
    """
    x = math.log(bitrate)
    i = 0
    while i < len(curve) - 2 and math.log(curve[i + 1].bitrate) < x:
        i += 1
    a, b = curve[i], curve[i + 1]
    assert a.crf is not None and b.crf is not None
    xa, xb = math.log(a.bitrate), math.log(b.bitrate)
    crf = a.crf if xb <= xa else a.crf + (b.crf - a.crf) * (x - xa) / (xb - xa)
    lo, hi = min(p.crf for p in curve if p.crf is not None), max(p.crf for p in curve if p.crf is not None)
    margin = (hi - lo) / max(1, len(curve) - 1) / 2
    return round(min(hi + margin, max(lo - margin, crf)), 1)


def _overshoot(points: Sequence[RDPoint], height: int, bitrate: float) -> float:
    """Requested / produced bitrate near ``bitrate`` at ``height``: the encoder's rate-control bias.

    Rate control on short, easy content undershoots its target; the hull is in produced bits, so
    the rung must ask for correspondingly more to land where the hull says.  Clamped to 0.5-2x.
    """
    near = min((p for p in points if p.height == height), key=lambda p: abs(math.log(p.bitrate / bitrate)))
    if not near.requested:
        return 1.0
    return min(2.0, max(0.5, near.requested / near.bitrate))


def _best_at(points: Sequence[RDPoint], bitrate: float) -> RDPoint:
    """The resolution whose own R-D curve, interpolated in log bitrate, is highest at ``bitrate``."""
    best: tuple[float, RDPoint] | None = None
    for height in sorted({p.height for p in points}):
        curve = sorted((p for p in points if p.height == height), key=lambda p: p.bitrate)
        q = _interp(curve, bitrate)
        if best is None or q > best[0]:
            best = (q, curve[0])
    assert best is not None
    return best[1]


def _interp(curve: list[RDPoint], bitrate: float) -> float:
    x = math.log(bitrate)
    xs = [math.log(p.bitrate) for p in curve]
    if x <= xs[0]:
        # Below its cheapest trial a resolution is penalised: extrapolating there is guesswork.
        return curve[0].quality - 3.0 * (xs[0] - x) / math.log(2)
    for (x0, p0), (x1, p1) in zip(zip(xs, curve, strict=True), zip(xs[1:], curve[1:], strict=True), strict=False):
        if x <= x1:
            return p0.quality + (p1.quality - p0.quality) * (x - x0) / (x1 - x0) if x1 > x0 else p1.quality
    return curve[-1].quality
