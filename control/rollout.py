"""Model deployments in waves, as a pure state machine (no clock, no broker, no database).

The control plane's shell feeds a :class:`Deployment` three kinds of input — time (:meth:`tick`),
health samples from telemetry (:meth:`observe`) and appliance acks (:meth:`ack`) — and publishes the
resulting :meth:`Deployment.desired` versions as retained desired state.  Because the output is a
*state* (which version each appliance should run) rather than a stream of commands, an appliance that
was offline simply reads its retained desired state when it returns and converges; nothing needs
replaying.

Wave membership comes from rendezvous hashing of the appliance ids on the deployment id, so each
deployment picks a different canary set, every process computes the same one, and a wave is always
the previous wave plus the next appliances in the same order (waves are supersets by construction),
online ones first: an appliance known to be offline would give the wave no evidence, and it catches
up from its retained desired state whenever it returns.
A wave's member set is frozen when the wave starts: appliances that join mid-deployment stay on the
previous version until the next wave counts them, and every appliance gets the new version once the
deployment completes.

A wave passes only after it has baked for the full bake time with enough traffic; it fails as soon as
the evidence is in (a load failure on any member, or a gate breach once enough requests were seen), so
a bad model serves for as short a time as possible.  Health is compared with the previous version on
the appliances still running it during the same window — the fairest baseline, since it sees the same
hour and the same traffic — or, for the last wave, with the baseline seen in earlier waves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from shared import hashring
from shared.errors import Conflict, InvalidInput
from shared.ids import check_id
from shared.schema import decode, encode

Phase = Literal["baking", "completed", "rolled_back"]


class RolloutError(InvalidInput):
    """A deployment was declared with impossible parameters or fed inconsistent input."""


@dataclass(frozen=True)
class Gates:
    """What a wave must show before the next starts. Rates are per request; latencies in ms."""

    max_error_increase: float = 0.005  # re-rank error rate above the baseline's
    max_fallback_increase: float = 0.02  # share of requests served by the fallback path
    max_p99_ratio: float = 1.25  # new p99 <= baseline p99 * ratio + slack
    p99_slack_ms: float = 2.0
    min_requests: int = 200  # evidence needed before judging a wave (pass or breach)
    ack_timeout_s: float = 300.0  # time for online members to report the new version running
    max_wait_s: float = 3600.0  # a wave without enough traffic after this long is a breach

    def __post_init__(self) -> None:
        for name in ("max_error_increase", "max_fallback_increase", "p99_slack_ms", "ack_timeout_s", "max_wait_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise RolloutError(f"gate {name} must be finite and >= 0, not {value!r}")
        if not (math.isfinite(self.max_p99_ratio) and self.max_p99_ratio >= 1):
            raise RolloutError(f"gate max_p99_ratio must be >= 1, not {self.max_p99_ratio!r}")
        if self.min_requests < 1:
            raise RolloutError("gate min_requests must be >= 1")


@dataclass(frozen=True)
class HealthSample:
    """One appliance's re-ranker counters over one telemetry interval (deltas, not totals)."""

    appliance_id: str
    version: str | None
    at: float
    requests: int
    errors: int = 0
    fallbacks: int = 0
    p99_ms: float = 0.0

    def __post_init__(self) -> None:
        if not (0 <= self.errors <= self.requests and 0 <= self.fallbacks <= self.requests):
            raise RolloutError(f"sample from {self.appliance_id!r}: counts must satisfy 0 <= errors, "
                               "fallbacks <= requests")
        if not (math.isfinite(self.p99_ms) and self.p99_ms >= 0 and math.isfinite(self.at)):
            raise RolloutError(f"sample from {self.appliance_id!r}: p99 and time must be finite, p99 >= 0")


@dataclass
class Cohort:
    """Aggregated health of one group of appliances.

    p99 is averaged over samples weighted by requests: the true fleet p99 cannot be rebuilt from
    per-appliance p99s, but the same summary on both sides of the comparison is a fair test.
    """

    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    p99_weighted: float = 0.0

    def add(self, s: HealthSample) -> None:
        self.requests += s.requests
        self.errors += s.errors
        self.fallbacks += s.fallbacks
        self.p99_weighted += s.p99_ms * s.requests

    def merge(self, other: Cohort) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.fallbacks += other.fallbacks
        self.p99_weighted += other.p99_weighted

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def fallback_rate(self) -> float:
        return self.fallbacks / self.requests if self.requests else 0.0

    @property
    def p99_ms(self) -> float:
        return self.p99_weighted / self.requests if self.requests else 0.0


