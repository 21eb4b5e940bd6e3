"""Generate a master video for trying ingest by hand (patterns, noise, moving shapes, a tone).

    .venv/bin/python scripts/make_test_master.py out.mp4 [--seconds 10] [--size 1280x720] [--fps 24] [--vfr]

Odd sizes are written as FFV1 in Matroska (use a .mkv name); everything else as H.264 + AAC.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

from control.encode.synth import make_master


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT")
    ap.add_argument("--fps", default="24", help="frame rate, e.g. 24 or 30000/1001")
    ap.add_argument("--vfr", action="store_true", help="irregular frame timestamps")
    ap.add_argument("--no-audio", action="store_true")
    ap.add_argument("--noise", type=float, default=3.0)
    args = ap.parse_args()
    try:
        width, height = (int(x) for x in args.size.lower().split("x"))
        fps = Fraction(args.fps)
    except ValueError:
        ap.error("--size must be WIDTHxHEIGHT and --fps a number or fraction")
    make_master(args.out, seconds=args.seconds, width=width, height=height, fps=fps, vfr=args.vfr,
                audio=not args.no_audio, noise=args.noise)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
