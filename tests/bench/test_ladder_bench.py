"""``bench/ladder.py``: the ``--start``/``--seconds`` excerpt of a master is exact and video only; the
trials' envelope ("ceiling") takes the cheapest resolution at each quality.

The BD-rate run itself takes minutes on real footage; it is a documented command (``bench/README.md``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import ModuleType

import av
import numpy as np
import pytest

from control.encode.ladder import RDPoint
from control.encode.probe import probe
from control.encode.quality import luma
from control.encode.synth import make_master
from tests.bench.conftest import load_bench


@pytest.fixture(scope="module")
def ladder() -> ModuleType:
    return load_bench("ladder")


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [luma(f.reformat(format="yuv420p")) for f in c.decode(video=0)]


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI")
def test_ladder_excerpt_is_the_requested_frames_losslessly(ladder: ModuleType, tmp_path: Path) -> None:
    master = make_master(tmp_path / "m.mp4", seconds=3.0, width=160, height=96, fps=10, audio=True)
    out = ladder.excerpt(master, 1.0, 1.5, tmp_path / "x.mp4")
    info = probe(out)
    assert not info.has_audio
    assert (info.width, info.height) == (160, 96)
    got, src = _frames(out), _frames(master)
    assert len(got) == 15
    # Lossless (qp 0) up to the master's own decode: frame for frame, the source from 1 s on.
    assert all(np.array_equal(a, b) for a, b in zip(got, src[10:25], strict=True))


def test_ladder_ceiling_is_the_cheapest_resolution_at_each_quality(ladder: ModuleType) -> None:
    fixed = [("f", r, q, 0.0) for r, q in ((100_000, 30.0), (200_000, 33.0), (400_000, 36.0), (800_000, 39.0))]

    def trials(height: int, scale: float, qs: tuple[float, ...]) -> list[RDPoint]:
        return [RDPoint("h264", height * 16 // 9, height, round(100_000 * scale * 2 ** ((q - 30) / 3)), q)
                for q in qs]

    same = trials(360, 1.0, (29, 32, 35, 38, 40))
    assert float(ladder.envelope_bd(fixed, same).split()[0]) == pytest.approx(0.0, abs=0.05)
    # A second size at half the rate, but only up to 34 dB: cheapest below, the first one above.
    half = trials(234, 0.5, (29, 31, 34))
    got = float(ladder.envelope_bd(fixed, same + half).split()[0])
    assert got == pytest.approx((0.5 ** (4 / 9) - 1) * 100, abs=0.5)  # half the rate over 4 of the 9 dB