def judge(new: Cohort, base: Cohort | None, gates: Gates) -> str | None:
    """The first gate ``new`` breaches against ``base`` (a one-line reason), or None if all pass."""
    base_err = base.error_rate if base and base.requests else 0.0
    base_fb = base.fallback_rate if base and base.requests else 0.0
    if new.error_rate > base_err + gates.max_error_increase:
        return f"re-rank error rate {new.error_rate:.4f} > baseline {base_err:.4f} + {gates.max_error_increase}"
    if new.fallback_rate > base_fb + gates.max_fallback_increase:
        return f"fallback rate {new.fallback_rate:.4f} > baseline {base_fb:.4f} + {gates.max_fallback_increase}"
    if base and base.requests:
        limit = base.p99_ms * gates.max_p99_ratio + gates.p99_slack_ms
        if new.p99_ms > limit:
            return f"p99 {new.p99_ms:.1f} ms > {limit:.1f} ms (baseline {base.p99_ms:.1f} ms)"
    return None


@dataclass(frozen=True)
class Event:
    """Something an operator should see; ``appliances`` are those whose desired version changed."""

    kind: Literal["started", "baked", "breached", "rolled_back", "completed"]
    at: float
    wave: int
    detail: str = ""
    appliances: tuple[str, ...] = ()


@dataclass
class WaveState:
    index: int
    percent: float
    members: frozenset[str]
    started_at: float
    bake_until: float | None = None  # set once every online member runs the new version
    new: Cohort = field(default_factory=Cohort)
    base: Cohort = field(default_factory=Cohort)


@dataclass(frozen=True)
class WaveSnapshot:
    index: int
    percent: float
    members: list[str]
    started_at: float
    bake_until: float | None
    new: Cohort
    base: Cohort


@dataclass(frozen=True)
class Snapshot:
    """Everything a deployment knows, as JSON: the control plane stores it after every input so a
    restarted control plane resumes the deployment where it stood."""

    format: int
    id: str
    version: str
    previous: str | None
    waves: list[float]
    bake_s: float
    gates: Gates
    fleet: list[str]
    reported: dict[str, str | None]
    failures: dict[str, str]
    online: dict[str, bool]
    prior_base: Cohort
    phase: Phase
    reason: str
    started: list[WaveSnapshot]
    history: list[Event]


@dataclass(frozen=True)
class ApplianceRollout:
    """What ``model status`` shows for one appliance."""

    appliance_id: str
    desired: str | None
    reported: str | None
    wave: int | None
    online: bool
    failure: str = ""


def check_waves(waves: Iterable[float]) -> list[float]:
    """Cumulative percentages, rising strictly within (0, 100] and ending at 100."""
    out = [float(w) for w in waves]
    if not out or out[-1] != 100 or any(not (a < b) for a, b in zip([0.0, *out], out, strict=False)):
        raise RolloutError(f"waves must rise strictly within (0, 100] and end at 100, not {out}")
    return out


def wave_size(percent: float, n: int) -> int:
    """Appliances in a wave of ``percent`` over ``n``: rounded down, at least one, all at 100 %."""
    if n == 0:
        return 0
    if percent >= 100:
        return n
    return min(n, max(1, math.floor(percent * n / 100 + 1e-9)))


