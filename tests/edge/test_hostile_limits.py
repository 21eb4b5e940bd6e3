"""The edge's limits on aiohttp's connections: with ``http.fast_path`` off, and on connections the fast
path handed over to aiohttp (its own limits are in test_fastpath.py).  Raw sockets throughout."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.hostile import first_answer

HTTP = {"header_timeout_s": 0.4, "idle_timeout_s": 3.0, "max_connections": 4, "max_header_bytes": 4096}
FILES = {"hls/master.m3u8": b"#EXTM3U\n"}


def refused(edge: Any, reason: str) -> float:
    return float(edge.ctx.metrics.refused.labels(reason)._value.get())


@pytest.fixture(params=["handed-over", "aiohttp-only"])
async def edge(request: Any, edge_factory: Any, seed: Any) -> Any:
    running = await edge_factory(http={**HTTP, "fast_path": request.param == "handed-over"})
    await seed(running.ctx.store, "t1", "v1", FILES)
    running.mode = request.param
    return running


async def connect(edge: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection aiohttp owns: with the fast path on, a /healthz request hands it over first."""
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 ") and b"aiohttp" in head
    length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
    await reader.readexactly(length)
    return reader, writer


async def test_a_slow_head_gets_408(edge: Any) -> None:
    reader, writer = await connect(edge)
    writer.write(b"GET /metrics HTTP/1.1\r\n")
    answer = await first_answer(reader, writer, [b"X-%d: y\r\n" % i for i in range(300)])
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert refused(edge, "timeout") == 1


async def test_oversized_heads_get_431(edge: Any) -> None:
    many = b"".join(b"X-%d: %s\r\n" % (i, b"a" * 100) for i in range(60))
    reader, writer = await connect(edge)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    status_line = (await asyncio.wait_for(reader.read(), 5)).split(b"\r\n")[0]
    assert status_line.endswith(b" 431 Request Header Fields Too Large")
    writer.close()
    reader, writer = await connect(edge)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    answer = await first_answer(reader, writer, [many[i:i + 2000] for i in range(0, len(many), 2000)])
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert refused(edge, "limits") == 2


async def test_connections_beyond_the_cap_get_503(edge: Any) -> None:
    held = [await connect(edge) for _ in range(4)]
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    if edge.mode == "handed-over":  # the fast path counts its own; a fifth aiohttp connection is refused there
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 503 ")
    writer.close()
    assert refused(edge, "connections") == 1
    for _, w in held:
        w.close()


async def test_content_on_an_aiohttp_connection_still_parses_raw_paths(edge: Any) -> None:
    """Traversal attempts on a connection aiohttp owns meet the same raw-path rules (400), never a file."""
    token = edge.token("t1")
    for path in ("../../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "hls/..%2f..%2fx", "hls%5c..%5cx"):
        reader, writer = await connect(edge)
        writer.write(f"GET /v1/content/{token}/t1/{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.split(b" ")[1] in (b"400", b"404"), (path, answer[:80])
        assert b"root:" not in answer


async def test_a_body_nobody_asked_for_is_answered_without_waiting_for_it(edge: Any) -> None:
    """The edge has no route that takes a body: a request announcing a gigabyte gets its 4xx at once."""
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    writer.write(b"POST /v1/home/p1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n" + b"x" * 100_000)
    status_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)  # 100 KB of the 1 GB were sent
    assert status_line.startswith(b"HTTP/1.1 405 "), status_line
    writer.close()
