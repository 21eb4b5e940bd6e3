"""Hostile input against a real control plane process: origin paths, event batches, the ClearKey license
endpoint and MQTT messages on every topic it subscribes to; and the audit of every write route.

One ``nearcast control serve`` for the module (tests/faults/harness.py) with a private broker, a
published title, two CENC titles with their keys, and canaries where a traversal would land (beside
the origin, and symlinks inside a title pointing out).  No answer may be a 5xx or hold a canary; a
rejected event batch stores nothing; a license is only ever the key of the title its token names."""

from __future__ import annotations

import base64
import json
import secrets
import socket
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from control.encode.crypto import TitleKey, new_key, write_key
from shared import tokens, topics
from shared.messages import REGISTRY
from tests.edge.conftest import Watcher
from tests.faults.harness import Control, Stack, http_json, until
from tests.hostile import examples, hostile_text, json_leaf, json_values, mqtt_payload, mqtt_received

from .conftest import Harness, make_origin_title

CANARY = b"CANARY-" + secrets.token_hex(16).encode()
HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


class Plane:
    def __init__(self, control: Control, broker_port: int, keys: tokens.TokenKeys, titles: dict[str, TitleKey],
                 origin: dict[str, bytes]) -> None:
        self.control = control
        self.broker_port = broker_port
        self.keys = keys
        self.titles = titles  # CENC title -> its key
        self.origin = origin  # t1's files on the origin
        self.secrets = [CANARY] + [_b64(bytes.fromhex(k.key)).encode() for k in titles.values()]

    def send(self, request: bytes) -> tuple[int, bytes]:
        with socket.create_connection(("127.0.0.1", self.control.port), timeout=10) as sock:
            sock.sendall(request)
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
        raw = b"".join(chunks)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1."), (request[:200], raw[:200])
        return int(head.split(b" ")[1]), body

    def post(self, path: str, body: bytes, xff: str = "10.1.0.5") -> tuple[int, bytes]:
        return self.send(f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Forwarded-For: {xff}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)

    def events_stored(self) -> int:
        db = sqlite3.connect(f"file:{self.control.state_dir / 'control.db'}?mode=ro", uri=True, timeout=10)
        try:
            return int(db.execute("select count(*) from events").fetchone()[0])
        finally:
            db.close()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    work = tmp_path_factory.mktemp("hostile-control")
    with Stack(work / "stack") as stack:
        broker = stack.broker()
        control = stack.control("control-hostile", broker.port, {
            "http": {"trusted_proxies": ["127.0.0.1/32"]}, "fill": {"interval_s": 0.0},
            "ratelimit": {"client_rate": 0.0, "operator_rate": 0.0}})
        state = control.state_dir
        make_origin_title(state, "t1")
        keys = {}
        for title in ("enc1", "enc2"):
            keys[title] = new_key(title, "cenc")
            write_key(state / "keys", keys[title])
            make_origin_title(state, title, encryption={"scheme": "cenc", "kid": keys[title].kid})
        origin = {str(p.relative_to(state / "origin" / "t1")): p.read_bytes()
                  for p in (state / "origin" / "t1").rglob("*") if p.is_file()}
        control.start()
        for title in ("t1", "enc1", "enc2"):
            assert control.call("POST", "/v1/titles", {"title_id": title})[0] == 201
        outside = work / "outside"
        outside.mkdir()
        (outside / "canary.txt").write_bytes(CANARY)
        (state / "canary.txt").write_bytes(CANARY)
        (state / "origin" / "t1" / "v" / "evil.m4s").symlink_to(outside / "canary.txt")
        (state / "origin" / "t1" / "out").symlink_to(outside, target_is_directory=True)
        (state / "origin" / "t9").symlink_to(outside, target_is_directory=True)
        yield Plane(control, broker.port, tokens.TokenKeys.load(state / "token-keys.json"), keys, origin)
        log = control.log(1_000_000)
        assert "unhandled error" not in log and "Traceback" not in log, log[-4000:]


# -- origin files: nothing outside the origin is ever read ---------------------------------------------
def test_origin_traps_are_refused_and_real_files_served(plane: Plane) -> None:
    tok = tokens.sign(plane.keys, path_prefix="t1/", client_prefix="*", ttl_s=600)
    for rel, data in plane.origin.items():
        assert plane.send(_get(f"/v1/origin/{tok}/t1/{rel}")) == (200, data)
    for rel in ("v/evil.m4s", "out/canary.txt", "../canary.txt", "%2e%2e/%2e%2e/canary.txt", "..%2f..%2fcanary.txt",
                "v/..%5c..%5c..%5ccanary.txt", "%2fetc%2fpasswd", "fileset.json/.."):
        status, body = plane.send(_get(f"/v1/origin/{tok}/t1/{rel}"))
        assert status in (400, 403, 404) and CANARY not in body, (rel, status)
    t9 = tokens.sign(plane.keys, path_prefix="t9/", client_prefix="*", ttl_s=600)
    assert plane.send(_get(f"/v1/origin/{t9}/t9/canary.txt"))[0] == 404