class Deployment:
    """One deployment of ``version`` (replacing ``previous``) over a fleet, wave by wave."""

    def __init__(self, deployment_id: str, version: str, previous: str | None, appliances: Iterable[str],
                 waves: Iterable[float] = (5, 25, 100), bake_s: float = 60.0, gates: Gates | None = None,
                 now: float = 0.0, offline: Iterable[str] = ()) -> None:
        self.id = check_id(deployment_id, "deployment id")
        self.version = check_id(version, "model version")
        self.previous = None if previous is None else check_id(previous, "model version")
        if self.version == self.previous:
            raise Conflict(f"version {version!r} is already the current version")
        self.waves = check_waves(waves)
        if not (math.isfinite(bake_s) and bake_s >= 0):
            raise RolloutError(f"bake time must be finite and >= 0, not {bake_s!r}")
        self.bake_s = bake_s
        self.gates = gates or Gates()
        self._fleet: list[str] = []
        self._order: list[str] = []
        self._reported: dict[str, str | None] = {}
        self._failures: dict[str, str] = {}
        self._online: dict[str, bool] = {}
        self._prior_base = Cohort()  # baseline seen in finished waves, for the 100 % wave
        self.phase: Phase = "baking"
        self.reason = ""
        self.history: list[Event] = []
        self.set_appliances(appliances)
        for a in offline:
            self._online[a] = False
        if not self._fleet:
            raise RolloutError("a deployment needs at least one appliance")
        self.started: list[WaveState] = []
        self._start_wave(0, now)

    @property
    def current(self) -> WaveState:
        return self.started[-1]

    # --- inputs -----------------------------------------------------------------------------------

    def set_appliances(self, appliances: Iterable[str]) -> None:
        """The fleet changed (an appliance registered or was retired); started waves keep their members."""
        fleet = [check_id(a, "appliance id") for a in appliances]
        if len(set(fleet)) != len(fleet):
            raise RolloutError("appliance ids must be unique")
        self._fleet = sorted(fleet)
        self._order = hashring.rank(self.id, self._fleet, salt="rollout")
        for a in self._fleet:
            self._online.setdefault(a, True)

    def set_online(self, appliance_id: str, online: bool) -> None:
        self._online[appliance_id] = online

    def ack(self, appliance_id: str, running: str | None, now: float, failure: str = "") -> list[Event]:
        """An appliance reports the version it runs, or that loading ``self.version`` failed."""
        self._reported[appliance_id] = running
        self._online[appliance_id] = True
        if failure:
            self._failures[appliance_id] = failure[:200]
        elif running == self.version:
            self._failures.pop(appliance_id, None)
        if failure and self.phase == "baking" and appliance_id in self.current.members:
            return self._rollback(now, f"{appliance_id} failed to load {self.version}: {failure[:200]}")
        return self.tick(now)

    def observe(self, sample: HealthSample) -> list[Event]:
        """Feed one health sample; may breach the current wave at once."""
        wave = self.current
        if self.phase != "baking" or sample.at < wave.started_at or sample.requests == 0:
            return []
        if sample.appliance_id in wave.members and sample.version == self.version:
            wave.new.add(sample)
        elif sample.appliance_id not in wave.members and sample.version == self.previous:
            wave.base.add(sample)
        else:
            return []
        if wave.new.requests >= self.gates.min_requests:
            reason = judge(wave.new, self._baseline(), self.gates)
            if reason is not None:
                return self._rollback(sample.at, f"wave {wave.index + 1} breached: {reason}")
        return []

    def tick(self, now: float) -> list[Event]:
        """Advance time: finish a wave whose bake is done, start the next, or breach on timeouts."""
        if self.phase != "baking":
            return []
        wave = self.current
        events: list[Event] = []
        if wave.bake_until is None:
            online = [a for a in wave.members if self._online.get(a, True)]
            if all(self._reported.get(a) == self.version for a in online):
                wave.bake_until = now + self.bake_s
            elif now - wave.started_at > self.gates.ack_timeout_s:
                lagging = sorted(a for a in online if self._reported.get(a) != self.version)
                return self._rollback(now, f"wave {wave.index + 1}: {len(lagging)} online appliance(s) did not "
                                           f"report {self.version} within {self.gates.ack_timeout_s:g}s: "
                                           f"{', '.join(lagging[:5])}")
        if wave.bake_until is None or now < wave.bake_until:
            return events
        if wave.new.requests < self.gates.min_requests:
            if now - wave.started_at > self.gates.max_wait_s:
                return self._rollback(now, f"wave {wave.index + 1}: only {wave.new.requests} requests on "
                                           f"{self.version} after {self.gates.max_wait_s:g}s")
            return events
        reason = judge(wave.new, self._baseline(), self.gates)
        if reason is not None:
            return self._rollback(now, f"wave {wave.index + 1} breached: {reason}")
        events.append(self._emit("baked", now, wave.index, f"{wave.new.requests} requests, error rate "
                                 f"{wave.new.error_rate:.4f}, p99 {wave.new.p99_ms:.1f} ms"))
        self._prior_base.merge(wave.base)
        if wave.index + 1 == len(self.waves):
            self.phase = "completed"
            events.append(self._emit("completed", now, wave.index, appliances=tuple(self._fleet)))
            return events
        self._start_wave(wave.index + 1, now)
        events.append(self.history[-1])
        # A wave with nothing new to do (e.g. tiny fleets) may already be acked: check at once.
        return events + self.tick(now)

    def rollback(self, now: float, reason: str = "operator rollback") -> list[Event]:
        """Operator-initiated rollback (``nearcast model rollback``); also valid after completion."""
        if self.phase == "rolled_back":
            return []
        return self._rollback(now, reason, breach=False)

    # --- outputs ----------------------------------------------------------------------------------

    def desired(self) -> dict[str, str | None]:
        """The version each appliance of the fleet should run now (publish as retained state)."""
        if self.phase == "completed":
            return dict.fromkeys(self._fleet, self.version)
        if self.phase == "rolled_back":
            return dict.fromkeys(self._fleet, self.previous)
        return {a: self.version if a in self.current.members else self.previous for a in self._fleet}

    def status(self) -> list[ApplianceRollout]:
        desired = self.desired()
        out = []
        for a in self._fleet:
            wave = next((w.index for w in self.started if a in w.members), None)
            out.append(ApplianceRollout(a, desired[a], self._reported.get(a), wave, self._online.get(a, True),
                                        self._failures.get(a, "")))
        return out

    @property
    def appliances(self) -> tuple[str, ...]:
        return tuple(self._fleet)

    def reported(self, appliance_id: str) -> str | None:
        """The version the appliance last said it runs (None when it never said)."""
        return self._reported.get(appliance_id)

    def converged(self) -> bool:
        """Every online appliance reports its desired version."""
        desired = self.desired()
        return all(self._reported.get(a) == v for a, v in desired.items() if self._online.get(a, True))

    # --- persistence ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        waves = [WaveSnapshot(w.index, w.percent, sorted(w.members), w.started_at, w.bake_until, w.new, w.base)
                 for w in self.started]
        snap = Snapshot(1, self.id, self.version, self.previous, self.waves, self.bake_s, self.gates, self._fleet,
                        self._reported, self._failures, self._online, self._prior_base, self.phase, self.reason,
                        waves, self.history)
        out: dict[str, object] = encode(snap)
        return out

    @classmethod
    def restore(cls, data: object) -> Deployment:
        """Rebuild a deployment from :meth:`snapshot` output, re-checking everything it declares."""
        snap = decode(Snapshot, data, "deployment")
        if snap.format != 1:
            raise RolloutError(f"deployment snapshot format {snap.format} is not supported")
        if not snap.started:
            raise RolloutError("deployment snapshot has no started wave")
        dep = cls(snap.id, snap.version, snap.previous, snap.fleet, snap.waves, snap.bake_s, snap.gates,
                  snap.started[0].started_at)
        previous: frozenset[str] = frozenset()
        started = []
        for i, w in enumerate(snap.started):
            members = frozenset(w.members)
            if w.index != i or i >= len(dep.waves) or w.percent != dep.waves[i] or not previous <= members:
                raise RolloutError(f"deployment snapshot wave {i} is inconsistent")
            started.append(WaveState(i, w.percent, members, w.started_at, w.bake_until, w.new, w.base))
            previous = members
        dep.started = started
        dep._reported, dep._failures = dict(snap.reported), dict(snap.failures)
        dep._online.update(snap.online)
        dep._prior_base, dep.phase, dep.reason, dep.history = snap.prior_base, snap.phase, snap.reason, \
            list(snap.history)
        return dep

    # --- internals --------------------------------------------------------------------------------

    def _baseline(self) -> Cohort | None:
        if self.current.base.requests:
            return self.current.base
        return self._prior_base if self._prior_base.requests else None

    def _start_wave(self, index: int, now: float) -> None:
        previous = self.started[-1].members if self.started else frozenset[str]()
        target = wave_size(self.waves[index], len(self._order))
        members = set(previous)
        # Online appliances first (in rendezvous order): an offline canary would give no evidence.
        online = [a for a in self._order if self._online.get(a, True)]
        for a in online + [a for a in self._order if not self._online.get(a, True)]:
            if len(members) >= target:
                break
            members.add(a)
        if self.waves[index] >= 100:
            members.update(self._order)
        self.started.append(WaveState(index, self.waves[index], frozenset(members), now))
        self._emit("started", now, index, f"{self.waves[index]:g}% ({len(members)}/{len(self._order)})",
                   tuple(sorted(members - previous)))

    def _rollback(self, now: float, reason: str, breach: bool = True) -> list[Event]:
        wave = self.current.index
        breached = [self._emit("breached", now, wave, reason)] if breach and self.phase == "baking" else []
        self.phase = "rolled_back"
        self.reason = reason
        return [*breached, self._emit("rolled_back", now, wave, reason, tuple(self._fleet))]

    def _emit(self, kind: Literal["started", "baked", "breached", "rolled_back", "completed"], at: float,
              wave: int, detail: str = "", appliances: tuple[str, ...] = ()) -> Event:
        event = Event(kind, at, wave, detail, appliances)
        self.history.append(event)
        return event
