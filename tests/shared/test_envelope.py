from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.envelope import (
    MalformedEnvelope,
    PayloadTooLarge,
    UnknownMessageType,
    UnsupportedVersion,
)
from shared.errors import EnvelopeError
from shared.messages import REGISTRY, Ack, DesiredFill, FileSetRef, FillSource, Ping, Telemetry, TitleDemand


def test_round_trip_keeps_every_field() -> None:
    body = DesiredFill(7, [FileSetRef("t-1", "v2", "http://origin/t-1/v2/manifest.json", 1234,
                                      [FillSource("http://peer/", "peer", "edge-b")])], "01-06", 10_000)
    payload = REGISTRY.encode(body, sender="control", msg_id="m-1")
    env = REGISTRY.decode(payload)
    assert (env.type, env.v, env.id, env.sender) == ("desired.fill", 1, "m-1", "control")
    assert env.body == body


def test_nested_maps_of_dataclasses() -> None:
    body = Telemetry(3, 10.0, {"requests": 5.0}, {"disk": 0.5}, {"t1": TitleDemand(3, 900)})
    assert REGISTRY.decode(REGISTRY.encode(body, sender="edge-a")).body == body


def _doc(**over: object) -> bytes:
    doc: dict[str, object] = {"type": "command.ping", "v": 1, "id": "abc", "sender": "control", "ts": 1.5,
                              "body": {"note": "x"}}
    doc.update(over)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("payload", "error", "needle"), [
    (b"", MalformedEnvelope, "empty"),
    (b"\xff\xfe", MalformedEnvelope, "not JSON"),
    (b"[1,2]", MalformedEnvelope, "object"),
    (b'{"type": "command.ping"}', MalformedEnvelope, "missing"),
    (_doc(type="nope.nope"), UnknownMessageType, "unknown message type"),
    (_doc(v=2), UnsupportedVersion, "version 2"),
    (_doc(v=True), MalformedEnvelope, "v must"),
    (_doc(id="a/b"), MalformedEnvelope, "id must"),
    (_doc(id="x" * 65), MalformedEnvelope, "id must"),
    (_doc(sender="+"), MalformedEnvelope, "sender"),
    (_doc(ts="now"), MalformedEnvelope, "ts must"),
    (_doc(ts=-1), MalformedEnvelope, "ts must"),
    (_doc(body={"note": 5}), MalformedEnvelope, "body.note: expected string"),
    (_doc(body={"note": "x", "extra": 1}), MalformedEnvelope, "body.extra: unknown field"),
    (_doc(extra=1), MalformedEnvelope, "unknown field"),
    (b'{"type":"command.ping","v":1,"id":"a","sender":"b","ts":NaN,"body":{}}', MalformedEnvelope, "NaN"),
    (b"[" * 100_000 + b"]" * 100_000, MalformedEnvelope, "JSON"),
])
def test_bad_payloads_raise_typed_errors(payload: bytes, error: type[Exception], needle: str) -> None:
    with pytest.raises(error, match=needle):
        REGISTRY.decode(payload, max_bytes=1 << 20)


def test_oversized_payload_is_refused_before_parsing() -> None:
    big = _doc(body={"note": "x" * 5000})
    with pytest.raises(PayloadTooLarge):
        REGISTRY.decode(big, max_bytes=1000)
    assert REGISTRY.decode(big, max_bytes=10_000).body == Ping("x" * 5000)


def test_wrong_types_inside_nested_lists_name_the_path() -> None:
    body = {"generation": 1, "file_sets": [{"title_id": "t", "version": "v", "manifest_url": "u", "size": "big"}]}
    with pytest.raises(MalformedEnvelope, match=r"body.file_sets\[0\].size: expected integer"):
        REGISTRY.decode(_doc(type="desired.fill", body=body))


def test_validation_in_bodies_is_a_typed_error() -> None:
    body = {"generation": 1, "file_sets": [{"title_id": "../x", "version": "v", "manifest_url": "u", "size": 1}]}
    with pytest.raises(MalformedEnvelope, match="title id"):
        REGISTRY.decode(_doc(type="desired.fill", body=body))


def test_bool_is_not_an_integer() -> None:
    with pytest.raises(MalformedEnvelope):
        REGISTRY.decode(_doc(type="desired.fill", body={"generation": True}))


def test_ack_status_is_a_closed_set() -> None:
    with pytest.raises(MalformedEnvelope, match="must be one of"):
        REGISTRY.decode(_doc(type="command.ack", body={"command_id": "a", "command_type": "x", "status": "meh"}))
    ok = REGISTRY.decode(_doc(type="command.ack", body={"command_id": "a", "command_type": "x", "status": "done"}))
    assert isinstance(ok.body, Ack)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_raise_envelope_errors(payload: bytes) -> None:
    try:
        REGISTRY.decode(payload, max_bytes=500)
    except EnvelopeError:
        pass


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(REGISTRY.names()), json_values, st.dictionaries(
    st.sampled_from(["type", "v", "id", "sender", "ts", "body", "zzz"]), json_values, max_size=4))
def test_mutated_envelopes_only_raise_envelope_errors(mtype: str, body: object, mutation: dict[str, object]) -> None:
    doc: dict[str, object] = {"type": mtype, "v": 1, "id": "id1", "sender": "s", "ts": 1.0, "body": body}
    doc.update(mutation)
    try:
        REGISTRY.decode(json.dumps(doc).encode())
    except EnvelopeError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=1, max_size=50), st.integers(0, 400))
def test_byte_flips_of_a_valid_message_only_raise_envelope_errors(junk: bytes, pos: int) -> None:
    good = REGISTRY.encode(DesiredFill(1, [FileSetRef("t", "v", "http://x", 1)]), sender="control")
    pos = pos % len(good)
    mutated = good[:pos] + junk + good[pos + len(junk):]
    try:
        REGISTRY.decode(mutated)
    except EnvelopeError:
        pass


@settings(max_examples=800, deadline=None)
@given(st.sampled_from(REGISTRY.names()), json_values)
def test_compiled_decoders_agree_with_the_reference_walk(mtype: str, body: object) -> None:
    from shared.schema import SchemaError, _compiled, _decode

    cls = REGISTRY.get(mtype).body
    try:
        reference = _decode(cls, body, "body", 0)
    except SchemaError:
        reference = "invalid"
    try:
        fast = _compiled(cls)(body)
    except Exception:
        fast = "invalid"
    assert fast == reference
