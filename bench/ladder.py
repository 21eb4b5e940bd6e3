"""Per-title ladder against the fixed ladder on the same source: bits saved at equal quality.

Builds both ladders for one master (the per-title one from trial encodes of sampled scenes and
their convex hull), encodes every rung of each over the whole title, measures each rung's real
bitrate and luma PSNR at source resolution (upscaled, as a display would), and reports the
Bjøntegaard delta rate of the per-title curve against the fixed one (PCHIP over log-rate).
Negative BD-rate = bits saved.  The goal (>= 20 % saved) is stated for real footage; the
generated source here has synthetic statistics (noise, flat gradients), so read the figure as a
check that the machinery works, not as a claim about catalogue savings.

    .venv/bin/python bench/ladder.py [--seconds 12] [--width 1280 --height 720] [--master FILE]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path

from control.encode.bdrate import BDRateError, bd_rate
from control.encode.chunks import frame_count
from control.encode.ladder import RDPoint, fixed_ladder, per_title_ladder
from control.encode.probe import probe
from control.encode.quality import TrialJob, run_trial, trial_jobs
from control.encode.spec import VideoRung
from control.encode.synth import make_master


def full_title_points(pool: cf.Executor, master: Path, fps: Fraction, n: int, rungs: list[VideoRung],
                      preset: str) -> list[RDPoint]:
    jobs = [TrialJob(str(master), 0.0, fps, ((0, n),), r.codec, r.width, r.height, (r.bitrate,), preset)
            for r in rungs]
    return [p for pts in pool.map(run_trial, jobs) for p in pts]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--preset", default="veryfast")
    ap.add_argument("--master", type=Path, help="use this master instead of a generated one (real footage)")
    args = ap.parse_args()
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-ladder-") as tmp, cf.ProcessPoolExecutor(
        os.cpu_count() or 1, mp_context=ctx
    ) as pool:
        master = args.master or make_master(Path(tmp) / "master.mp4", seconds=args.seconds, width=args.width,
                                            height=args.height, noise=1.5, scene_seconds=3.0)
        info = probe(master)
        fps = min(info.fps, Fraction(60))
        n = frame_count(info.duration, fps)
        t0 = time.perf_counter()
        trials = [p for pts in pool.map(run_trial, trial_jobs(info, fps, ["h264"], args.preset)) for p in pts]
        search = time.perf_counter() - t0
        auto = per_title_ladder(trials, "h264")
        fixed = fixed_ladder(info.display_width, info.height, ["h264"])
        print(f"source {info.width}x{info.height} {info.duration:.1f} s; per-title search: {len(trials)} trial "
              f"points in {search:.1f} s")
        t0 = time.perf_counter()
        auto_pts = full_title_points(pool, master, fps, n, auto, args.preset)
        fixed_pts = full_title_points(pool, master, fps, n, fixed, args.preset)
        print(f"full-title encodes of both ladders: {time.perf_counter() - t0:.1f} s")
        for name, pts in (("fixed", fixed_pts), ("per-title", auto_pts)):
            print(f"{name} ladder:")
            for p in pts:
                print(f"  {p.width:5d}x{p.height:<5d} {p.bitrate / 1000:8.0f} kb/s  PSNR-Y {p.quality:6.2f} dB"
                      f"  SSIM-Y {p.ssim or 0:.4f}")
        try:
            bd = bd_rate([(p.bitrate, p.quality) for p in fixed_pts], [(p.bitrate, p.quality) for p in auto_pts])
        except BDRateError as exc:
            print(f"BD-rate not computable: {exc}")
            return 1
        print(f"BD-rate (PSNR-Y) per-title vs fixed = {bd:+.1f} %  -> bits saved at equal quality: {-bd:.1f} % "
              "(goal >= 20 % on real footage)")
        try:
            bd_ssim = bd_rate([(p.bitrate, p.ssim or 0) for p in fixed_pts],
                              [(p.bitrate, p.ssim or 0) for p in auto_pts])
            print(f"BD-rate (SSIM-Y) per-title vs fixed = {bd_ssim:+.1f} %")
        except BDRateError as exc:
            print(f"BD-rate (SSIM-Y) not computable: {exc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
