"""The web player in a real headless Chromium: it plays, decodes frames, and fails over."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from nearcast.browser import Browser, find_chromium, live_in_group

STATIC = Path(__file__).resolve().parents[2] / "control" / "web" / "static"
ARTIFACTS = Path(os.environ.get("NEARCAST_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts"))

pytestmark = [
    pytest.mark.skipif(find_chromium() is None, reason="Chromium is not installed (scripts/setup-system.sh)"),
    pytest.mark.skipif(not (STATIC / "vendor" / "shaka-player.compiled.js").exists(),
                       reason="the web player is not fetched (scripts/fetch-player.sh)"),
]


@pytest.fixture
async def site(hls_ladder: Path) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_static("/web/", STATIC)
    app.router.add_static("/t/", hls_ladder)
    runner = web.AppRunner(app)
    await runner.setup()
    s = web.TCPSite(runner, "127.0.0.1", 0)
    await s.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def _played(browser: Browser, seconds: float) -> Any:
    return await browser.wait_for(
        "(() => { const v = document.getElementById('video'); const q = v.getVideoPlaybackQuality();"
        f" return v.currentTime > {seconds} && q.totalVideoFrames > 10 ? "
        " {t: v.currentTime, frames: q.totalVideoFrames, dropped: q.droppedVideoFrames,"
        "  state: window.nearcastState} : null; })()", timeout=45)


async def test_player_plays_and_decodes_in_chromium(site: str) -> None:
    async with Browser() as browser:
        await browser.navigate(f"{site}/web/player.html?src=/t/master.m3u8")
        result = await _played(browser, 2.0)
        assert result["frames"] > 10 and result["state"]["startupMs"] is not None
        assert result["state"]["sourceIndex"] == 0 and not browser.exceptions
        await browser.screenshot(ARTIFACTS / "screenshots" / "player-clear.png")


async def test_player_fails_over_to_the_next_source(site: str) -> None:
    async with Browser() as browser:
        await browser.navigate(f"{site}/web/player.html?src=http://127.0.0.1:1/t/master.m3u8&src=/t/master.m3u8")
        result = await _played(browser, 1.0)
        assert result["state"]["sourceIndex"] == 1 and result["state"]["failovers"] == 1


async def test_closing_the_browser_leaves_no_process_behind() -> None:
    """Debian's chromium-headless-shell is a shell script that runs the browser as a child: closing must
    end the whole process group, not only the script (every test used to leave a browser running)."""
    async with Browser() as browser:
        await browser.navigate("about:blank")
        leader = browser._proc.pid if browser._proc is not None else -1
        assert len(live_in_group(leader)) > 1  # the script's browser and its helpers
    assert live_in_group(leader) == []
