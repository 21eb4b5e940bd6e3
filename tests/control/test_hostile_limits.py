"""The control plane's connection limits, body limits and rate limits, over real sockets.

The app is served the way ``nearcast control serve`` serves it (``control.app.make_site`` and the
handler options from the same settings), with small limits so each one is reached quickly."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from control.app import CTX, build_app, connection_limits, make_site
from control.auth import TokenStore
from control.ratelimit import TokenBuckets, client_key, too_many_requests
from tests.hostile import first_answer

from .conftest import Harness, control_config, eventually

LIMITS = {"header_timeout_s": 0.5, "idle_timeout_s": 3.0, "max_connections": 6, "max_header_bytes": 4096,
          "max_body_bytes": 64 * 1024, "body_timeout_s": 2.5, "trusted_proxies": ["127.0.0.1/32"]}
RATES = {"operator_rate": 5.0, "operator_burst": 10.0, "client_rate": 5.0, "client_burst": 10.0}


@pytest.fixture
async def plane(tmp_path: Path, private_mosquitto: Any, port_factory: Any) -> AsyncIterator[Harness]:
    state = tmp_path / "state"
    state.mkdir()
    tokens = TokenStore([])
    admin, reader = tokens.add("root", "admin"), tokens.add("viewer", "read")
    tokens.save(state / "tokens.json")
    config = control_config(state, private_mosquitto.port, {"http": LIMITS, "ratelimit": RATES})
    port = port_factory()
    url = f"http://127.0.0.1:{port}"
    app = build_app(config, api_url=url)
    runner = web.AppRunner(app, shutdown_timeout=1, access_log=None, **connection_limits(config).handler_options())
    await runner.setup()
    await make_site(config, app, runner, "127.0.0.1", port).start()
    h = Harness(url, app, admin, reader, private_mosquitto.port, state)
    await eventually(app[CTX].session.connected.is_set)
    yield h
    await h.http.close()
    await runner.cleanup()


def port_of(h: Harness) -> int:
    return int(h.url.rsplit(":", 1)[1])


def refused(h: Harness, reason: str) -> float:
    value = h.ctx.metrics.registry.get_sample_value("nearcast_control_http_refused_total", {"reason": reason})
    return value or 0.0


async def exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def test_a_slow_request_head_is_cut_off_after_the_header_timeout(plane: Harness) -> None:
    """Slowloris: one header line every 0.1 s would hold the connection for ever; it gets 408 at 0.5 s."""
    answer, elapsed = await trickle_head(port_of(plane), b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert elapsed >= 0.5  # not before its time; and well before the trickle's 30 s
    assert refused(plane, "timeout") == 1


async def trickle_head(port: int, start: bytes, pieces: list[bytes] | None = None) -> tuple[bytes, float]:
    """Send ``start``, then a piece every 0.1 s (default: 30 s of one header line each) until the server
    answers; returns what it answered, read until it closed, and how long that took."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(start)
    answer = await first_answer(reader, writer, pieces if pieces is not None else
                                [b"X-%d: y\r\n" % i for i in range(300)])
    elapsed = time.monotonic() - started
    return answer, elapsed


async def test_a_slow_body_is_not_a_slow_head(plane: Harness) -> None:
    """A body may take longer than the header timeout (uploads do); the next request on the connection
    is timed again from its own first byte.  The JSON body arrives in pieces and is still read whole."""
    body = json.dumps({"name": "slowpoke", "role": "read"}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(plane))
    writer.write(b"POST /v1/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n" % (plane.admin.encode(), len(body)))
    for i in range(0, len(body), 4):
        await asyncio.sleep(0.1)  # about 1.2 s in all
        writer.write(body[i:i + 4])
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 201 "), head
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    assert json.loads(await reader.readexactly(length))["name"] == "slowpoke"
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200 ")
    writer.close()
    assert refused(plane, "timeout") == 0


