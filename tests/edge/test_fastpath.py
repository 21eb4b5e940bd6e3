"""The fast path's own wire behaviour (edge/fastpath.py): what aiohttp used to do for it.

Raw sockets throughout, so pipelining, HTTP/1.0 and malformed input reach the server as written."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import pytest

SEGMENT = os.urandom(700_000)
MASTER = b"#EXTM3U\n" + b"#" * 1000
FILES = {"hls/master.m3u8": MASTER, "hls/seg_1.m4s": SEGMENT}


@pytest.fixture
async def fast(edge_factory: Any, seed: Any) -> Any:
    edge = await edge_factory(http={"header_timeout_s": 0.3, "idle_timeout_s": 0.6, "max_connections": 4,
                                    "max_header_bytes": 4096})
    await seed(edge.ctx.store, "t1", "v1", FILES)
    return edge


async def read_response(reader: asyncio.StreamReader, *, head: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One response; ``head``: it answers a HEAD (a length, but no body)."""
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), 5) if length and not head else b""
    return status, headers, body


def get(path: str, *extra: str, method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    return "\r\n".join([f"{method} {path} {version}", "Host: x", *extra, "", ""]).encode()


async def test_pipelined_requests_and_keep_alive_across_segment_and_manifest(fast: Any) -> None:
    tok = fast.token("t1")
    seg, man = (f"/v1/content/{tok}/t1/{p}" for p in ("hls/seg_1.m4s", "hls/master.m3u8"))
    reader, writer = await asyncio.open_connection("127.0.0.1", fast.port)
    writer.write(get(seg) + get(man) + get(seg, "Range: bytes=0-9") + get(man, method="HEAD") + get(man))
    answers = [await read_response(reader, head=i == 3) for i in range(4)]
    assert [(s, b) for s, _, b in answers] == [(200, SEGMENT), (200, MASTER), (206, SEGMENT[:10]), (200, b"")]
    # HEAD carries the length of the body it does not send; the next response follows directly
    assert answers[3][1]["content-length"] == str(len(MASTER))
    status, _, body = await read_response(reader)
    assert (status, body) == (200, MASTER)
    writer.write(get(man))  # still open after all of that
    assert (await read_response(reader))[2] == MASTER
    writer.close()
    sample = fast.ctx.metrics.registry.get_sample_value
    assert sample("nearcast_edge_http_requests_total", {"status": "200", "kind": "segment"}) == 1
    assert sample("nearcast_edge_http_response_bytes_total", {"status": "200", "kind": "segment"}) == len(SEGMENT)
    assert fast.ctx.metrics.demand.titles["t1"][0] == 6



async def test_a_body_the_socket_does_not_take_at_once_is_finished_by_a_task(
        fast: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Segments are sendfile'd straight from data_received; what the socket does not take then (here the
    first call takes 1000 bytes and the second would block) is sent by loop.sendfile from that offset."""
    real, calls = os.sendfile, []

    def partial(out: int, fd: int, offset: int, count: int) -> int:
        calls.append((offset, count))
        if len(calls) == 1:
            return real(out, fd, offset, min(count, 1000))
        if len(calls) == 2:
            raise BlockingIOError
        return real(out, fd, offset, count)

    monkeypatch.setattr(os, "sendfile", partial)
    tok = fast.token("t1")
    seg = f"/v1/content/{tok}/t1/hls/seg_1.m4s"
    reader, writer = await asyncio.open_connection("127.0.0.1", fast.port)
    writer.write(get(seg, "Range: bytes=100-") + get(f"/v1/content/{tok}/t1/hls/master.m3u8"))
    status, _, body = await read_response(reader)
    assert (status, body) == (206, SEGMENT[100:])
    assert calls[:3] == [(100, len(SEGMENT) - 100), (1100, len(SEGMENT) - 1100), (1100, len(SEGMENT) - 1100)]
    assert (await read_response(reader))[2] == MASTER  # the pipelined request waited for the task
    writer.close()
    assert fast.ctx.metrics.registry.get_sample_value(
        "nearcast_edge_http_response_bytes_total", {"status": "206", "kind": "segment"}) == len(SEGMENT) - 100


async def test_head_length_and_connection_close(fast: Any) -> None:
    tok = fast.token("t1")
    reader, writer = await asyncio.open_connection("127.0.0.1", fast.port)
    writer.write(get(f"/v1/content/{tok}/t1/hls/seg_1.m4s", method="HEAD"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert f"Content-Length: {len(SEGMENT)}".encode() in head
    writer.write(get(f"/v1/content/{tok}/t1/hls/master.m3u8", "Connection: close"))
    status, headers, body = await read_response(reader)
    assert status == 200 and body == MASTER and headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    writer.close()


async def test_http_1_0_closes_unless_keep_alive(fast: Any) -> None:
    url = f"/v1/content/{fast.token('t1')}/t1/hls/master.m3u8"
    reader, writer = await asyncio.open_connection("127.0.0.1", fast.port)
    writer.write(get(url, "Connection: keep-alive", version="HTTP/1.0"))
    status, headers, body = await read_response(reader)
    assert (status, body, headers["connection"]) == (200, MASTER, "keep-alive")
    writer.write(get(url, version="HTTP/1.0"))
    assert (await read_response(reader))[2] == MASTER
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_other_routes_are_handed_to_aiohttp_on_the_same_port_and_connection(fast: Any) -> None:
    url = f"/v1/content/{fast.token('t1')}/t1/hls/master.m3u8"
    reader, writer = await asyncio.open_connection("127.0.0.1", fast.port)
    writer.write(get(url) + get("/healthz"))
    assert (await read_response(reader))[2] == MASTER
    status, headers, body = await read_response(reader)
    assert status == 200 and b'"status": "ok"' in body and "aiohttp" in headers.get("server", "")
    writer.write(get("/metrics"))  # aiohttp owns the connection now, and still serves content on it
    status, _, body = await read_response(reader)
    assert status == 200 and b"nearcast_edge_http_requests_total" in body
    writer.write(get(url))
    assert (await read_response(reader))[2] == MASTER
    writer.write(get("/v1/home/p1"))
    status, _, _ = await read_response(reader)
    assert status in (200, 400, 404, 503)  # whatever the home service says: it answered over HTTP
    writer.close()


async def test_a_request_with_a_body_is_handed_over(fast: Any, raw: Any) -> None:
    status, _ = await raw(fast.port, f"POST /v1/content/{fast.token('t1')}/t1/hls/master.m3u8",
                          {"Content-Length": "0"})
    assert status == 405


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"GET /v1/content/x HTTP/1.1 extra\r\n\r\n",
    b"GET /v1/content/x HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET /v1/content/x HTTP/1.1\r\nBad Name: x\r\n\r\n",
    b"GET /v1/content/\x01x HTTP/1.1\r\n\r\n",
    b"GET /v1/content/x FTP/1.0\r\n\r\n",
    b"GET /v1/content/x HTTP/1.1\r\nRange: bytes=0-1\r\nRange: bytes=2-3\r\n\r\n",
])
async def test_malformed_requests_get_400_and_the_connection_closes(fast: Any, request_bytes: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", fast.port)
    writer.write(request_bytes)
    data = await asyncio.wait_for(reader.read(), 5)
    assert data.startswith(b"HTTP/1.1 400 ")
    writer.close()


async def test_oversized_header_gets_431(fast: Any) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", fast.port)
    writer.write(b"GET /v1/content/x HTTP/1.1\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    assert data.startswith(b"HTTP/1.1 431 ")
    writer.close()


async def test_slow_clients_and_idle_connections_are_closed(fast: Any) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", fast.port)
    writer.write(b"GET /v1/content/x HTTP/1.1\r\n")  # slowloris: the head never completes
    for _ in range(3):
        await asyncio.sleep(0.1)
        writer.write(b"X-A: b\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    assert data.startswith(b"HTTP/1.1 408 ")
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", fast.port)
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # closed after idle_timeout_s
    assert fast.ctx.metrics.refused.labels("timeout")._value.get() >= 1
    writer.close()
    idle_writer.close()


async def test_connections_beyond_the_limit_get_503(fast: Any) -> None:
    url = f"/v1/content/{fast.token('t1')}/t1/hls/master.m3u8"
    held = [await asyncio.open_connection("127.0.0.1", fast.port) for _ in range(4)]
    for reader, writer in held:  # each one is served, so each is surely accepted
        writer.write(get(url))
        assert (await read_response(reader))[0] == 200
    reader, writer = await asyncio.open_connection("127.0.0.1", fast.port)
    data = await asyncio.wait_for(reader.read(), 5)
    assert data.startswith(b"HTTP/1.1 503 ")
    for _, w in held:
        w.close()
    writer.close()


async def test_each_loop_variant_runs_on_the_loop_it_names(request: pytest.FixtureRequest) -> None:
    """tests/edge/conftest.py runs this module on asyncio's loop and on uvloop (the daemon's default)."""
    name = type(asyncio.get_running_loop()).__module__
    assert name.startswith(request.node.callspec.id), name


async def test_a_slow_reader_gets_the_whole_segment_mostly_by_sendfile(
        fast: Any, seed: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client with a small receive window: the socket is full again and again.  The body still arrives
    whole and in order, the pipelined request after it is answered, and sendfile(2) carried most of it
    (the transport only gets a 16 KiB chunk each time the socket is full, to be told when it has room)."""
    real, by_sendfile = os.sendfile, []

    def counting(out: int, fd: int, offset: int, count: int) -> int:
        n = real(out, fd, offset, count)
        by_sendfile.append(n)
        return n

    big = os.urandom(10 * 1024 * 1024)  # more than the kernel's largest send buffer (tcp_wmem: 4 MB)
    await seed(fast.ctx.store, "t2", "v1", {"big.m4s": big, "master.m3u8": MASTER})
    monkeypatch.setattr(os, "sendfile", counting)
    tok = fast.token("t2")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.connect(("127.0.0.1", fast.port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock, limit=8192)
    writer.write(get(f"/v1/content/{tok}/t2/big.m4s") + get(f"/v1/content/{tok}/t2/master.m3u8"))
    await reader.readuntil(b"\r\n\r\n")
    body = bytearray()
    while len(body) < len(big):
        body += await asyncio.wait_for(reader.read(min(4096, len(big) - len(body))), 5)
        await asyncio.sleep(0)
    assert bytes(body) == big
    assert (await read_response(reader))[2] == MASTER
    writer.close()
    assert len(by_sendfile) > 2  # the socket was full more than once
    assert sum(by_sendfile) > len(big) // 2, (sum(by_sendfile), len(by_sendfile))