def _get(target: str) -> bytes:
    return b"GET " + target.encode("utf-8", "surrogateescape") + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


ORIGIN_SEGMENTS = ["v", "seg0.m4s", "master.m3u8", "index.m3u8", "fileset.json", "evil.m4s", "out", "canary.txt",
                   "..", "%2e%2e", "%2f", "%5c", "", ".", "t1"]
origin_path = st.lists(st.sampled_from(ORIGIN_SEGMENTS), min_size=1, max_size=5).map("/".join)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=HEALTH)
@given(st.one_of(st.just("t1"), st.sampled_from(["t1", "t9", "..", "%2e%2e", "enc1"]), hostile_text),
       st.one_of(origin_path, origin_path, hostile_text), st.sampled_from(["t1/", "", "t9/", "enc1/"]))
def test_hostile_origin_paths_never_5xx_never_leak(plane: Plane, title: str, rest: str, prefix: str) -> None:
    tok = tokens.sign(plane.keys, path_prefix=prefix or "t1/", client_prefix="*", ttl_s=600)
    status, body = plane.send(_get(f"/v1/origin/{tok}/{title}/{rest}"))
    event(f"origin -> {status}")
    assert status < 500 and CANARY not in body
    if status == 200:
        assert body in plane.origin.values()


# -- event batches: 4xx stores nothing, 200 stores exactly what it says ----------------------------------
NOW = time.time()
event_doc = st.fixed_dictionaries({
    "event_id": st.text(alphabet="abcxyz019-_.", min_size=1, max_size=12) | json_leaf,
    "type": st.sampled_from(["play_start", "progress", "complete", "thumbs", "impression", "search", "qoe"])
    | json_leaf,
    "profile_id": st.sampled_from(["p1", "p2"]) | json_leaf,
    "title_id": st.sampled_from(["t1", "enc1"]) | json_leaf,
    "ts": st.floats(NOW - 86400, NOW + 60) | json_leaf,
}, optional={"device": st.sampled_from(["tv", "web"]) | json_leaf, "position_s": json_leaf,
             "duration_s": json_leaf, "value": st.sampled_from(["up", "down"]) | json_leaf, "query": json_leaf,
             "row": json_leaf, "position": json_leaf, "propensity": json_leaf, "zzz": json_leaf})
batch = st.one_of(
    st.fixed_dictionaries({"events": st.lists(event_doc, max_size=6)}),
    st.fixed_dictionaries({"events": st.lists(event_doc | json_values, max_size=4)}, optional={"x": json_leaf}),
    json_values,
)


