"""The shell around :class:`control.rollout.Deployment`: MQTT, the clock, the disk.

Inputs arrive from three places and only ever mutate the pure state machine, synchronously:

* acks from the edges' model managers (``desired.model`` acks: ``done`` with the running version,
  ``failed`` with the version refused) — :meth:`DeployService.on_ack`;
* telemetry, turned into per-interval re-rank health samples (requests, errors, fallbacks, p99 and the
  version serving, from ``nearcast_edge_model_info``) — :meth:`DeployService.on_telemetry`;
* operators (``deploy``, ``rollback``) through the API.

One task (``model-deploy`` in ``ctx.tasks``) owns every output: it ticks the deployment, publishes
each appliance's desired model as *retained* state when it changes, reports events (an automatic
rollback is audited) and persists.  The MQTT loop and the API never wait on the broker for a
deployment, and desired messages for one appliance are published in generation order by construction.

Persistence is one JSON document (``<state dir>/deploy/state.json``, written atomically): the
deployment's own snapshot plus the last published generation and version per appliance, so a
restarted control plane resumes mid-wave and republishes nothing an appliance already has.
Generations are at least the wall clock in milliseconds: a control plane that lost its state file
still publishes generations the edges accept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from shared import topics
from shared.errors import Conflict, InvalidInput, NearcastError, NotFound
from shared.files import write_atomic
from shared.ids import is_valid_id
from shared.messages import Ack, DesiredModel
from shared.mqtt import MqttSession
from shared.schema import SchemaError, decode, encode
from shared.tasks import TaskGroup

from .bundles import BundleRepo
from .fleet import Fleet
from .registry import RegistryView
from .rollout import Deployment, Event, Gates, HealthSample, RolloutError, check_waves
from .store import Store, TelemetryRow

log = logging.getLogger(__name__)

STATE_FORMAT = 1
REQUESTS = "nearcast_edge_rerank_requests_total"
ERRORS = "nearcast_edge_rerank_errors_total"
FALLBACKS = "nearcast_edge_rerank_fallbacks_total"
P99 = "nearcast_edge_rerank_p99_ms"
_MODEL_INFO = re.compile(r"nearcast_edge_model_info\{version=([A-Za-z0-9][A-Za-z0-9._-]{0,63})\}")
MAX_WAVES = 20
MAX_BAKE_S = 7 * 86400.0
ROLLOUT_ACTOR = "rollout"


@dataclass(frozen=True)
class LastAck:
    status: str
    version: str | None  # the version the appliance said it runs, when it said
    reason: str
    ts: float


@dataclass(frozen=True)
class Published:
    version: str | None
    generation: int
    msg_id: str
    deployment_id: str
    ts: float


@dataclass(frozen=True)
class SavedState:
    format: int
    active: str | None
    generation: int
    published: dict[str, Published] = field(default_factory=dict)
    acks: dict[str, LastAck] = field(default_factory=dict)
    deployment: Any = None


@dataclass(frozen=True)
class DeployRequest:
    """``POST /v1/deployment``: what an operator asks for; everything but the version has a default."""

    version: str
    waves: list[float] = field(default_factory=lambda: [5.0, 25.0, 100.0])
    bake_s: float = 60.0
    gates: Gates | None = None

    def __post_init__(self) -> None:
        if not 1 <= len(self.waves) <= MAX_WAVES:
            raise InvalidInput(f"waves: 1 to {MAX_WAVES} percentages, ending at 100")
        check_waves(self.waves)
        if not 0 <= self.bake_s <= MAX_BAKE_S:
            raise InvalidInput(f"bake_s must be in [0, {MAX_BAKE_S:g}]")


def serving_version(row: TelemetryRow) -> str | None:
    """The model version the appliance served with when it sampled (``nearcast_edge_model_info``)."""
    versions = [m.group(1) for name, value in row.gauges.items()
                if value == 1 and (m := _MODEL_INFO.fullmatch(name)) is not None]
    return versions[0] if len(versions) == 1 else None


def health_sample(row: TelemetryRow) -> HealthSample | None:
    """The re-ranker's health over one telemetry interval (counters are deltas), or None without traffic."""
    requests = int(row.counters.get(REQUESTS, 0))
    if requests <= 0:
        return None
    p99 = row.gauges.get(P99, 0.0)
    return HealthSample(row.appliance_id, serving_version(row), row.ts, requests,
                        min(requests, int(row.counters.get(ERRORS, 0))),
                        min(requests, int(row.counters.get(FALLBACKS, 0))),
                        p99 if math.isfinite(p99) and p99 >= 0 else 0.0)


class DeployMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter("nearcast_control_model_rollout_events_total",
                              "Model deployment events (started, baked, breached, rolled_back, completed)",
                              ["kind"], registry=registry)
        self.published = Counter("nearcast_control_model_desired_published_total",
                                 "Desired-model messages published (retained)", registry=registry)
        self.wave = Gauge("nearcast_control_model_rollout_wave", "Current wave of the latest deployment (1-based; "
                          "0 when none is baking)", registry=registry)


class DeployService:
    """Owns the latest deployment; the API, the MQTT handlers and :meth:`run` drive it."""

    def __init__(self, *, session: MqttSession, fleet: Fleet, registry: RegistryView, store: Store,
                 repo: BundleRepo, state_path: Path, tick_s: float, metrics: CollectorRegistry,
                 clock: Callable[[], float] = time.time) -> None:
        self.session = session
        self.fleet = fleet
        self.registry = registry
        self.store = store
        self.repo = repo
        self.path = state_path
        self.tick_s = tick_s
        self.metrics = DeployMetrics(metrics)
        self.clock = clock
        self.dep: Deployment | None = None
        self.active: str | None = None  # the fleet-wide version: the next deployment's "previous"
        self.generation = 0
        self.published: dict[str, Published] = {}
        self.acks: dict[str, LastAck] = {}
        self._events: list[Event] = []
        self._serving: dict[str, str | None] = {}  # version in each appliance's last telemetry sample
        self._wake = asyncio.Event()
        self._dirty = False
        self._write_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def load(self) -> None:
        """Read the saved state (blocking). A damaged file is moved aside and logged, never half used."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        try:
            saved = decode(SavedState, json.loads(raw), "deploy state")
            if saved.format != STATE_FORMAT:
                raise InvalidInput(f"format {saved.format} is not supported")
            dep = None if saved.deployment is None else Deployment.restore(saved.deployment)
        except (ValueError, RecursionError, SchemaError, InvalidInput) as exc:
            aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
            self.path.replace(aside)
            log.error("deployment state %s is damaged (%s); moved to %s", self.path, str(exc)[:200], aside.name)
            return
        self.dep, self.active, self.generation = dep, saved.active, saved.generation
        self.published, self.acks = dict(saved.published), dict(saved.acks)
        if dep is not None:
            log.info("resuming deployment %s of %s (%s, wave %d)", dep.id, dep.version, dep.phase,
                     dep.current.index + 1)

    async def start(self, tasks: TaskGroup) -> None:
        await asyncio.to_thread(self.load)
        self._task = tasks.spawn(self.run(), name="model-deploy")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.persist()

    async def run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._sleep_s()):  # not wait_for: on 3.11 it can swallow a cancel
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.step()
            except Exception:  # a failing step must not end deployments: the next tick retries
                log.exception("model deployment step failed")

    def _sleep_s(self) -> float:
        """Until the next tick, or sooner when the current wave's bake ends: a wave is not held a tick late."""
        dep = self.dep
        if dep is not None and dep.phase == "baking" and dep.current.bake_until is not None:
            return max(0.005, min(self.tick_s, dep.current.bake_until - self.clock() + 0.001))
        return self.tick_s

    # -- operators ---------------------------------------------------------------------------------
    async def deploy(self, req: DeployRequest, actor: str) -> dict[str, Any]:
        now = self.clock()
        if self.dep is not None and self.dep.phase == "baking":
            raise Conflict(f"deployment {self.dep.id} of {self.dep.version} is in progress; roll it back first")
        self.repo.get(req.version)
        fleet, offline = self._fleet(now)
        if not fleet:
            raise Conflict("no appliances are known yet: nothing to deploy to")
        dep_id = f"d{int(now)}-{secrets.token_hex(3)}"
        dep = Deployment(dep_id, req.version, self.active, fleet, req.waves, req.bake_s, req.gates, now, offline)
        self.dep = dep
        self._take(list(dep.history))
        await self.store.record_audit(actor, "model.deploy", req.version, {
            "deployment": dep_id, "previous": dep.previous, "waves": dep.waves, "bake_s": dep.bake_s,
            "appliances": len(fleet), "offline": sorted(offline)})
        await self.persist()
        self._wake.set()
        return self.status()

    async def rollback(self, actor: str, reason: str = "") -> dict[str, Any]:
        dep = self.dep
        if dep is None:
            raise Conflict("no deployment to roll back")
        if dep.phase == "rolled_back":
            raise Conflict(f"deployment {dep.id} of {dep.version} is already rolled back")
        if dep.previous is None:
            raise Conflict(f"{dep.version} was the first version deployed: there is no previous version")
        why = f"operator rollback by {actor}" + (f": {reason}" if reason else "")
        self._take(dep.rollback(self.clock(), why))
        await self.store.record_audit(actor, "model.rollback", dep.version, {
            "deployment": dep.id, "to": dep.previous, "reason": reason})
        await self.persist()
        self._wake.set()
        return self.status()

    # -- machine inputs (called from the MQTT loop: never block) -------------------------------------
    def on_ack(self, appliance_id: str, ack: Ack) -> None:
        now = self.clock()
        running = ack.detail.get("model_version")
        running = running if is_valid_id(running) else None
        refused = ack.detail.get("refused")
        previous = self.acks.get(appliance_id)
        if ack.status == "accepted" and previous is not None:
            running = previous.version  # "accepted" says nothing about the running version
        self.acks[appliance_id] = LastAck(ack.status, running, ack.reason[:200], now)
        self._dirty = True
        dep = self.dep
        if dep is None or appliance_id not in dep.appliances:
            return
        if ack.status == "done":
            self._take(dep.ack(appliance_id, running, now))
        elif ack.status == "failed" and refused == dep.version:
            self._take(dep.ack(appliance_id, running, now, failure=ack.reason or "load failed"))
        elif ack.status == "rejected" and (pub := self.published.get(appliance_id)) is not None \
                and pub.msg_id == ack.command_id and pub.version == dep.version:
            self._take(dep.ack(appliance_id, running, now, failure=f"desired model rejected: {ack.reason}"))

    def on_telemetry(self, row: TelemetryRow) -> None:
        """Health samples for the gates, counted only when the same version served the whole interval
        (requests served before a swap must not be charged to the new version).  The version serving
        also stands in for an ack that was lost: acks are not retained, and one sent while the control
        plane restarted would otherwise stall a wave."""
        aid = row.appliance_id
        serving = serving_version(row)
        straddles = self._serving.get(aid, "") != serving  # the interval began on another version: unattributable
        self._serving[aid] = serving
        dep = self.dep
        if dep is None or dep.phase != "baking":
            return
        if serving is not None and serving != dep.reported(aid) and aid in dep.appliances:
            self._take(dep.ack(aid, serving, self.clock()))
        if straddles:
            return
        try:
            sample = health_sample(row)
        except RolloutError as exc:
            log.warning("health sample from %s ignored: %s", row.appliance_id, exc)
            return
        if sample is not None:
            self._take(dep.observe(sample))
            self._dirty = True

    def _take(self, events: Iterable[Event]) -> None:
        events = list(events)
        if not events:
            return
        dep = self.dep
        assert dep is not None
        for ev in events:
            if ev.kind == "completed":
                self.active = dep.version
            elif ev.kind == "rolled_back":
                self.active = dep.previous
        self._events.extend(events)
        self._dirty = True
        self._wake.set()

    # -- the task's work -----------------------------------------------------------------------------
    async def step(self) -> None:
        """Tick, report events, publish what changed, persist: the only place that publishes desired state."""
        dep = self.dep
        if dep is not None:
            now = self.clock()
            fleet, offline = self._fleet(now)
            known = set(dep.appliances)
            if not set(fleet) <= known:
                dep.set_appliances(sorted(known | set(fleet)))  # joiners get the previous version for now
                self._dirty = True
            for aid in known | set(fleet):
                dep.set_online(aid, aid not in offline)
            self._take(dep.tick(now))
            self.metrics.wave.set(dep.current.index + 1 if dep.phase == "baking" else 0)
        events, self._events = self._events, []
        for ev in events:
            await self._report(ev)
        await self._publish()
        if self._dirty:
            await self.persist()

    async def _report(self, ev: Event) -> None:
        dep = self.dep
        assert dep is not None
        self.metrics.events.labels(ev.kind).inc()
        log.log(logging.WARNING if ev.kind in ("breached", "rolled_back") else logging.INFO,
                "deployment %s of %s: wave %d %s %s", dep.id, dep.version, ev.wave + 1, ev.kind, ev.detail)
        if ev.kind == "breached":
            await self.store.record_audit(ROLLOUT_ACTOR, "model.rollback.auto", dep.version, {
                "deployment": dep.id, "wave": ev.wave + 1, "to": dep.previous, "reason": ev.detail})

    async def _publish(self) -> None:
        dep = self.dep
        if dep is None:
            return
        for aid, version in sorted(dep.desired().items()):
            pub = self.published.get(aid)
            if (pub.version if pub else None) == version:
                continue
            try:
                desc = self.repo.descriptor(version) if version is not None else None
            except NotFound:
                log.error("desired model %s for %s has no bundle; not published", version, aid)
                continue
            generation = max(self.generation + 1, int(time.time() * 1000))
            try:
                msg_id = await self.session.publish(topics.appliance_desired(aid, "model"),
                                                    DesiredModel(generation, desc, dep.id), retain=True, timeout=2.0)
            except NearcastError as exc:
                log.warning("desired model for %s not published (retried next tick): %s", aid, exc)
                return
            self.generation = generation
            self.published[aid] = Published(version, generation, msg_id, dep.id, time.time())
            self.metrics.published.inc()
            self._dirty = True

    async def persist(self) -> None:
        async with self._write_lock:  # the document is taken under the lock: the last write is the newest
            self._dirty = False
            doc = SavedState(STATE_FORMAT, self.active, self.generation, dict(self.published), dict(self.acks),
                             self.dep.snapshot() if self.dep is not None else None)
            data = json.dumps(encode(doc), allow_nan=False, separators=(",", ":"))
            await asyncio.to_thread(write_atomic, self.path, data)

    # -- reading -----------------------------------------------------------------------------------
    def _fleet(self, now: float) -> tuple[list[str], set[str]]:
        """Every appliance enrolled or heard from, and those not online now."""
        ids = sorted(set(self.registry.appliances) | {a.id for a in self.fleet.snapshot()})
        offline = set()
        for aid in ids:
            live = self.fleet.get(aid)
            if live is None or not live.online(now, self.fleet.ttl_s):
                offline.add(aid)
        return ids, offline

    def status(self) -> dict[str, Any]:
        now = self.clock()
        dep = self.dep
        fleet, offline = self._fleet(now)
        rows: dict[str, dict[str, Any]] = {}
        for aid in fleet:
            rows[aid] = {"appliance_id": aid, "desired": None, "active": None, "wave": None,
                         "online": aid not in offline, "failure": ""}
        if dep is not None:
            for s in dep.status():
                rows[s.appliance_id] = {"appliance_id": s.appliance_id, "desired": s.desired, "active": s.reported,
                                        "wave": None if s.wave is None else s.wave + 1,
                                        "online": s.appliance_id not in offline, "failure": s.failure}
        for aid, row in rows.items():
            ack, pub = self.acks.get(aid), self.published.get(aid)
            if row["desired"] is None and pub is not None:
                row["desired"] = pub.version
            if row["active"] is None and ack is not None:
                row["active"] = ack.version
            row["last_ack"] = encode(ack) if ack else None
            row["generation"] = pub.generation if pub else None
        return {"active": self.active, "deployment": self._deployment_json(dep) if dep else None,
                "appliances": [rows[a] for a in sorted(rows)]}

    @staticmethod
    def _deployment_json(dep: Deployment) -> dict[str, Any]:
        wave = dep.current
        return {
            "id": dep.id, "version": dep.version, "previous": dep.previous, "phase": dep.phase,
            "reason": dep.reason, "waves": dep.waves, "bake_s": dep.bake_s, "gates": encode(dep.gates),
            "started_at": dep.started[0].started_at, "wave": wave.index + 1, "wave_percent": wave.percent,
            "wave_members": len(wave.members), "wave_started_at": wave.started_at, "bake_until": wave.bake_until,
            "health": {"new": _cohort(wave.new), "baseline": _cohort(wave.base)},
            "converged": dep.converged(), "history": [encode(e) for e in dep.history[-100:]],
        }


def _cohort(c: Any) -> dict[str, float]:
    return {"requests": c.requests, "error_rate": round(c.error_rate, 6), "fallback_rate": round(c.fallback_rate, 6),
            "p99_ms": round(c.p99_ms, 3)}
