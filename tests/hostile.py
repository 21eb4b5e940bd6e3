"""Shared pieces of the hostile-input property tests (tests/*/test_hostile_*.py).

The default run keeps every property test to a few seconds; ``NEARCAST_HOSTILE_EXAMPLES=N`` raises each
one to at least N examples (the thorough run quoted in CHANGELOG.md uses 10000)."""

from __future__ import annotations

import asyncio
import json
import os

from hypothesis import strategies as st

from shared.messages import REGISTRY

THOROUGH = int(os.environ.get("NEARCAST_HOSTILE_EXAMPLES", "0") or 0)


def examples(default: int) -> int:
    """Examples for one property test: ``default``, or more when the thorough run asks for more."""
    return max(default, THOROUGH)


# Characters that, combined at random, spell dot segments and separators in every encoding: "%2e%2e",
# "%2f", "%5c", "%00", "%252e", "..\\", NULs, look-alike dots, and plain file-name characters.
HOSTILE_CHARS = "./\\%25eEfFcC0\x00a~ :;?#\uff0e\u2024"
# Whole pieces the character soup rarely spells.
ATOMS = ["..", "%2e%2e", ".%2e", "%252e%252e", "%2f", "%5c", "%00", "%c0%ae", "%e0%80%ae", "//", "etc/passwd",
         "C:", "a" * 130, ".git", "%ff", "t1", "v1", "hls", "seg_1.m4s", "master.m3u8"]
hostile_text = st.text(alphabet=HOSTILE_CHARS, max_size=40) | st.lists(st.sampled_from(ATOMS), max_size=6).map("/".join)
json_leaf = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
             | st.text(max_size=12))
json_values = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=12)


def mqtt_payload(data: st.DataObject, owner: str) -> bytes:
    """A message for a topic of appliance ``owner``: a typed body of any registered message type (often
    from the owner, sometimes from someone else), a raw envelope with a random body, or random bytes."""
    form = data.draw(st.sampled_from(["typed", "typed", "raw-envelope", "bytes"]))
    if form == "bytes":
        return data.draw(st.binary(max_size=300))
    mtype = data.draw(st.sampled_from(REGISTRY.names()))
    sender = data.draw(st.sampled_from([owner, owner, "control", "edge-other"]))
    if form == "typed":
        try:
            return REGISTRY.encode(data.draw(st.from_type(REGISTRY.get(mtype).body)), sender=sender)
        except Exception:  # the type has no strategy (Any fields) or its own checks refuse the body
            pass
    doc = {"type": mtype, "v": data.draw(st.sampled_from([1, 1, 2, "1"])), "id": data.draw(st.text(max_size=8)),
           "sender": sender, "ts": data.draw(st.floats(allow_nan=False, allow_infinity=False) | json_leaf),
           "body": data.draw(json_values)}
    return json.dumps(doc).encode()


def mqtt_received(url: str) -> dict[str, float]:
    """A daemon's ``nearcast_mqtt_messages_received_total`` by result, from its /metrics."""
    from tests.faults.harness import metrics

    m = metrics(url)
    return {r: m.get(f'nearcast_mqtt_messages_received_total{{result="{r}"}}', 0.0)
            for r in ("ok", "rejected", "failed")}


async def first_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pieces: list[bytes]) -> bytes:
    """Send a piece every 0.1 s until the server answers (a slow client); what it answered, read until it
    closed the connection."""
    answer = b""
    for piece in pieces:
        try:
            answer = await asyncio.wait_for(reader.read(65536), 0.1)
        except TimeoutError:
            writer.write(piece)
            continue
        break
    answer += await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer
