"""Viewing events: the one schema clients post to ``POST /v1/events``, and what a profile's log means.

Pure code, no I/O.  :func:`parse_batch` validates a batch event by event — a bad event is rejected
with its index and a one-line reason while the good ones in the same batch are kept, because a client
retries a whole batch and must not lose the good half to one bad field.  Every event names its own
``event_id`` (the client makes it), so a retried batch is idempotent: the store ignores ids it holds.
Unknown fields are refused rather than dropped, so a client bug shows up at once and not months later
as a silently missing signal.

Event types and their own fields (all events carry ``event_id``, ``type``, ``profile_id``, ``ts``,
``device``, optional ``region``; all but ``search`` carry ``title_id``)::

    play_start   [position_s] [impression_id]        complete
    progress     position_s duration_s                thumbs      value: "up" | "down"
    list_add / list_remove                            search      query [title_id]
    impression   row position [artwork] propensity [impression_id]
    abandon      [impression_id] [position_s]         qoe         startup_ms stalls stall_ms switches
                                                                  bitrate_kbps [appliance_id]

:class:`ProfileState` folds a profile's log into what the rows need: what it is part-way through,
what it finished (and whether it rewatches), what it liked and disliked, its genre affinities and
region.  :func:`interaction_rows` turns the whole log into the ``user,item,rating,timestamp`` rows the
recommender trains on (``nearcast events export`` writes them for ``nearcast model eval``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from shared.errors import InvalidInput
from shared.ids import is_valid_id

DEVICES: Final = ("tv", "mobile", "web", "tablet", "other")
MAX_BATCH: Final = 500
MAX_QUERY: Final = 200
MAX_POSITION: Final = 1000
#: Events more than this far in the client's future are refused (clock skew allowance).
FUTURE_LEEWAY_S: Final = 300.0
#: Nothing before 2000-01-01 is a viewing event of this system.
EPOCH_MIN: Final = 946_684_800.0

COMMON: Final = frozenset({"event_id", "type", "profile_id", "ts", "device", "region"})
_TITLE_REQUIRED = {"play_start", "progress", "complete", "thumbs", "list_add", "list_remove", "impression",
                   "abandon", "qoe"}
_FIELDS: Final[dict[str, frozenset[str]]] = {
    "play_start": frozenset({"position_s", "impression_id"}),
    "progress": frozenset({"position_s", "duration_s"}),
    "complete": frozenset(),
    "thumbs": frozenset({"value"}),
    "list_add": frozenset(),
    "list_remove": frozenset(),
    "search": frozenset({"query"}),
    "impression": frozenset({"row", "position", "artwork", "propensity", "impression_id"}),
    "abandon": frozenset({"impression_id", "position_s"}),
    "qoe": frozenset({"startup_ms", "stalls", "stall_ms", "switches", "bitrate_kbps", "appliance_id"}),
}
EVENT_TYPES: Final = tuple(_FIELDS)

#: Part-way: started but neither barely touched nor as good as finished.
CONTINUE_MIN, CONTINUE_MAX = 0.03, 0.92
#: Watched this far counts as a positive signal even without a ``complete`` event.
POSITIVE_FRACTION = 0.5


@dataclass(frozen=True)
class Event:
    event_id: str
    type: str
    profile_id: str
    ts: float
    device: str
    region: str | None
    title_id: str | None
    data: Mapping[str, Any]  # the type's own fields, validated


@dataclass(frozen=True)
class Rejected:
    index: int
    reason: str


def _number(doc: Mapping[str, Any], key: str, lo: float, hi: float, *, integer: bool = False) -> float:
    v = doc.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise InvalidInput(f"{key} must be a finite number")
    if integer and not float(v).is_integer():
        raise InvalidInput(f"{key} must be an integer")
    if not lo <= v <= hi:
        raise InvalidInput(f"{key} must be in {lo:g}..{hi:g}")
    return float(v)


def _id(doc: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    v = doc.get(key)
    if v is None and not required:
        return None
    if not is_valid_id(v):
        raise InvalidInput(f"{key} must be an id (1-64 of letters, digits, '.', '_', '-')")
    return str(v)


def parse_event(doc: Any, now: float) -> Event:
    """One event, or :class:`InvalidInput` naming the first bad field."""
    if not isinstance(doc, dict):
        raise InvalidInput("an event must be a JSON object")
    kind = doc.get("type")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise InvalidInput(f"type must be one of {', '.join(EVENT_TYPES)}")
    allowed = COMMON | _FIELDS[kind] | ({"title_id"} if kind in _TITLE_REQUIRED or kind == "search" else set())
    unknown = sorted(str(k)[:40] for k in doc if k not in allowed)
    if unknown:
        raise InvalidInput(f"unknown field(s) for {kind}: {', '.join(unknown[:5])}")
    event_id = _id(doc, "event_id")
    profile_id = _id(doc, "profile_id")
    ts = _number(doc, "ts", EPOCH_MIN, now + FUTURE_LEEWAY_S)
    device = doc.get("device", "other")
    if device not in DEVICES:
        raise InvalidInput(f"device must be one of {', '.join(DEVICES)}")
    region = _id(doc, "region", required=False)
    title_id = _id(doc, "title_id", required=kind in _TITLE_REQUIRED)
    data: dict[str, Any] = {}
    if kind in ("play_start", "abandon") and "position_s" in doc:
        data["position_s"] = _number(doc, "position_s", 0, 1e6)
    if kind in ("play_start", "abandon", "impression") and "impression_id" in doc:
        data["impression_id"] = _id(doc, "impression_id")
    if kind == "progress":
        duration = _number(doc, "duration_s", 0.001, 1e6)
        position = _number(doc, "position_s", 0, 1e6)
        if position > duration * 1.01 + 1.0:
            raise InvalidInput("position_s is beyond duration_s")
        data.update(position_s=min(position, duration), duration_s=duration)
    elif kind == "thumbs":
        if doc.get("value") not in ("up", "down"):
            raise InvalidInput("value must be 'up' or 'down'")
        data["value"] = doc["value"]
    elif kind == "search":
        query = doc.get("query")
        if not isinstance(query, str) or not query.strip() or len(query) > MAX_QUERY or not query.isprintable():
            raise InvalidInput(f"query must be 1-{MAX_QUERY} printable characters")
        data["query"] = query.strip()
    elif kind == "impression":
        data["row"] = _id(doc, "row")
        data["position"] = int(_number(doc, "position", 0, MAX_POSITION, integer=True))
        data["propensity"] = _number(doc, "propensity", 1e-6, 1.0)
        if "artwork" in doc:
            data["artwork"] = _id(doc, "artwork")
    elif kind == "qoe":
        data.update(startup_ms=_number(doc, "startup_ms", 0, 600_000), stalls=int(_number(doc, "stalls", 0, 1e5,
                    integer=True)), stall_ms=_number(doc, "stall_ms", 0, 86_400_000),
                    switches=int(_number(doc, "switches", 0, 1e5, integer=True)),
                    bitrate_kbps=_number(doc, "bitrate_kbps", 0, 1e6))
        if "appliance_id" in doc:
            data["appliance_id"] = _id(doc, "appliance_id")
    assert event_id is not None and profile_id is not None
    return Event(event_id, kind, profile_id, ts, device, region, title_id, data)


def parse_batch(doc: Any, now: float) -> tuple[list[Event], list[Rejected]]:
    """Validate ``{"events": [...]}``: the good events, and the index and reason of every bad one.

    A batch that is not even the right shape (or is too long) is refused as a whole.  The same id twice
    inside one batch keeps the first: it is a client retry folded into one request.
    """
    if not isinstance(doc, dict) or set(doc) != {"events"} or not isinstance(doc["events"], list):
        raise InvalidInput('expected {"events": [...]}')
    items = doc["events"]
    if not items:
        raise InvalidInput("the batch is empty")
    if len(items) > MAX_BATCH:
        raise InvalidInput(f"{len(items)} events in one batch; at most {MAX_BATCH}")
    good: list[Event] = []
    bad: list[Rejected] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        try:
            event = parse_event(item, now)
        except InvalidInput as exc:
            bad.append(Rejected(i, str(exc)[:200]))
            continue
        if event.event_id not in seen:
            seen.add(event.event_id)
            good.append(event)
    return good, bad


# -- what a profile's log means -----------------------------------------------------------------------
@dataclass
class TitleActivity:
    title_id: str
    last_ts: float = 0.0
    fraction: float = 0.0  # latest progress / duration
    position_s: float = 0.0
    completes: int = 0
    last_complete: float = 0.0
    started_after_complete: bool = False
    thumbs: str | None = None
    listed: bool = False

    @property
    def completed(self) -> bool:
        return self.completes > 0 or self.fraction >= CONTINUE_MAX

    @property
    def rewatching(self) -> bool:
        """Rewatch signals: finished it more than once, or started it again after finishing it."""
        return self.completes >= 2 or self.started_after_complete

    @property
    def positive(self) -> bool:
        return self.thumbs != "down" and (self.completed or self.thumbs == "up" or self.listed
                                          or self.fraction >= POSITIVE_FRACTION)


@dataclass
class ProfileState:
    profile_id: str
    titles: dict[str, TitleActivity] = field(default_factory=dict)
    region: str | None = None
    device: str | None = None
    last_ts: float = 0.0

    @classmethod
    def from_events(cls, profile_id: str, events: Iterable[Event]) -> ProfileState:
        state = cls(profile_id)
        for e in sorted(events, key=lambda e: (e.ts, e.event_id)):
            state.add(e)
        return state

    def add(self, e: Event) -> None:
        """Fold one event in; events must arrive in time order (``from_events`` sorts them)."""
        self.last_ts = max(self.last_ts, e.ts)
        if e.region is not None:
            self.region = e.region
        self.device = e.device
        if e.title_id is None or e.type in ("impression", "qoe", "search"):
            return
        a = self.titles.setdefault(e.title_id, TitleActivity(e.title_id))
        a.last_ts = max(a.last_ts, e.ts)
        if e.type == "progress":
            a.position_s = float(e.data["position_s"])
            a.fraction = a.position_s / float(e.data["duration_s"])
            if a.completes and e.ts > a.last_complete and a.fraction < CONTINUE_MAX:
                a.started_after_complete = True
        elif e.type == "play_start":
            if a.completes and e.ts > a.last_complete:
                a.started_after_complete = True
                a.fraction = 0.0
        elif e.type == "complete":
            a.completes += 1
            a.last_complete = e.ts
            a.fraction, a.position_s = 1.0, 0.0
            a.started_after_complete = False
        elif e.type == "thumbs":
            a.thumbs = str(e.data["value"])
        elif e.type == "list_add":
            a.listed = True
        elif e.type == "list_remove":
            a.listed = False

    def continue_watching(self) -> list[TitleActivity]:
        """Part-way titles, most recent first (a thumbs-down ends it)."""
        part = [a for a in self.titles.values() if a.thumbs != "down" and CONTINUE_MIN <= a.fraction < CONTINUE_MAX]
        return sorted(part, key=lambda a: (-a.last_ts, a.title_id))

    def positives(self) -> list[TitleActivity]:
        return sorted((a for a in self.titles.values() if a.positive), key=lambda a: (-a.last_ts, a.title_id))

    def hidden(self) -> set[str]:
        """Titles no row may offer: disliked, or finished without a sign of rewatching."""
        return {t for t, a in self.titles.items() if a.thumbs == "down" or (a.completed and not a.rewatching)}

    def because_of(self) -> TitleActivity | None:
        """The X of "Because you watched X": the most recent finished (or liked) title."""
        done = [a for a in self.titles.values() if a.thumbs != "down" and (a.completed or a.thumbs == "up")]
        return max(done, key=lambda a: (a.last_ts, a.title_id)) if done else None

    def affinities(self, genres: Mapping[str, Sequence[str]]) -> dict[str, float]:
        """Genre → share of positive titles in it, scaled so the favourite genre is 1."""
        counts: dict[str, float] = {}
        for a in self.positives():
            for g in genres.get(a.title_id, ()):
                counts[g] = counts.get(g, 0.0) + 1.0
        top = max(counts.values(), default=0.0)
        return {g: round(c / top, 4) for g, c in sorted(counts.items())} if top else {}


def implicit_rating(a: TitleActivity) -> float:
    """The 0.5-5 scale the recommender's loaders read; >= 4 is a positive, as with MovieLens."""
    if a.thumbs == "down":
        return 1.0
    if a.thumbs == "up" or a.completes:
        return 5.0
    if a.listed or a.fraction >= POSITIVE_FRACTION:
        return 4.0
    return 2.0 + 2.0 * a.fraction


def interaction_rows(states: Iterable[ProfileState]) -> Iterable[tuple[str, str, float, int]]:
    """``(user, item, rating, timestamp)`` per profile and title it touched."""
    for s in states:
        for a in sorted(s.titles.values(), key=lambda a: a.title_id):
            yield s.profile_id, a.title_id, implicit_rating(a), int(a.last_ts)
