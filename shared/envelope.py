"""The versioned JSON envelope every MQTT payload travels in.

Wire form::

    {"type": "appliance.status", "v": 1, "id": "0192f...", "sender": "edge-a",
     "ts": 1764000000.0, "body": {...}}

Decoding is strict and bounded: the size is checked before parsing, every field is typed, the type
must be registered for the version given, and the body is decoded into the registered dataclass.
Anything else raises a subclass of :class:`~shared.errors.EnvelopeError` and nothing else, which is
what lets the MQTT loop log, count and ack a bad message without dying.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import EnvelopeError
from .ids import is_valid_id, new_id
from .schema import SchemaError, decode, encode

DEFAULT_MAX_BYTES = 256 * 1024
_ENVELOPE_KEYS = frozenset({"type", "v", "id", "sender", "ts", "body"})

B = TypeVar("B")


class PayloadTooLarge(EnvelopeError):
    pass


class MalformedEnvelope(EnvelopeError):
    pass


class UnknownMessageType(EnvelopeError):
    pass


class UnsupportedVersion(EnvelopeError):
    pass


@dataclass(frozen=True)
class MessageType(Generic[B]):
    """A registered message: its name, the schema version we speak, and its body dataclass."""

    name: str
    version: int
    body: type[B]
    #: Older versions still accepted on decode (bodies must decode into the same dataclass).
    accepts: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Envelope(Generic[B]):
    type: str
    v: int
    id: str
    sender: str
    ts: float
    body: B = field(repr=False)


class Registry:
    """The message types both daemons understand; immutable once built."""

    def __init__(self, types: list[MessageType[Any]]) -> None:
        self._types: dict[str, MessageType[Any]] = {}
        for mt in types:
            if mt.name in self._types:
                raise ValueError(f"message type {mt.name!r} registered twice")
            self._types[mt.name] = mt
        self._by_body = {mt.body: mt for mt in types}

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def names(self) -> list[str]:
        return sorted(self._types)

    def get(self, name: str) -> MessageType[Any]:
        try:
            return self._types[name]
        except KeyError:
            raise UnknownMessageType(f"unknown message type {name[:64]!r}") from None

    def type_of(self, body: object) -> MessageType[Any]:
        try:
            return self._by_body[type(body)]
        except KeyError:
            raise TypeError(f"{type(body).__name__} is not a registered message body") from None

    def wrap(self, body: B, *, sender: str, msg_id: str | None = None, ts: float | None = None) -> Envelope[B]:
        mt = self.type_of(body)
        return Envelope(mt.name, mt.version, msg_id or new_id(), sender, time.time() if ts is None else ts, body)

    def encode(self, body: object, *, sender: str, msg_id: str | None = None) -> bytes:
        return dumps(self.wrap(body, sender=sender, msg_id=msg_id))

    def decode(self, payload: bytes | bytearray | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Envelope[Any]:
        """Parse and validate a payload; raises only :class:`EnvelopeError` subclasses."""
        raw = parse_raw(payload, max_bytes=max_bytes)
        mt = self.get(raw["type"])
        if raw["v"] != mt.version and raw["v"] not in mt.accepts:
            raise UnsupportedVersion(
                f"{mt.name} version {raw['v']} is not supported (this side speaks v{mt.version})")
        try:
            body = decode(mt.body, raw["body"], "body")
        except SchemaError as exc:
            raise MalformedEnvelope(f"{mt.name}: {exc}") from None
        except RecursionError:
            raise MalformedEnvelope(f"{mt.name}: body nested too deeply") from None
        return Envelope(mt.name, raw["v"], raw["id"], raw["sender"], raw["ts"], body)


def dumps(env: Envelope[Any]) -> bytes:
    doc = {"type": env.type, "v": env.v, "id": env.id, "sender": env.sender, "ts": env.ts,
           "body": encode(env.body)}
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_raw(payload: bytes | bytearray | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Check size and the envelope's own fields; leave the body undecoded.

    Useful on its own for acking a message whose body is bad: the id and sender are known.
    """
    size = len(payload.encode() if isinstance(payload, str) else payload)
    if size > max_bytes:
        raise PayloadTooLarge(f"payload of {size} bytes exceeds the limit of {max_bytes}")
    if size == 0:
        raise MalformedEnvelope("empty payload")
    try:
        doc = json.loads(payload, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEnvelope(f"not JSON: {str(exc)[:120]}") from None
    except RecursionError:
        raise MalformedEnvelope("JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise MalformedEnvelope("envelope must be a JSON object")
    missing = sorted(_ENVELOPE_KEYS - doc.keys())
    if missing:
        raise MalformedEnvelope(f"envelope is missing {', '.join(missing)}")
    extra = sorted(doc.keys() - _ENVELOPE_KEYS)
    if extra:
        raise MalformedEnvelope(f"envelope has unknown field {extra[0][:40]!r}")
    if not isinstance(doc["type"], str) or not doc["type"]:
        raise MalformedEnvelope("type must be a non-empty string")
    if isinstance(doc["v"], bool) or not isinstance(doc["v"], int) or not 0 < doc["v"] < 1_000_000:
        raise MalformedEnvelope("v must be a positive integer")
    if not is_valid_id(doc["id"]):
        raise MalformedEnvelope("id must be 1-64 of [A-Za-z0-9._-]")
    if not is_valid_id(doc["sender"]):
        raise MalformedEnvelope("sender must be 1-64 of [A-Za-z0-9._-]")
    ts = doc["ts"]
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts) or ts < 0:
        raise MalformedEnvelope("ts must be a non-negative number (seconds since the epoch)")
    doc["ts"] = float(ts)
    return doc
