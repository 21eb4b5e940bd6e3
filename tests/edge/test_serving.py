"""The segment server against a real running edge: ranges, conditionals, HEAD, types, CORS, hostile
paths and hostile tokens (raw sockets, so no client normalises the path first), misses."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

SEGMENT = os.urandom(300_000)
MASTER = b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000\n720p/index.m3u8\n" + b"#" * 100
FILES = {
    "hls/master.m3u8": MASTER,
    "hls/720p/init.mp4": b"\x00\x00\x00\x18ftypiso6" + os.urandom(500),
    "hls/720p/seg_00001.m4s": SEGMENT,
    "dash/manifest.mpd": b"<?xml version='1.0'?><MPD/>",
    "subs/en.vtt": b"WEBVTT\n\n00:00.000 --> 00:01.000\nhi\n",
    "art/poster.jpg": b"\xff\xd8\xff" + os.urandom(2000),
}
SECRET = b"this file lives outside the cache and must never be served"


@pytest.fixture(params=[True, False], ids=["fastpath", "aiohttp"])
async def seeded(request: Any, edge_factory: Any, seed: Any) -> Any:
    """Every test runs against both shells: the fast path (the default) and plain aiohttp."""
    edge = await edge_factory(http={"fast_path": request.param})
    await seed(edge.ctx.store, "t1", "v1", FILES)
    return edge


async def get(url: str, **headers: str) -> tuple[int, bytes, Any]:
    async with aiohttp.ClientSession(auto_decompress=False) as s, \
            s.get(url, headers=headers, allow_redirects=False) as r:
        return r.status, await r.read(), r.headers.copy()  # case-insensitive, like HTTP


@pytest.mark.parametrize(("path", "use_sendfile"), [("hls/720p/seg_00001.m4s", True),
                                                    ("hls/720p/seg_00001.m4s", False), ("hls/master.m3u8", True)])
async def test_every_range_form(seeded: Any, path: str, use_sendfile: bool) -> None:
    seeded.ctx.server.use_sendfile = use_sendfile
    body = FILES[path]
    size = len(body)
    url = seeded.content_url(seeded.token("t1"), "t1", path)
    status, got, h = await get(url)
    assert status == 200 and got == body and h["Accept-Ranges"] == "bytes"
    cases = {"bytes=0-99": (0, 100), "bytes=100-": (100, size), "bytes=-50": (size - 50, size),
             f"bytes=10-{size + 500}": (10, size), "bytes=7-7": (7, 8)}
    for rng, (a, b) in cases.items():
        status, got, h = await get(url, Range=rng)
        assert status == 206, rng
        assert got == body[a:b], rng
        assert h["Content-Range"] == f"bytes {a}-{b - 1}/{size}", rng
    for rng in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}"):
        status, _, h = await get(url, Range=rng)
        assert status == 416, rng
        assert h["Content-Range"] == f"bytes */{size}"


@pytest.mark.parametrize("path", ["hls/720p/seg_00001.m4s", "hls/master.m3u8"])
async def test_conditional_requests_and_head(seeded: Any, path: str) -> None:
    url = seeded.content_url(seeded.token("t1"), "t1", path)
    status, _, h = await get(url)
    assert status == 200, h
    etag, modified = h["ETag"], h["Last-Modified"]
    assert (await get(url, **{"If-None-Match": etag}))[0] == 304
    assert (await get(url, **{"If-None-Match": '"other"'}))[0] == 200
    assert (await get(url, **{"If-Modified-Since": modified}))[0] == 304
    assert (await get(url, **{"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}))[0] == 200
    async with aiohttp.ClientSession() as s, s.head(url) as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) == len(FILES[path])
        assert await r.read() == b""


async def test_content_types_cache_control_cors_and_no_compression(seeded: Any) -> None:
    expected = {"hls/master.m3u8": "application/vnd.apple.mpegurl", "dash/manifest.mpd": "application/dash+xml",
                "hls/720p/init.mp4": "video/mp4", "hls/720p/seg_00001.m4s": "video/iso.segment",
                "subs/en.vtt": "text/vtt", "art/poster.jpg": "image/jpeg"}
    tok = seeded.token("t1")
    for path, ctype in expected.items():
        status, body, h = await get(seeded.content_url(tok, "t1", path), **{"Accept-Encoding": "gzip, br"})
        assert status == 200 and body == FILES[path]
        assert h["Content-Type"].split(";")[0] == ctype
        assert h["Access-Control-Allow-Origin"] == "*" and "max-age" in h["Cache-Control"]
        assert "Content-Encoding" not in h
    async with aiohttp.ClientSession() as s, s.options(
            seeded.content_url(tok, "t1", "hls/master.m3u8"),
            headers={"Origin": "https://player.example", "Access-Control-Request-Method": "GET",
                     "Access-Control-Request-Headers": "range"}) as r:
        assert r.status == 204
        assert "GET" in r.headers["Access-Control-Allow-Methods"]
        assert "Range" in r.headers["Access-Control-Allow-Headers"]
        assert r.headers["Access-Control-Allow-Origin"] == "*"


async def test_manifests_come_from_memory_after_first_read(seeded: Any) -> None:
    url = seeded.content_url(seeded.token("t1"), "t1", "hls/master.m3u8")
    registry = seeded.ctx.metrics.registry

    def hits() -> float:
        return registry.get_sample_value("nearcast_edge_cache_hits_total", {"where": "memory"}) or 0.0

    before = hits()
    for _ in range(3):
        assert (await get(url))[1] == MASTER
    assert hits() - before == 2
    assert len(seeded.ctx.server.memory) >= 1



async def get_from(url: str, local_ip: str) -> int:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(local_ip, 0))) as s, \
            s.get(url, allow_redirects=False) as r:
        await r.read()
        return r.status


async def test_a_repeated_target_still_checks_expiry_client_and_version(seeded: Any, seed: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The parsed path and the rendered memory answer are remembered per target (edge/serving.py); the
    token's expiry, its client binding and the served version are still checked on every request."""
    tok = seeded.token("t1", client="127.0.0.1/32", ttl=60)
    url = seeded.content_url(tok, "t1", "hls/master.m3u8")
    for _ in range(3):
        assert (await get(url))[:2] == (200, MASTER)
    assert await get_from(url, "127.0.0.2") == 403  # the same target from an address the token does not cover
    assert (await get(url))[1] == MASTER
    # a new version of the title: the same target now answers its bytes, never the remembered ones
    await seed(seeded.ctx.store, "t1", "v2", {**FILES, "hls/master.m3u8": MASTER + b"v2"})
    status, body, h = await get(url)
    assert (status, body, h["Content-Length"]) == (200, MASTER + b"v2", str(len(MASTER) + 2))
    assert (await get(url))[1] == MASTER + b"v2"
    # later than the token's expiry plus the leeway: refused, though this target was just served
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 60 + 31)
    status, body, _ = await get(url)
    assert status == 403 and b"expired" in body


