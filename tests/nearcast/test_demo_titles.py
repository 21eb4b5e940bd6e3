"""The demo's whole path: sample titles encoded, filled to both ISPs' edges, steered and played."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nearcast.browser import Browser, find_chromium
from nearcast.demo_titles import DEMO_PROFILE, SAMPLES

STATIC = Path(__file__).resolve().parents[2] / "control" / "web" / "static"
ARTIFACTS = Path(os.environ.get("NEARCAST_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts"))


def _pid_of(parent: int, needle: str) -> int:
    out = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(parent)], capture_output=True,
                         text=True).stdout
    return next(int(line.split()[0]) for line in out.splitlines() if needle in line)


PLAYING = ("(() => { const v = document.getElementById('video'); if (!v) return null;"
           " const q = v.getVideoPlaybackQuality();"
           " return v.currentTime > 2 && q.totalVideoFrames > 10 ?"
           " {t: v.currentTime, frames: q.totalVideoFrames, state: window.nearcastState} : null; })()")


async def _home_then_play(url: str) -> tuple[Any, Any]:
    """Open the homepage, check its rows and artwork, click the first Top Picks tile and watch it play."""
    async with Browser() as browser:
        await browser.navigate(url)
        home = await browser.wait_for(
            "(() => { const h = window.nearcastHome; return h && h.state === 'ready' && h.imagesLoaded > 2 ?"
            " {...h, rows: [...document.querySelectorAll('section.row')].map((s) => [s.dataset.row,"
            " [...s.querySelectorAll('a.tile')].map((a) => a.dataset.title)])} : null; })()", timeout=30)
        await browser.screenshot(ARTIFACTS / "screenshots" / "homepage-demo.png")
        await browser.evaluate("document.querySelector('section[data-row=\"top-picks\"] a.tile').click()")
        played = await browser.wait_for(PLAYING, timeout=60)
        await browser.screenshot(ARTIFACTS / "screenshots" / "player-from-homepage-demo.png")
        return home, played


async def _operator_view(url: str) -> Any:
    async with Browser() as browser:
        await browser.navigate(url)
        view = await browser.wait_for(
            "(() => { const o = window.nearcastOps; return o && o.state === 'ready' ? {...o,"
            " rungs: document.querySelectorAll('svg rect.rung').length,"
            " points: document.querySelectorAll('svg circle').length,"
            " appliances: document.querySelectorAll('#appliances tr').length - 1} : null; })()", timeout=30)
        await browser.screenshot(ARTIFACTS / "screenshots" / "operator-view-demo.png")
        return view


async def _watch(url: str, shot: str) -> Any:
    async with Browser() as browser:
        await browser.navigate(url)
        result = await browser.wait_for(PLAYING, timeout=60)
        await browser.screenshot(ARTIFACTS / "screenshots" / f"{shot}.png")
        return result


@pytest.mark.slow
def test_demo_titles_are_encoded_filled_steered_and_played(tmp_path: Path, port_factory: Any) -> None:
    port = port_factory()
    proc = subprocess.Popen([sys.executable, "-m", "nearcast", "demo", "--port", str(port), "--state-dir",
                             str(tmp_path / "state")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    out: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "demo exited early:\n" + "".join(out)
            out.append(line)
            if "nearcast steer --client-ip" in line or "titles: failed" in line:  # the last line it prints
                break
        text = "".join(out)
        assert "titles: ready" in text, text
        env = {**os.environ, "NEARCAST_API": re.search(r"NEARCAST_API=(\S+)", text).group(1),  # type: ignore[union-attr]
               "NEARCAST_TOKEN": re.search(r"NEARCAST_TOKEN=(\S+)", text).group(1)}  # type: ignore[union-attr]
        edge_a = re.search(r"^edge-a\s+(\S+)", text, re.M).group(1)  # type: ignore[union-attr]
        edge_b = re.search(r"^edge-b\s+(\S+)", text, re.M).group(1)  # type: ignore[union-attr]

        def nearcast(*args: str) -> Any:
            res = subprocess.run([sys.executable, "-m", "nearcast", *args, "--json"], env=env, capture_output=True,
                                 text=True, timeout=120)
            assert res.returncode == 0, res.stderr
            return json.loads(res.stdout)

        # A viewer in ISP 1 streams from ISP 1's edge; a viewer in ISP 2 from ISP 2's (the encrypted title).
        one = nearcast("client", "play", "demo-ocean", "--client-ip", "127.0.1.10", "--max-segments", "4")
        assert one["segments"] == 4 and one["errors"] == 0 and one["sources"][0].startswith(edge_a)
        two = nearcast("client", "play", "demo-heist", "--client-ip", "127.0.2.10", "--max-segments", "2")
        assert two["segments"] == 2 and two["sources"][0].startswith(edge_b)
        steer = nearcast("steer", "--client-ip", "127.0.2.10", "--title", "demo-ocean")
        assert [r["appliance_id"] for r in steer["ranked"]] == ["edge-b", "edge-a"]
        titles = {t["title_id"] for t in nearcast("title", "ls")["titles"]}
        assert titles == {t.title_id for t in SAMPLES}
        assert re.search(r"recs: serving model \S+", text), text
        assert re.search(r"models: every edge runs re-ranker \S+", text), text
        # The control plane's rows for the demo profile: its history shows, and the model ranks Top Picks.
        rows = {r["id"]: [it["title_id"] for it in r["items"]] for r in nearcast("recs", "home", DEMO_PROFILE)["rows"]}
        assert rows["continue-watching"] == ["demo-garden"] and "top-picks" in rows
        assert all("demo-ocean" not in items for items in rows.values())  # finished

        # In a real browser, the clear title as a viewer in ISP 1 and the encrypted one (ClearKey) in ISP 2.
        if find_chromium() is not None and (STATIC / "vendor" / "shaka-player.compiled.js").exists():
            api = env["NEARCAST_API"]
            home, clicked = asyncio.run(_home_then_play(f"{api}/web/index.html?profile={DEMO_PROFILE}&as=127.0.1.10"))
            assert home["edge"] == "edge-a" and home["source"] == "control", home
            assert home["model_version"], home  # re-ranked by the deployed edge model
            shown = dict(home["rows"])
            assert shown["continue-watching"] == ["demo-garden"] and shown["top-picks"], home
            assert clicked["state"]["source"].startswith(edge_a) and clicked["frames"] > 10
            ops_url = re.search(r"(\S+/web/ops\.html#token=\S+)", text).group(1)  # type: ignore[union-attr]
            view = asyncio.run(_operator_view(ops_url))
            assert view["appliances"] == 2 and view["charts"] == len(SAMPLES) and view["points"] > 0, view
            assert view["rungs"] >= len(SAMPLES), view
            played = asyncio.run(_watch(f"{api}/web/player.html?title=demo-ocean&as=127.0.1.10", "player-clear-demo"))
            assert played["state"]["source"].startswith(edge_a) and played["frames"] > 10
            played = asyncio.run(_watch(f"{api}/web/player.html?title=demo-heist&as=127.0.2.10",
                                        "player-encrypted-demo"))
            assert played["state"]["source"].startswith(edge_b) and played["frames"] > 10

        # Failover: edge-a dies while a viewer in ISP 1 streams from it; the client carries on from
        # edge-b with a stall under 4 s, and the control plane stops steering to edge-a in its TTL.
        edge_a_pid = _pid_of(proc.pid, "edge-a.toml")
        viewer = subprocess.Popen([sys.executable, "-m", "nearcast", "client", "play", "demo-ocean",
                                   "--client-ip", "127.0.1.10", "--max-buffer", "4", "--json"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3.0)
        os.kill(edge_a_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        out_json, err = viewer.communicate(timeout=120)
        assert viewer.returncode == 0, err
        result = json.loads(out_json)
        assert result["failovers"] == 1 and result["segments"] == 6, result
        assert result["sources"][0].startswith(edge_a) and result["sources"][-1].startswith(edge_b)
        assert result["rebuffer_s"] < 4.0, result
        while True:
            ranked = [r["appliance_id"] for r in nearcast("steer", "--client-ip", "127.0.1.10",
                                                          "--title", "demo-ocean")["ranked"]]
            if "edge-a" not in ranked:
                break
            assert time.monotonic() - killed_at < 15.0 + 5.0, "edge-a still steered after its heartbeat TTL"
            time.sleep(0.5)
        assert ranked == ["edge-b"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
