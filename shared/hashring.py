"""Rendezvous (highest-random-weight) hashing.

Used wherever a set of keys must be spread over a set of nodes so that adding or removing one node
moves only the keys that node wins or loses: the fill planner spreads file sets over a site's
appliances with it, and the model rollout picks wave members with it.  Rendezvous hashing needs no
ring state and no virtual nodes, and its answers are the same in every process because the scores
come from BLAKE2b rather than Python's salted ``hash()``.

Weighted nodes use the logarithmic method (Schindelhauer & Schomaker): a node's score is
``-weight / ln(u)`` with ``u`` uniform in (0, 1), which makes the share of keys a node wins
proportional to its weight while keeping the minimal-disruption property.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from hashlib import blake2b

from .errors import InvalidInput

_TWO_64 = float(1 << 64)

#: Bounds that keep one call from being turned into a denial of service by a hostile caller.
MAX_NODES = 100_000
MAX_KEY_BYTES = 4096


def _as_bytes(value: str, what: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, not {type(value).__name__}")
    data = value.encode("utf-8", "surrogatepass")
    if len(data) > MAX_KEY_BYTES:
        raise InvalidInput(f"{what} is {len(data)} bytes long; at most {MAX_KEY_BYTES} are allowed")
    return data


def _digest64(key: bytes, node: bytes, salt: bytes) -> int:
    # The length prefixes keep ("ab", "c") and ("a", "bc") from colliding.
    h = blake2b(digest_size=8, person=b"nearcast-hrw")
    h.update(len(salt).to_bytes(4, "big"))
    h.update(salt)
    h.update(len(key).to_bytes(4, "big"))
    h.update(key)
    h.update(node)
    return int.from_bytes(h.digest(), "big")


def unit_hash(key: str, salt: str = "") -> float:
    """A deterministic number in [0, 1) for ``key``: a stable bucket for cohorts and canary waves."""
    return _digest64(_as_bytes(key, "key"), b"", _as_bytes(salt, "salt")) / _TWO_64


def _check_weight(node: str, weight: float) -> float:
    if not (isinstance(weight, int | float) and not isinstance(weight, bool) and math.isfinite(weight) and weight > 0):
        raise InvalidInput(f"node {node!r} has weight {weight!r}; weights must be finite and > 0")
    return float(weight)


def _score(key: bytes, node: bytes, weight: float, salt: bytes) -> float:
    u = (_digest64(key, node, salt) + 0.5) / _TWO_64  # strictly inside (0, 1): ln(u) is finite and negative
    return -weight / math.log(u)


def score(key: str, node: str, weight: float = 1.0, salt: str = "") -> float:
    """The rendezvous score of ``node`` for ``key``; the highest score wins."""
    return _score(_as_bytes(key, "key"), _as_bytes(node, "node"), _check_weight(node, weight), _as_bytes(salt, "salt"))


def _checked_nodes(nodes: Iterable[str] | Mapping[str, float]) -> dict[str, tuple[bytes, float]]:
    items = list(nodes.items()) if isinstance(nodes, Mapping) else [(n, 1.0) for n in nodes]
    if len(items) > MAX_NODES:
        raise InvalidInput(f"{len(items)} nodes given; at most {MAX_NODES} are allowed")
    out: dict[str, tuple[bytes, float]] = {}
    for node, weight in items:
        raw = _as_bytes(node, "node")
        if node in out:
            raise InvalidInput(f"node {node!r} is listed twice")
        out[node] = (raw, _check_weight(node, weight))
    return out


class Rendezvous:
    """A validated, weighted node set, for callers that rank many keys over the same nodes."""

    __slots__ = ("_nodes", "_salt")

    def __init__(self, nodes: Iterable[str] | Mapping[str, float], salt: str = "") -> None:
        self._nodes = _checked_nodes(nodes)
        self._salt = _as_bytes(salt, "salt")

    def __len__(self) -> int:
        return len(self._nodes)

    def rank(self, key: str) -> list[str]:
        """All nodes ordered by preference for ``key`` (best first); ties broken by name."""
        k = _as_bytes(key, "key")
        prefix = blake2b(digest_size=8, person=b"nearcast-hrw")
        prefix.update(len(self._salt).to_bytes(4, "big"))
        prefix.update(self._salt)
        prefix.update(len(k).to_bytes(4, "big"))
        prefix.update(k)
        scored = []
        for name, (raw, weight) in self._nodes.items():
            h = prefix.copy()
            h.update(raw)
            u = (int.from_bytes(h.digest(), "big") + 0.5) / _TWO_64
            scored.append((weight / math.log(u), name))  # = -score: ascending sort puts the best first
        scored.sort()
        return [name for _, name in scored]


def rank(key: str, nodes: Iterable[str] | Mapping[str, float], salt: str = "") -> list[str]:
    """All ``nodes`` ordered by preference for ``key`` (best first).

    ``nodes`` is either plain names (equal weights) or a mapping of name to positive weight.  Ties
    (astronomically rare) are broken by name so the order is total and reproducible.
    """
    return Rendezvous(nodes, salt).rank(key)


def pick(key: str, nodes: Iterable[str] | Mapping[str, float], count: int = 1, salt: str = "") -> list[str]:
    """The ``count`` preferred nodes for ``key`` (fewer if there are fewer nodes)."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise InvalidInput(f"count must be a non-negative integer, not {count!r}")
    return rank(key, nodes, salt)[:count]


def assign(keys: Sequence[str], nodes: Iterable[str] | Mapping[str, float], salt: str = "") -> dict[str, str]:
    """Map every key to its single preferred node (e.g. profiles to experiment cells)."""
    weighted = _checked_nodes(nodes)
    if not weighted:
        raise InvalidInput("cannot assign keys to an empty set of nodes")
    s = _as_bytes(salt, "salt")
    out: dict[str, str] = {}
    for key in keys:
        k = _as_bytes(key, "key")
        out[key] = min((-_score(k, raw, w, s), n) for n, (raw, w) in weighted.items())[1]
    return out