HOSTILE = [
    "/v1/content/{t}/t1/../../../etc/passwd",
    "/v1/content/{t}/t1/hls/../../../../etc/passwd",
    "/v1/content/{t}/t1/%2e%2e/%2e%2e/index.db",
    "/v1/content/{t}/t1/hls/%2E%2E%2F%2E%2E%2Fserved.json",
    "/v1/content/{t}/t1/%252e%252e/%252e%252e/index.db",
    "/v1/content/{t}/t1/hls%5c..%5c..%5cindex.db",
    "/v1/content/{t}/t1/hls\\..\\..\\index.db",
    "/v1/content/{t}/t1/hls/master.m3u8%00.jpg",
    "/v1/content/{t}/t1//etc/passwd",
    "/v1/content/{t}/t1/%2fetc%2fpasswd",
    "/v1/content/{t}/t1/./hls/master.m3u8",
    "/v1/content/{t}/t1/.hidden",
    "/v1/content/{t}/..%2f..%2fsecret/x",
    "/v1/content/{t}/t1/hls/%ff%fe.m3u8",
    "/v1/content/{t}/t1/" + "a/" * 20 + "x.m4s",
    "/v1/content/{t}/t1/" + "a" * 5000,
]


async def test_hostile_paths_are_refused_and_nothing_outside_is_read(raw: Any, seeded: Any, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    (tmp_path / "cache" / "secret.txt").write_bytes(SECRET)
    tok = seeded.token("t1")
    for line in HOSTILE:
        status, data = await raw(seeded.port, "GET " + line.format(t=tok))
        assert 400 <= status < 500, (line, data[:200])
        assert SECRET not in data and b"root:" not in data
    # the token's own path is checked too: a path of another title is refused before the disk is touched
    status, _ = await raw(seeded.port, f"GET /v1/content/{tok}/t2/hls/master.m3u8")
    assert status == 403


async def test_symlinks_out_of_the_cache_are_not_followed(raw: Any, seeded: Any, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    root = tmp_path / "cache" / "sets" / "t1" / "v1"
    (root / "hls" / "evil.m3u8").symlink_to(secret)
    (root / "hls" / "evil.m4s").symlink_to(secret)
    (root / "linked").symlink_to(tmp_path)
    tok = seeded.token("t1")
    for path in ("hls/evil.m3u8", "hls/evil.m4s", "linked/secret.txt"):
        status, data = await raw(seeded.port, f"GET /v1/content/{tok}/t1/{path}")
        assert 400 <= status < 500 and SECRET not in data, path
    assert seeded.ctx.metrics.refused.labels("symlink")._value.get() >= 3


async def test_a_manifest_is_read_from_the_descriptor_that_was_checked(seeded: Any, tmp_path: Path) -> None:
    """The memory cache is filled from the file edge.beneath opened (no symlinks), not by path again: a
    symlink swapped in between the check and the read (here, deterministically, right after resolve) is
    never followed."""
    from edge.serving import Exchange, PendingRead

    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    root = tmp_path / "cache" / "sets" / "t1" / "v1"
    tok = seeded.token("t1")
    server = seeded.ctx.server
    pending = server.resolve(Exchange("GET", f"/v1/content/{tok}/t1/dash/manifest.mpd", {}, "127.0.0.1"))
    assert isinstance(pending, PendingRead)
    (root / "dash" / "manifest.mpd").unlink()
    (root / "dash" / "manifest.mpd").symlink_to(secret)
    reply = await server.read(pending)
    assert (reply.status, reply.body) == (200, FILES["dash/manifest.mpd"])
    assert pending.fd == -1  # read() took the descriptor and closed it
    pending.close()  # and a second close is harmless


async def test_a_fifo_or_directory_in_the_cache_is_a_miss_not_a_hang(raw: Any, seeded: Any, tmp_path: Path) -> None:
    root = tmp_path / "cache" / "sets" / "t1" / "v1"
    os.mkfifo(root / "hls" / "pipe.m4s")  # opening it for reading would block without O_NONBLOCK
    (root / "hls" / "dir.m4s").mkdir()
    tok = seeded.token("t1")
    for path in ("hls/pipe.m4s", "hls/dir.m4s"):
        status, _ = await asyncio.wait_for(raw(seeded.port, f"GET /v1/content/{tok}/t1/{path}"), 5)
        assert status in (302, 404), path
    status, _ = await raw(seeded.port, f"GET /v1/content/{tok}/t1/hls/master.m3u8")
    assert status == 200


async def test_hostile_tokens_are_refused(seeded: Any) -> None:
    good = seeded.token("t1")
    path = "hls/master.m3u8"
    assert (await get(seeded.content_url(good, "t1", path)))[0] == 200
    version, kid, payload, mac = good.split(".")
    flipped_mac = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    flipped_payload = payload[:5] + ("x" if payload[5] != "x" else "y") + payload[6:]
    bad = {
        "flipped mac bit": ".".join([version, kid, payload, flipped_mac]),
        "flipped payload": ".".join([version, kid, flipped_payload, mac]),
        "expired": seeded.token("t1", ttl=-120),
        "other title": seeded.token("t2"),
        "narrower prefix": seeded.token("t1", prefix="t1/dash/"),
        "other client prefix": seeded.token("t1", client="10.0.0.0/8"),
        "unknown key": "1.zz." + payload + "." + mac,
        "garbage": "not-a-token",
    }
    for why, tok in bad.items():
        status, body, h = await get(seeded.content_url(tok, "t1", path))
        assert status == 403, why
        assert b"EXTM3U" not in body and h["Access-Control-Allow-Origin"] == "*"
    assert seeded.ctx.metrics.refused.labels("token")._value.get() >= len(bad)


async def test_misses_redirect_to_the_next_source_never_5xx(seeded: Any) -> None:
    other = "http://127.0.0.2:9/v1/content/TOKEN-B"
    tok = seeded.token("t9", fallbacks=(seeded.url + "/v1/content/self", other))
    status, _, h = await get(seeded.content_url(tok, "t9", "hls/master.m3u8"))
    assert status == 302 and h["Location"] == f"{other}/t9/hls/master.m3u8"
    # a title we hold but a file we do not: also a content miss
    tok1 = seeded.token("t1", fallbacks=(other,))
    status, _, h = await get(seeded.content_url(tok1, "t1", "hls/1080p/seg_9.m4s"))
    assert status == 302 and h["Location"] == f"{other}/t1/hls/1080p/seg_9.m4s"
    status, body, _ = await get(seeded.content_url(seeded.token("t9"), "t9", "a.m4s"))
    assert status == 404 and b"no fallback" in body
    assert seeded.ctx.metrics.misses.labels("content")._value.get() == 3
    async with aiohttp.ClientSession() as s, s.get(seeded.url + "/metrics") as r:
        text = await r.text()
    assert 'nearcast_edge_cache_misses_total{cause="content"} 3.0' in text
    assert 'nearcast_edge_http_requests_total{kind="manifest",status="302"}' in text
    assert "nearcast_edge_http_request_duration_seconds_bucket" in text


async def test_wrong_methods_and_bodies_are_4xx(raw: Any, seeded: Any) -> None:
    tok = seeded.token("t1")
    status, _ = await raw(seeded.port, f"POST /v1/content/{tok}/t1/hls/master.m3u8",
                                  {"Content-Length": "0"})
    assert status == 405
    status, _ = await raw(seeded.port, "GET /v1/content/")
    assert 400 <= status < 500