async def test_a_json_body_slower_than_the_body_timeout_gets_408(plane: Harness) -> None:
    """The slow-body twin of slowloris: 200 bytes announced, 5 every 0.1 s (4 s) against a 2.5 s deadline."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(plane))
    writer.write(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.8.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n")
    started = time.monotonic()
    answer = b""
    for _ in range(40):
        try:
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.1)
        except TimeoutError:
            writer.write(b"[" * 5)
            continue
        break
    elapsed = time.monotonic() - started
    writer.close()  # (aiohttp lingers up to 10 s for the rest of an unread body before it closes)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert elapsed >= 2.5  # not before the deadline (and a 408 means: before the body was complete)


async def test_oversized_heads_get_4xx(plane: Harness) -> None:
    many = b"".join(b"X-%d: %s\r\n" % (i, b"a" * 100) for i in range(60))  # 6.5 KB of short fields
    assert (await exchange(port_of(plane), b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
            ).split(b"\r\n")[0].endswith(b" 431 Request Header Fields Too Large")
    long_line = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
    assert b" 400 " in (await exchange(port_of(plane), long_line)).split(b"\r\n")[0]
    # the same fields arriving slowly, in pieces: refused as soon as the bound is passed
    answer, _ = await trickle_head(port_of(plane), b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
                                   [many[i:i + 2000] for i in range(0, len(many), 2000)])
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert refused(plane, "limits") == 3
    assert (await exchange(port_of(plane), b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            ).startswith(b"HTTP/1.1 200 ")


async def test_connections_beyond_the_cap_get_503_and_a_freed_slot_is_reused(plane: Harness) -> None:
    held = []
    for _ in range(6):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(plane))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200 ")
        held.append((reader, writer))
    assert (await exchange(port_of(plane), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
        b"HTTP/1.1 503 ")
    assert refused(plane, "connections") == 1
    held[0][1].close()
    await eventually(lambda: _accepts(plane))  # the freed slot is taken again
    for _, writer in held[1:]:
        writer.close()


async def _accepts(h: Harness) -> bool:
    answer = await exchange(port_of(h), b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return answer.startswith(b"HTTP/1.1 200 ")


async def test_bodies_beyond_the_limit_get_413_whatever_the_framing(plane: Harness) -> None:
    big = json.dumps({"events": [{"x": "a" * 1000}] * 70}).encode()  # ~70 KB > 64 KB
    for framing in (b"Content-Length: %d\r\n" % len(big), b"Transfer-Encoding: chunked\r\n"):
        payload = big if framing.startswith(b"Content") else b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big)
        answer = await exchange(port_of(plane), b"POST /v1/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                b"Content-Type: application/json\r\nX-Forwarded-For: 10.7.0.1\r\n" + framing
                                + b"\r\n" + payload)
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:100]
    # an operator route reads its JSON the same way
    status, _ = await plane.call("POST", "/v1/tokens", {"name": "n" * 70_000})
    assert status == 413


async def _burst(h: Harness, n: int, path: str, *, token: str | None, xff: str) -> list[tuple[int, str | None]]:
    out = []
    for _ in range(n):
        hdrs = {"X-Forwarded-For": xff}
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        async with h.http.get(h.url + path, headers=hdrs) as resp:
            await resp.read()
            out.append((resp.status, resp.headers.get("Retry-After")))
    return out


def limited(h: Harness, cls: str) -> float:
    value = h.ctx.metrics.registry.get_sample_value("nearcast_control_rate_limited_total", {"class": cls})
    return value or 0.0


async def test_a_client_address_beyond_its_budget_gets_429_then_recovers(plane: Harness) -> None:
    answers = await _burst(plane, 14, "/v1/edges", token=None, xff="10.1.0.1")
    statuses = [s for s, _ in answers]
    assert statuses[:10] == [200] * 10  # the burst
    assert 429 in statuses[10:]
    retry = int(next(r for s, r in answers if s == 429) or 0)
    assert retry >= 1
    # another address has its own budget, and so does another /64 in IPv6 (same /64: same budget)
    assert (await _burst(plane, 1, "/v1/edges", token=None, xff="10.1.0.2"))[0][0] == 200
    assert [s for s, _ in await _burst(plane, 11, "/v1/edges", token=None, xff="2001:db8::1")][-1] == 429
    assert (await _burst(plane, 1, "/v1/edges", token=None, xff="2001:db8:0:0:ffff::9"))[0][0] == 429
    assert (await _burst(plane, 1, "/v1/edges", token=None, xff="2001:db8:0:1::1"))[0][0] == 200
    await asyncio.sleep(retry)
    assert (await _burst(plane, 1, "/v1/edges", token=None, xff="10.1.0.1"))[0][0] == 200
    assert limited(plane, "client") >= 3
    # routes appliances fill from and operator routes are not the client budget's business
    assert (await _burst(plane, 1, "/healthz", token=None, xff="10.1.0.1"))[0][0] == 200


async def test_an_operator_token_beyond_its_budget_gets_429_then_recovers(plane: Harness) -> None:
    answers = await _burst(plane, 14, "/v1/titles", token=plane.reader, xff="10.2.0.1")
    statuses = [s for s, _ in answers]
    assert statuses[:10] == [200] * 10 and statuses[-1] == 429
    assert limited(plane, "operator") >= 1
    # the budget is the token's, wherever it comes from; another token has its own
    assert (await _burst(plane, 1, "/v1/titles", token=plane.reader, xff="10.2.0.2"))[0][0] == 429
    assert (await _burst(plane, 1, "/v1/titles", token=plane.admin, xff="10.2.0.1"))[0][0] == 200
    await asyncio.sleep(int(answers[-1][1] or 1))
    assert (await _burst(plane, 1, "/v1/titles", token=plane.reader, xff="10.2.0.1"))[0][0] == 200


async def test_guessing_tokens_spends_the_address_budget(plane: Harness) -> None:
    statuses = [s for s, _ in await _burst(plane, 13, "/v1/titles", token="nct_guess", xff="10.3.0.1")]
    assert statuses[:10] == [401] * 10 and statuses[-1] == 429
    # a valid token from the same address is still served: its own budget
    assert (await _burst(plane, 1, "/v1/titles", token=plane.admin, xff="10.3.0.1"))[0][0] == 200
    metrics = await plane.call("GET", "/metrics", token=None)
    assert 'nearcast_control_rate_limited_total{class="client"}' in metrics[1]
    assert "nearcast_control_http_refused_total" in metrics[1]


def test_token_buckets_are_pure_and_bounded() -> None:
    buckets = TokenBuckets(rate=2.0, burst=3.0, max_keys=4)
    assert [buckets.take("a", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", 100.0) == pytest.approx(0.5)  # half a second until the next token
    assert buckets.take("a", 100.5) == 0.0
    assert buckets.take("a", 100.5) > 0
    assert buckets.take("a", 1000.0) == 0.0 and buckets.take("a", 1000.0) == 0.0  # refilled to the burst only
    for i in range(10):
        buckets.take(f"k{i}", 1000.0)
    assert len(buckets) == 4  # least recently used keys forgotten
    off = TokenBuckets(rate=0.0, burst=1.0)
    assert all(off.take("a", 0.0) == 0.0 for _ in range(100)) and len(off) == 0
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert client_key("::ffff:10.0.0.1") == "10.0.0.1" and client_key("10.0.0.1") == "10.0.0.1"
    assert retry_after(too_many_requests(0.01)) == "1" and retry_after(too_many_requests(2.5)) == "3"


def retry_after(exc: web.HTTPException) -> str:
    return exc.headers["Retry-After"]
