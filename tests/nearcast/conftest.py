"""An HLS ladder made by the ffmpeg CLI, served by real HTTP servers standing in for edges."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

RUNGS = [(160, 90, 200_000), (320, 180, 600_000), (640, 360, 1_500_000)]


@pytest.fixture(scope="session")
def hls_ladder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (scripts/setup-system.sh installs it)")
    root = tmp_path_factory.mktemp("ladder")
    master = ["#EXTM3U", "#EXT-X-VERSION:7"]
    for w, h, b in RUNGS:
        (root / f"v{h}").mkdir()
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate=24:duration=12",
             "-f", "lavfi", "-i", "sine=frequency=440:duration=12", "-c:v", "libx264", "-preset", "veryfast",
             "-b:v", str(b), "-maxrate", str(b), "-bufsize", str(b), "-g", "48", "-keyint_min", "48",
             "-sc_threshold", "0", "-c:a", "aac", "-b:a", "64k", "-f", "hls", "-hls_time", "2",
             "-hls_playlist_type", "vod", "-hls_segment_type", "fmp4", "-hls_fmp4_init_filename", "init.mp4",
             "-hls_segment_filename", str(root / f"v{h}" / "seg_%03d.m4s"), str(root / f"v{h}" / "index.m3u8")],
            check=True, timeout=120)
        master += [f'#EXT-X-STREAM-INF:BANDWIDTH={b + 64000},AVERAGE-BANDWIDTH={b},CODECS="avc1.64001e,mp4a.40.2",'
                   f"RESOLUTION={w}x{h},FRAME-RATE=24.000", f"v{h}/index.m3u8"]
    (root / "master.m3u8").write_text("\n".join(master) + "\n")
    yield root


class StaticEdge:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.requests = 0

    async def start(self) -> None:
        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            self.requests += 1
            return await handler(request)  # type: ignore[no-any-return]

        app = web.Application(middlewares=[count])
        app.router.add_static("/t/", self.root)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/t/master.m3u8"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def edges(hls_ladder: Path) -> AsyncIterator[list[StaticEdge]]:
    pair = [StaticEdge(hls_ladder), StaticEdge(hls_ladder)]
    for e in pair:
        await e.start()
    yield pair
    for e in pair:
        await e.stop()
