"""Hostile input against a real edge process: raw request targets, Range/conditional headers, and MQTT
messages on every topic it subscribes to (commands, desired state).

One ``nearcast edge serve`` for the module (tests/faults/harness.py), a complete file set seeded
through the store's own API, and canaries planted where a traversal would land: a file beside the
cache, a file inside the cache directory but outside ``sets/``, and symlinks inside the served set
pointing out of it.  Every request goes over its own socket exactly as generated (no client-side
normalisation); half of them carry ``Content-Length: 0`` so the fast path hands them to aiohttp and
both shells are exercised.  No answer may be a 5xx, and no answer may contain a canary's bytes.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edge.catalog import Catalog
from edge.store import CacheStore
from shared import topics
from tests.edge.conftest import Watcher, seed_set
from tests.faults.harness import Edge, Stack, make_keys, until
from tests.hostile import examples, hostile_text, mqtt_payload, mqtt_received

MASTER = b"#EXTM3U\n#EXT-X-VERSION:7\n" + b"#" * 500 + b"\n"
SEGMENT = os.urandom(300_000)
FILES = {"hls/master.m3u8": MASTER, "hls/seg_1.m4s": SEGMENT, "dash/manifest.mpd": b"<MPD/>\n"}
CANARY = b"CANARY-" + secrets.token_hex(16).encode()
HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


class Target:
    def __init__(self, edge: Edge, token: str, canaries: list[bytes], broker_port: int) -> None:
        self.edge = edge
        self.broker_port = broker_port
        self.token = token
        self.canaries = canaries

    def send(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        """One request on its own connection; the whole answer, split into status, headers and body."""
        with socket.create_connection(("127.0.0.1", self.edge.port), timeout=10) as sock:
            sock.sendall(request)
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        raw = b"".join(chunks)
        for canary in self.canaries:
            assert canary not in raw, f"a canary leaked for {request[:200]!r}"
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1."), (request[:200], raw[:200])
        status = int(lines[0].split(" ")[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        return status, headers, body


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    work = tmp_path_factory.mktemp("hostile-edge")
    keys = make_keys(work / "keys")
    with Stack(work / "stack") as stack:
        broker = stack.broker()
        edge = stack.edge("edge-hostile", broker.port, keys)
        _seed(edge.cache_dir)
        edge.start()
        outside = work / "outside"
        outside.mkdir()
        (outside / "canary.txt").write_bytes(CANARY)
        (outside / "seg_1.m4s").write_bytes(CANARY)
        (edge.cache_dir / "canary.txt").write_bytes(CANARY)  # in the cache, not in a served set
        served = edge.cache_dir / "sets" / "t1" / "v1"
        (served / "hls" / "evil.m4s").symlink_to(outside / "canary.txt")
        (served / "evil.m3u8").symlink_to(outside / "canary.txt")
        (served / "out").symlink_to(outside, target_is_directory=True)
        (edge.cache_dir / "sets" / "t2").symlink_to(outside, target_is_directory=True)
        token = edge.token("t1/")
        yield Target(edge, token, [CANARY], broker.port)
        assert "Traceback" not in edge.log(100_000), edge.log()


def _seed(cache_dir: Path) -> None:
    async def seed() -> None:
        store = CacheStore(cache_dir, 64 << 20, Catalog(cache_dir))
        await store.open()
        try:
            await seed_set(store, "t1", "v1", FILES)
        finally:
            await store.close()

    asyncio.run(seed())


def _request(target: str, *, handover: bool, method: str = "GET", extra: str = "") -> bytes:
    length = "Content-Length: 0\r\n" if handover else ""
    return (f"{method} ".encode() + target.encode("utf-8", "surrogateescape")
            + f" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{length}{extra}\r\n".encode("latin-1"))


def test_the_planted_traps_are_refused_and_the_set_is_served(target: Target) -> None:
    base = f"/v1/content/{target.token}/t1"
    for handover in (False, True):
        assert target.send(_request(f"{base}/hls/master.m3u8", handover=handover))[2] == MASTER
        assert target.send(_request(f"{base}/hls/seg_1.m4s", handover=handover))[2] == SEGMENT
        for path in ("hls/evil.m4s", "evil.m3u8", "out/canary.txt", "out/seg_1.m4s", "../canary.txt",
                     "%2e%2e/%2e%2e/canary.txt", "..%2f..%2fcanary.txt", "hls/..\\..\\..\\canary.txt"):
            status = target.send(_request(f"{base}/{path}", handover=handover))[0]
            assert status in (400, 403, 404), (path, status)
        t2 = target.edge.token("t2/")
        assert target.send(_request(f"/v1/content/{t2}/t2/canary.txt", handover=handover))[0] == 404


# Paths made of the set's real names and the planted traps, so requests reach the file layer too.
SEGMENTS = ["hls", "hls", "dash", "master.m3u8", "seg_1.m4s", "manifest.mpd", "evil.m4s", "evil.m3u8", "out",
            "canary.txt", "..", "%2e%2e", ".", "", "x", "v1"]
layered = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=5).map("/".join)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=HEALTH)
@given(st.one_of(st.just("t1"), st.just("t1"), st.sampled_from(["t1", "t2", "..", "%2e%2e", "t1%2f.."]), hostile_text),
       st.one_of(layered, layered, hostile_text),
       st.booleans(), st.sampled_from(["GET", "HEAD", "OPTIONS", "POST", "GET"]))
def test_hostile_request_targets_never_5xx_never_leak(target: Target, title: str, rest: str, handover: bool,
                                                      method: str) -> None:
    status, _, body = target.send(_request(f"/v1/content/{target.token}/{title}/{rest}", handover=handover,
                                           method=method))
    event(f"{method} -> {status}")
    assert status < 500
    if status in (200, 206) and method == "GET":
        assert body in FILES.values()


@settings(max_examples=examples(200), deadline=None, suppress_health_check=HEALTH)
@given(st.sampled_from(["", "/", "*", "//", "http://127.0.0.1/v1/content/", "/v1/content", "/v1/content/",
                        "/v1//content/", "/V1/CONTENT/", "/v1/content/..", "/%2e%2e/", "/v1/home/"]), hostile_text,
       st.booleans())
def test_hostile_targets_anywhere_never_5xx_never_leak(target: Target, prefix: str, rest: str, handover: bool) -> None:
    status, _, _ = target.send(_request(prefix + rest, handover=handover))
    assert status < 500 or status == 505  # an unsupported HTTP version is a 505 by definition


position = st.integers(0, 400_000).map(str) | st.just("") | st.sampled_from(["18446744073709551616", "-1", "1e3"])
header_value = st.builds("bytes={}-{}".format, position, position) | st.text(
    alphabet="bytes=-,0123456789 */\"W:", max_size=30) | st.sampled_from([
    "bytes=0-0", "bytes=-1", "bytes=0-", "bytes=299999-", "bytes=300000-", "bytes=0-1,2-3", "bytes=-0",
    "bytes=" + "9" * 25 + "-", "Mon, 12 Jan 1970 13:46:40 GMT", "Mon, 12 Jan 9999 13:46:40 GMT", "*", '""',
    "Thu, 01 Jan 1970 00:00:00 GMT", "garbage"])


@settings(max_examples=examples(300), deadline=None, suppress_health_check=HEALTH)
@given(st.sampled_from(["hls/master.m3u8", "hls/seg_1.m4s"]), st.dictionaries(
    st.sampled_from(["Range", "If-None-Match", "If-Modified-Since", "If-Range"]), header_value, max_size=4),
    st.booleans(), st.booleans())
def test_range_and_conditional_headers_answer_consistently(target: Target, path: str, headers: dict[str, str],
                                                           handover: bool, etag_first: bool) -> None:
    """Whichever shell and whichever headers: 200 is the whole file, 206 exactly the bytes its
    Content-Range names, 304 and 416 carry no body, and nothing else is answered."""
    whole = FILES[path]
    if etag_first and "If-None-Match" in headers:  # sometimes the validator the client really holds
        plain = target.send(_request(f"/v1/content/{target.token}/t1/{path}", handover=handover))
        headers["If-None-Match"] = plain[1]["etag"]
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    status, got, body = target.send(_request(f"/v1/content/{target.token}/t1/{path}", handover=handover, extra=extra))
    event(f"{path} -> {status}")
    assert status in (200, 206, 304, 416), (status, headers)
    if status == 200:
        assert body == whole
    elif status == 206:
        unit, _, spec = got["content-range"].partition(" ")
        span, _, size = spec.partition("/")
        first, _, last = span.partition("-")
        assert unit == "bytes" and int(size) == len(whole) and body == whole[int(first):int(last) + 1]
    elif status == 416:
        assert got["content-range"] == f"bytes */{len(whole)}" and body == b""
    else:
        assert body == b""  # 304: validators only


# -- MQTT: commands and desired state are handled or rejected, never a handler failure ---------------------
PUBLISHED: list[str] = []


@pytest.fixture(scope="module")
def publisher(target: Target) -> Iterator[Watcher]:
    w = Watcher(target.broker_port, "nearcast/v1/hostile-test/#")
    yield w
    w.close()


@settings(max_examples=examples(200), deadline=None, suppress_health_check=HEALTH)
@given(st.data())
def test_hostile_mqtt_commands_and_desired_state_are_rejected(target: Target, publisher: Watcher,
                                                              data: st.DataObject) -> None:
    aid = target.edge.name
    topic = data.draw(st.sampled_from([topics.appliance_commands(aid)]
                                      + [topics.appliance_desired(aid, kind) for kind in topics.DESIRED_KINDS]))
    publisher.publish(topic, mqtt_payload(data, "control"))
    PUBLISHED.append(topic)


def test_after_the_mqtt_storm_the_edge_serves_and_nothing_failed(target: Target) -> None:
    sent = len(PUBLISHED)
    counts = until(lambda: sum((c := mqtt_received(target.edge.url)).values()) >= sent and c, 30,
                   f"{sent} messages to be handled")
    assert counts["failed"] == 0 and counts["rejected"] > 0, counts
    base = f"/v1/content/{target.token}/t1"
    assert target.send(_request(f"{base}/hls/master.m3u8", handover=False))[2] == MASTER