@settings(max_examples=examples(150), deadline=None, suppress_health_check=HEALTH)
@given(batch, st.sampled_from(["json", "json", "raw-junk", "truncated"]))
def test_event_batches_rejected_whole_or_stored_exactly(plane: Plane, doc: Any, form: str) -> None:
    body = json.dumps(doc).encode()
    if form == "raw-junk":
        body = body[::-1]
    elif form == "truncated":
        body = body[: len(body) // 2]
    before = plane.events_stored()
    status, answer = plane.post("/v1/events", body)
    event(f"events -> {status}")
    assert status in (200, 400), (status, answer[:200])
    stored = plane.events_stored() - before
    if status == 400:
        assert stored == 0
    else:
        result = json.loads(answer)
        assert stored == result["accepted"] and result["accepted"] + result["duplicates"] >= 1


def test_oversized_and_non_json_batches_are_refused_whole(plane: Plane) -> None:
    before = plane.events_stored()
    good = {"event_id": "big-1", "type": "complete", "profile_id": "p1", "title_id": "t1", "ts": NOW}
    assert plane.post("/v1/events", json.dumps({"events": [good] * 501}).encode())[0] == 400
    huge = json.dumps({"events": [good], "pad": "x" * (2 << 20)}).encode()
    assert plane.post("/v1/events", huge)[0] == 413
    assert plane.post("/v1/events", b"\xff\xfe{")[0] == 400
    assert plane.post("/v1/events", b"[" * 100_000)[0] == 400
    assert plane.events_stored() == before


# -- the ClearKey license: a key only for a valid play token of that title ------------------------------
def _license_token(plane: Plane, kind: str, title: str) -> str:
    other = "enc2" if title == "enc1" else "enc1"
    if kind == "valid":
        return tokens.sign(plane.keys, path_prefix=f"{title}/", client_prefix="10.1.0.0/16", ttl_s=600)
    if kind == "other-title":
        return tokens.sign(plane.keys, path_prefix=f"{other}/", client_prefix="10.1.0.0/16", ttl_s=600)
    if kind == "other-client":
        return tokens.sign(plane.keys, path_prefix=f"{title}/", client_prefix="10.9.0.0/16", ttl_s=600)
    if kind == "expired":
        return tokens.sign(plane.keys, path_prefix=f"{title}/", client_prefix="10.1.0.0/16", ttl_s=1,
                           now=time.time() - 3600)
    if kind == "forged":
        forged = tokens.TokenKeys.generate()
        return tokens.sign(forged, path_prefix=f"{title}/", client_prefix="10.1.0.0/16", ttl_s=600)
    return kind  # random text


def test_license_for_its_own_title_only(plane: Plane) -> None:
    own = {t: _b64(bytes.fromhex(k.kid)) for t, k in plane.titles.items()}
    for title, other in (("enc1", "enc2"), ("enc2", "enc1")):
        valid = _license_token(plane, "valid", title)
        status, answer = plane.post(f"/v1/license/{valid}/{title}", json.dumps({"kids": [own[title]]}).encode())
        assert status == 200 and json.loads(answer)["keys"][0]["k"] == _b64(bytes.fromhex(plane.titles[title].key))
        # the other title's KID with this title's token; this title's token on the other title's URL
        assert plane.post(f"/v1/license/{valid}/{title}", json.dumps({"kids": [own[other]]}).encode())[0] == 403
        assert plane.post(f"/v1/license/{valid}/{other}", json.dumps({"kids": [own[other]]}).encode())[0] == 403
        for kind in ("other-title", "other-client", "expired", "forged"):
            token = _license_token(plane, kind, title)
            status, answer = plane.post(f"/v1/license/{token}/{title}", json.dumps({"kids": [own[title]]}).encode())
            assert status == 403 and not any(s in answer for s in plane.secrets), kind


kid_value = st.sampled_from(["enc1", "enc2", "junk"]) | st.text(max_size=30) | json_leaf


@settings(max_examples=examples(300), deadline=None, suppress_health_check=HEALTH)
@given(st.sampled_from(["enc1", "enc2", "enc1", "enc2", "t1", "nope", "..", "enc1%2f.."]),
       st.one_of(st.just("valid"), st.sampled_from(["valid", "other-title", "other-client", "expired", "forged"]),
                 hostile_text),
       st.one_of(st.just(["own"]), st.just(["own", "own"]), st.lists(kid_value, max_size=3), json_values),
       st.sampled_from(["temporary", "temporary", "persistent-license", 1]), st.booleans())
def test_license_only_for_a_valid_play_token_of_that_title(plane: Plane, title: str, token_kind: str, kids: Any,
                                                          kind: Any, raw_json: bool) -> None:
    key_title = title if title in plane.titles else "enc1"
    token = _license_token(plane, token_kind, key_title)
    if isinstance(kids, list):  # "own": the KID of the title asked for; "enc1"/"enc2": that title's KID
        kids = [_b64(bytes.fromhex(plane.titles[key_title if k == "own" else k].kid))
                if isinstance(k, str) and (k == "own" or k in plane.titles) else k for k in kids]
    doc = {"kids": kids, "type": kind} if raw_json else kids
    status, answer = plane.post(f"/v1/license/{token}/{title}", json.dumps(doc).encode())
    event(f"license -> {status}")
    assert status < 500, answer[:200]
    leaked = [s for s in plane.secrets if s in answer]
    if status != 200:
        assert not leaked
        return
    # Only a valid token for this very title, asking for this title's KID (and nothing else), gets a key.
    assert token_kind == "valid" and title in plane.titles and raw_json and kind == "temporary"
    key = plane.titles[title]
    assert kids and set(kids) == {_b64(bytes.fromhex(key.kid))}
    assert json.loads(answer)["keys"] == [{"kty": "oct", "kid": _b64(bytes.fromhex(key.kid)),
                                           "k": _b64(bytes.fromhex(key.key))}]
    assert leaked == [_b64(bytes.fromhex(key.key)).encode()]


# -- MQTT: every payload on every subscribed topic is handled or rejected, never a handler failure -------
@pytest.fixture(scope="module")
def publisher(plane: Plane) -> Iterator[Watcher]:
    w = Watcher(plane.broker_port, "nearcast/v1/hostile-test/#")
    yield w
    w.close()


PUBLISHED: list[str] = []


@settings(max_examples=examples(250), deadline=None, suppress_health_check=HEALTH)
@given(st.data())
def test_hostile_mqtt_messages_are_rejected_and_counted(plane: Plane, publisher: Watcher, data: st.DataObject) -> None:
    aid = data.draw(st.sampled_from(["edge-a", "edge-b", "x" * 64, "e.1"]))
    topic = data.draw(st.sampled_from([topics.appliance_status(aid), topics.appliance_telemetry(aid),
                                       topics.appliance_acks(aid)]))
    publisher.publish(topic, mqtt_payload(data, aid))
    PUBLISHED.append(topic)


def test_after_the_mqtt_storm_the_loop_lives_and_nothing_failed(plane: Plane, publisher: Watcher) -> None:
    """Runs after the property test above (file order): every message it sent was counted, none failed."""
    from shared.messages import ApplianceStatus, Telemetry

    publisher.publish(topics.appliance_status("edge-a"), b"", retain=True)  # clear retained fuzz
    publisher.publish(topics.appliance_status("edge-probe"),
                      REGISTRY.encode(ApplianceStatus("online", "test", time.time(), "http://edge-probe:1"),
                                      sender="edge-probe"))
    publisher.publish(topics.appliance_telemetry("edge-probe"),
                      REGISTRY.encode(Telemetry(1, 1.0, {"requests": 5.0}), sender="edge-probe"))
    url = plane.control.url
    sent = len(PUBLISHED) + 2
    counts = until(lambda: sum((c := mqtt_received(url)).values()) >= sent and c, 30, f"{sent} messages to be handled")
    assert counts["failed"] == 0, counts
    assert counts["rejected"] > 0 and counts["ok"] >= 2, counts
    status, body = http_json("GET", f"{url}/healthz")
    assert status == 200 and body["mqtt"] == "connected"
    status, body = plane.control.call("GET", "/v1/appliances/edge-probe")
    assert status in (200, 404)


# -- the audit log: every write route leaves a row ---------------------------------------------------------
async def test_every_write_route_leaves_an_audit_row(control: Harness) -> None:
    """Walk the route table: each non-GET operator route, called with a read-only token (403) and, unless
    its handler audits its own changes, with an admin token (whatever it answers), adds a row naming it."""
    from control.app import PUBLIC_PATHS, PUBLIC_PREFIXES, SELF_AUDITED

    writes = []
    for route in control.app.router.routes():
        info = route.resource.canonical if route.resource is not None else ""
        if route.method in ("GET", "HEAD", "OPTIONS", "*") or not info.startswith("/v1/"):
            continue
        path = info.replace("{", "").replace("}", "")  # /v1/tokens/name, /v1/appliances/id/drain ...
        writes.append((route.method, info, path))
    assert len(writes) >= 20 and {(m, i) for m, i, _ in writes} >= SELF_AUDITED

    async def rows() -> list[dict[str, Any]]:
        return list((await control.call("GET", "/v1/audit?limit=1000"))[1]["entries"])

    for method, info, path in writes:
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            continue  # no operator token involved: /v1/events, /v1/enroll (audited by the store), the license
        before = len(await rows())
        status, _ = await control.call(method, path, {}, token=control.reader)
        assert status == 403, (method, path, status)
        after = await rows()
        assert len(after) == before + 1 and after[0]["action"] == f"api.{method.lower()}", (method, path)
        assert after[0]["detail"] == {"route": info, "status": 403} and after[0]["actor"] == "operator:viewer"
        if (method, info) in SELF_AUDITED or path == "/v1/recs/train":
            continue  # audited by their handlers on success (tests of their own); training is not started here
        status, _ = await control.call(method, path, {})
        after = await rows()
        assert len(after) == before + 2, (method, path, status)
        assert after[0]["detail"] == {"route": info, "status": status} and after[0]["actor"] == "operator:root"
    # a self-audited route that succeeds writes its own row, not a second one
    before = len(await rows())
    assert (await control.call("POST", "/v1/tokens", {"name": "walker"}))[0] == 201
    after = await rows()
    assert len(after) == before + 1 and after[0]["action"] == "token.create"
