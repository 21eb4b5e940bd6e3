"""The ABR client: parsers, rules and QoE by hand; playback and failover against real HTTP servers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from nearcast.abr import hls, traces
from nearcast.abr.algorithms import BolaRule, Observation, ThroughputRule
from nearcast.abr.player import PlaybackFailed, Player, PlayerOptions
from nearcast.abr.qoe import QoeLog
from nearcast.cli import cli
from shared.errors import InvalidInput

MASTER = """#EXTM3U
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aud",NAME="en",DEFAULT=YES,URI="a/index.m3u8"
#EXT-X-STREAM-INF:BANDWIDTH=800000,AVERAGE-BANDWIDTH=700000,CODECS="avc1.64001f,mp4a.40.2",RESOLUTION=640x360,AUDIO="aud"
v360/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=300000,CODECS="av01.0.04M.08",RESOLUTION=320x180,FRAME-RATE=24
v180/index.m3u8
"""

MEDIA = """#EXTM3U
#EXT-X-TARGETDURATION:4
#EXT-X-MAP:URI="init.mp4"
#EXTINF:4.0,
s1.m4s
#EXTINF:3.5,
s2.m4s
#EXT-X-ENDLIST
"""


def test_parse_master_and_media() -> None:
    m = hls.parse_master(MASTER)
    assert [v.bandwidth for v in m.variants] == [800000, 300000]
    assert m.variants[0].resolution == (640, 360) and m.variants[0].codecs == "avc1.64001f,mp4a.40.2"
    assert m.variants[1].frame_rate == 24.0
    assert m.audio_for(m.variants[0]) == hls.AudioRendition("aud", "en", "a/index.m3u8", True)
    media = hls.parse_media(MEDIA)
    assert media.init_uri == "init.mp4" and media.ended and media.duration == 7.5
    assert [s.uri for s in media.segments] == ["s1.m4s", "s2.m4s"]


@pytest.mark.parametrize(("text", "needle"), [
    ("", "no #EXTM3U"), ("hello", "no #EXTM3U"), ("#EXTM3U\n", "no variants"),
    ("#EXTM3U\nv.m3u8\n", "without #EXT-X-STREAM-INF"),
    ("#EXTM3U\n#EXT-X-STREAM-INF:CODECS=\"x\"\nv.m3u8\n", "without BANDWIDTH"),
    ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=abc\nv.m3u8\n", "BANDWIDTH must be an integer"),
    ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=-5\nv.m3u8\n", "must be >= 0"),
    ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=5,,\nv.m3u8\n", "malformed attribute"),
    ("#EXTM3U\n#EXTINF:4,\ns.m4s\n", "media playlist"),
])
def test_bad_master_playlists(text: str, needle: str) -> None:
    with pytest.raises(hls.PlaylistError, match=needle):
        hls.parse_master(text)


@pytest.mark.parametrize(("text", "needle"), [
    ("#EXTM3U\n#EXTINF:4,\ns.m4s\n", "TARGETDURATION"),
    ("#EXTM3U\n#EXT-X-TARGETDURATION:4\n", "no segments"),
    ("#EXTM3U\n#EXT-X-TARGETDURATION:4\ns.m4s\n", "without #EXTINF"),
    ("#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:nan,\ns.m4s\n", "out of range"),
    ("#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:1e99,\ns.m4s\n", "out of range"),
    ("#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-MAP:BYTERANGE=\"1@0\"\n#EXTINF:4,\ns\n", "without URI"),
])
def test_bad_media_playlists(text: str, needle: str) -> None:
    with pytest.raises(hls.PlaylistError, match=needle):
        hls.parse_media(text)


def test_oversized_and_binary_playlists() -> None:
    with pytest.raises(hls.PlaylistError, match="too large"):
        hls.parse_media(b"#EXTM3U\n" + b"#" * (hls.MAX_PLAYLIST_BYTES + 1))
    with pytest.raises(hls.PlaylistError, match="UTF-8"):
        hls.parse_master(b"#EXTM3U\n\xff\xfe")


@settings(max_examples=1500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("#EXTM3U-:=,\"\n0123456789.ABCDINFSRWX/ab")), max_size=300))
def test_random_playlists_only_raise_playlist_errors(text: str) -> None:
    for parse in (hls.parse_master, hls.parse_media):
        try:
            parse("#EXTM3U\n" + text)
        except hls.PlaylistError:
            pass


def test_throughput_rule_picks_the_highest_rung_under_the_safe_estimate() -> None:
    rule = ThroughputRule()
    obs = Observation(0, 2, None)
    assert rule.choose([100, 200, 400], obs) == 0  # nothing measured yet: start low
    rule.record_download(nbytes=50_000, seconds=1.0)  # 400 kbit/s
    assert rule.estimate_bps() == pytest.approx(400_000)
    assert rule.choose([100_000, 300_000, 400_000], obs) == 1  # 0.9 x 400k = 360k
    rule.record_download(nbytes=5_000, seconds=1.0)  # a drop: the fast EWMA follows, the min wins
    assert rule.estimate_bps() < 300_000


def test_bola_climbs_with_the_buffer() -> None:
    rule = BolaRule(startup=False)
    rule.record_download(10_000_000, 1.0)  # plenty of throughput: only the buffer decides
    rates = [200_000, 600_000, 1_500_000]
    picks = [rule.choose(rates, Observation(b, 2, 2)) for b in (0.5, 6, 12, 20)]
    assert picks == sorted(picks) and picks[0] == 0 and picks[-1] == 2


def test_bola_starts_from_throughput_with_a_placeholder_buffer() -> None:
    rule = BolaRule()
    rates = [200_000, 600_000, 1_500_000]
    assert rule.choose(rates, Observation(0, 2, None)) == 0  # nothing known: lowest
    rule.record_download(1_000_000, 1.0)  # 8 Mbit/s measured
    assert rule.choose(rates, Observation(2, 2, 0)) == 2  # start-up follows throughput
    assert rule.placeholder_s > 0 and not rule.startup
    assert rule.choose(rates, Observation(3, 2, 2)) == 2  # BOLA keeps it, thanks to the placeholder
    assert rule.min_buffer_for(rates, 0) == 0.0


def test_qoe_score_by_hand() -> None:
    q = QoeLog()
    for rate, stall in ((1_000_000, 0.0), (3_000_000, 0.5), (3_000_000, 0.0), (1_000_000, 0.0)):
        q.segment(rate, stall)
    # bitrate 1+3+3+1 = 8, rebuffer 4.3 x 0.5 = 2.15, smoothness |3-1|+0+|1-3| = 4
    assert q.score() == pytest.approx(8 - 2.15 - 4)
    assert q.switches == 2


def test_traces_load_and_reject_garbage(tmp_path: Path) -> None:
    t = traces.load("step-down")
    assert t.rate_bps(0) == 8e6 and t.rate_bps(25) == 1.5e6 and t.rate_bps(45) == 4e6
    assert set(traces.shipped()) >= {"constant-5mbps", "step-down", "fluctuating", "cellular"}
    for bad, needle in (("", "empty"), ("time_s,mbps\n1,2\n", "time 0"), ("0,1\n0,2\n", "increase"),
                        ("0,-1\n", ">= 0"), ("0,x\n", "not numbers"), ("0,1,2\n", "expected"), ("0,0\n", "some")):
        with pytest.raises(InvalidInput, match=needle):
            traces.parse(bad)
    with pytest.raises(InvalidInput, match="no trace"):
        traces.load("no-such-trace")


@pytest.mark.parametrize("abr", ["throughput", "bola"])
async def test_plays_a_real_ladder(edges: Any, abr: str) -> None:
    player = Player([edges[0].url], PlayerOptions(abr=abr))
    qoe = await player.play()
    assert len(qoe.bitrates_bps) == 6 and qoe.startup_delay_s is not None
    assert qoe.errors == 0 and qoe.bytes > 100_000
    assert qoe.bitrates_bps[0] == 264_000  # nothing known yet: start on the lowest rung
    assert qoe.bitrates_bps[-1] == 1_564_000, qoe.bitrates_bps  # unshaped loopback: it climbs to the top


async def test_a_trace_holds_the_client_to_low_rungs(edges: Any) -> None:
    slow = traces.parse("time_s,mbps\n0,0.5\n", "slow")
    qoe = await Player([edges[0].url], PlayerOptions(trace=slow, max_segments=3)).play()
    assert max(qoe.bitrates_bps) < 1_000_000


async def test_failover_to_the_next_source_when_an_edge_dies(edges: Any) -> None:
    a, b = edges
    stopping: list[Any] = []

    def on_segment(n: int, variant: Any, qoe: QoeLog) -> None:
        if n == 1:
            stopping.append(asyncio.get_running_loop().create_task(a.stop()))

    player = Player([a.url, b.url], PlayerOptions(on_segment=on_segment, max_buffer_s=4))
    qoe = await player.play()
    await asyncio.gather(*stopping)
    assert len(qoe.bitrates_bps) == 6
    assert qoe.failovers == 1 and player.served_by[:2] == [0, 0] and player.served_by[-1] == 1
    assert qoe.rebuffer_s < 4.0


async def test_all_sources_down_is_a_clear_failure(edges: Any) -> None:
    for e in edges:
        await e.stop()
    with pytest.raises(PlaybackFailed, match="all 2 sources failed"):
        await Player([edges[0].url, edges[1].url]).play()


async def test_cli_plays_given_urls_and_reports_errors_in_one_line(edges: Any) -> None:
    runner = CliRunner()
    # The CLI runs its own event loop: give it a thread, so this loop keeps serving the edges.
    res = await asyncio.to_thread(runner.invoke, cli, ["client", "play", "demo", "--url", edges[0].url, "--json",
                                                       "--max-segments", "2", "--trace", "constant-5mbps"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["segments"] == 2 and summary["trace"] == "constant-5mbps"
    res = await asyncio.to_thread(runner.invoke, cli, ["client", "play", "demo", "--url", edges[0].url,
                                                       "--trace", "nope"])
    assert res.exit_code == 1 and "no trace 'nope'" in res.output
    res = await asyncio.to_thread(runner.invoke, cli, ["client", "play", "demo", "--api", "http://127.0.0.1:1"])
    assert res.exit_code == 1 and "cannot reach the control API" in res.output
