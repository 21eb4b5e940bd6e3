"""Which file sets to evict to make room: a pure decision over what is held and what is planned.

The control plane's desired state comes first: a set in the current plan is never evicted (least of
all one a fill has just written for it).  Everything held beyond the plan is kept while there is room
(it still serves hits) and, when room is needed, goes in order: what serves nothing first — abandoned
partial fills, and superseded versions (complete, but an appliance serves only the newest complete
version of a title) — then complete sets by a popularity-aware recency score: last access pushed
later by ``log2(1 + hits)`` half-lives, so a set watched a lot recently outlives one touched once a
moment ago.

Superseded versions must go before the version that replaced them whatever their past popularity:
evicting the newer one would make the catalog fall back to the older, serving again a version the
appliance had already replaced (a stale serve).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

SetKey = tuple[str, str]  # title_id, version


@dataclass(frozen=True)
class HeldSet:
    key: SetKey
    size: int
    hits: int
    last_access: float
    complete: bool
    #: Complete, but a newer complete version of the same title is the one served.
    superseded: bool = False


def retention_score(held: HeldSet, *, half_life_s: float) -> float:
    """Higher is kept longer."""
    return held.last_access + half_life_s * math.log2(1 + max(0, held.hits))


def choose_evictions(held: Iterable[HeldSet], *, planned: set[SetKey], capacity: int, need: int,
                     half_life_s: float = 3600.0) -> list[SetKey] | None:
    """The sets to evict so that ``need`` more bytes fit in ``capacity``; None if that is impossible.

    Returns the fewest sets in eviction order (it stops as soon as the need is met).
    """
    items = list(held)
    used = sum(h.size for h in items)
    free = capacity - used
    if free >= need:
        return []
    candidates = sorted((h for h in items if h.key not in planned),
                        key=lambda h: (h.complete and not h.superseded, retention_score(h, half_life_s=half_life_s)))
    chosen: list[SetKey] = []
    for h in candidates:
        chosen.append(h.key)
        free += h.size
        if free >= need:
            return chosen
    return None
