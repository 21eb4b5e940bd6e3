"""The appliance's agent: its MQTT presence, commands, desired state and telemetry.

Commands are idempotent by envelope id (a redelivered command is acked again, not re-run).
Desired state is retained on the broker, so a restarted or reconnected appliance always receives the
latest generation; older generations are ignored, also across a restart: the persistent session
makes the broker queue (and redeliver, if it was never acknowledged) every desired-state message
sent while the appliance was away, so older copies can arrive before the retained latest one.  The
last generation applied per kind is kept in ``desired.json``.  Telemetry goes through an on-disk
outbox, so a broker outage delays samples instead of losing them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from shared import topics
from shared.envelope import Envelope
from shared.errors import InvalidInput
from shared.files import write_atomic, write_private
from shared.messages import (
    REGISTRY,
    Ack,
    ApplianceStatus,
    DesiredConfig,
    DesiredFill,
    DesiredModel,
    Ping,
    RotateCredentials,
    SetDraining,
    Telemetry,
)
from shared.mqtt import Announcement, MqttSession, NotConnected
from shared.mqtt_auth import split_username
from shared.spool import Spool
from shared.tasks import TaskGroup

from . import telemetry
from .config import EdgeConfig
from .metrics import EdgeMetrics
from .outbox import TelemetryOutbox

log = logging.getLogger(__name__)

SOFTWARE = "nearcast-edge/0.1"
DRAIN_FILE = "draining.json"
DESIRED_FILE = "desired.json"
_SEEN_COMMANDS = 1024
ROTATE_CONNECT_TIMEOUT_S = 30.0  # a rotated login the broker refuses this long is given up for the old one

DesiredHandler = Callable[[Envelope[Any]], Awaitable[None]]


class EdgeAgent:
    def __init__(self, config: EdgeConfig, metrics: EdgeMetrics, public_url: str) -> None:
        self.config = config
        self.metrics = metrics
        self.appliance_id = config.appliance.id
        self.public_url = public_url
        self.started_at = time.time()
        #: Operator intent, kept across restarts (an appliance drained stays drained until undrained).
        self.drain_file = config.cache.dir / DRAIN_FILE
        self.draining = _load_draining(self.drain_file)
        self.desired: dict[str, Envelope[Any]] = {}
        #: kind -> (generation, envelope time) last applied, kept across restarts.
        self.desired_file = config.cache.dir / DESIRED_FILE
        self._applied = _load_applied(self.desired_file)
        self._seen: OrderedDict[str, Ack] = OrderedDict()
        self._telemetry_seq = 0
        self.desired_handlers: dict[str, DesiredHandler] = {}
        aid = self.appliance_id
        self.credentials_file: Path = config.mqtt.credentials_file or config.cache.dir / "mqtt-credentials.json"
        self.session = MqttSession(
            replace(config.mqtt, credentials_file=self.credentials_file), client_id=aid, registry=REGISTRY,
            metrics=metrics.mqtt,
            birth=Announcement(topics.appliance_status(aid), self.status("draining" if self.draining else "online")),
            will=Announcement(topics.appliance_status(aid), self.status("offline")),
            ack_topic=topics.appliance_acks(aid),
            persistent=True,  # commands sent while this appliance is away wait for it on the broker
        )
        self.session.subscribe(topics.appliance_commands(aid), self._on_command)
        self.session.subscribe(f"{topics.ROOT}/appliances/{aid}/desired/+", self._on_desired)
        t = config.telemetry
        spool = Spool(t.spool_dir or config.cache.dir / "spool" / "telemetry", max_bytes=t.spool_max_bytes,
                      segment_bytes=max(4096, min(1 << 20, t.spool_max_bytes // 8)))
        self.outbox = TelemetryOutbox(spool, self.session, topics.appliance_telemetry(aid), metrics)
        self._tasks = TaskGroup(f"agent[{aid}]")

    def status(self, state: Any, reason: str = "") -> ApplianceStatus:
        return ApplianceStatus(state=state, software=SOFTWARE, started_at=self.started_at,
                               http_url=self.public_url, reason=reason)

    async def start(self) -> None:
        await self.outbox.open()
        self._tasks.spawn(self.outbox.run(), name="telemetry outbox")
        await self.session.start()
        stored = await asyncio.to_thread(_stored_rotation, self.credentials_file)
        if stored is not None:  # stored a rotated login, then stopped before acking it: ack it now
            self._tasks.spawn(self._ack_rotation(*stored), name="ack stored rotation")

    async def stop(self) -> None:
        await self._tasks.aclose()
        await self.session.stop()
        await self.outbox.close()

    # -- commands ----------------------------------------------------------------------------------
    async def _on_command(self, env: Envelope[Any], topic: str) -> None:
        if env.sender != topics.CONTROL_ID:
            raise InvalidInput(f"commands are accepted only from the control plane, not {env.sender!r}")
        previous = self._seen.get(env.id)
        if previous is not None:
            await self._publish_ack(previous)  # redelivery: same answer, no second effect
            self.metrics.commands.labels(env.type, "duplicate").inc()
            return
        body = env.body
        if isinstance(body, Ping):
            ack = Ack(env.id, env.type, "done", detail={"note": body.note})
        elif isinstance(body, SetDraining):
            await self.set_draining(body.draining)
            ack = Ack(env.id, env.type, "done", detail={"draining": self.draining})
        elif isinstance(body, RotateCredentials):
            await self._rotate_credentials(env, body)
            return
        else:
            raise InvalidInput(f"{env.type} is not a command this appliance runs")
        self._remember(env.id, ack)
        self.metrics.commands.labels(env.type, "done").inc()
        await self._publish_ack(ack)

    async def _rotate_credentials(self, env: Envelope[Any], body: RotateCredentials) -> None:
        """Store the new login atomically, reconnect with it, and ack over the new connection.

        The reconnect cannot happen inside this handler (it runs in the connection's own message loop),
        so it is a task; a redelivered command is answered from ``_seen`` without a second switch.
        """
        aid, generation = split_username(body.username)
        if aid != self.appliance_id or generation < 1:
            raise InvalidInput(f"credentials for {body.username[:80]!r} are not a rotated login of this appliance")
        if len(body.password) < 16 or not body.password.isprintable():
            raise InvalidInput("a rotated MQTT password must be at least 16 printable characters")
        previous = await asyncio.to_thread(self.session.settings.resolve_credentials)
        # The ack owed goes into the same file, so a restart before it was sent still sends it (start()).
        await asyncio.to_thread(write_private, self.credentials_file, json.dumps({
            "username": body.username, "password": body.password,
            "unacked": {"command_id": env.id, "command_type": env.type}}))
        self._remember(env.id, Ack(env.id, env.type, "done", detail={"user": body.username}))
        self._tasks.spawn(self._switch_login(env.id, env.type, body.username, body.password, previous),
                          name="rotate credentials")

    async def _switch_login(self, command_id: str, command_type: str, username: str, password: str,
                            previous: tuple[str | None, str | None]) -> None:
        before = self.session.connect_count
        self.session.reconnect()
        deadline = time.monotonic() + ROTATE_CONNECT_TIMEOUT_S
        # connect_count is a counter, not an event: the old connection may still be up for a moment
        while self.session.connect_count == before and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if self.session.connect_count == before and previous[0] and previous[1]:
            # The broker never took the new login (not reloaded?): go back to the old one, which still works.
            log.error("the broker refused the rotated MQTT login %s; going back to %s", username, previous[0])
            await asyncio.to_thread(write_private, self.credentials_file,
                                    json.dumps({"username": previous[0], "password": previous[1]}))
            ack = Ack(command_id, command_type, "failed", "the broker refused the new login")
            self._remember(command_id, ack)
            self.metrics.commands.labels(command_type, "failed").inc()
            await self._publish_ack(ack)
            return
        log.info("MQTT login rotated: connected as %s", username)
        await self._ack_rotation(command_id, command_type, username, password)

    async def _ack_rotation(self, command_id: str, command_type: str, username: str, password: str) -> None:
        """Ack ``done`` (waiting for a connection as long as it takes), then note in the file it was sent."""
        ack = Ack(command_id, command_type, "done", detail={"user": username})
        while True:
            try:
                await self._publish_ack(ack)
                break
            except NotConnected:
                await asyncio.sleep(1.0)
        self.metrics.commands.labels(command_type, "done").inc()
        await asyncio.to_thread(write_private, self.credentials_file,
                                json.dumps({"username": username, "password": password}))

    def _remember(self, msg_id: str, ack: Ack) -> None:
        self._seen[msg_id] = ack
        while len(self._seen) > _SEEN_COMMANDS:
            self._seen.popitem(last=False)

    async def _publish_ack(self, ack: Ack) -> None:
        await self.session.publish(topics.appliance_acks(self.appliance_id), ack)

    async def set_draining(self, draining: bool) -> None:
        """Draining keeps serving existing sessions but asks the control plane to steer new ones elsewhere."""
        await asyncio.to_thread(_save_draining, self.drain_file, draining)
        self.draining = draining
        self.metrics.draining.set(1 if draining else 0)
        state = "draining" if draining else "online"
        # The birth status is what every reconnect announces: it must not say "online" while draining.
        self.session.birth = Announcement(topics.appliance_status(self.appliance_id), self.status(state))
        await self.session.publish(topics.appliance_status(self.appliance_id), self.status(state), retain=True)

    # -- desired state -----------------------------------------------------------------------------
    async def _on_desired(self, env: Envelope[Any], topic: str) -> None:
        parsed = topics.parse(topic)
        kind = parsed.kind or ""
        expected = {"fill": DesiredFill, "model": DesiredModel, "config": DesiredConfig}[kind]
        body = env.body
        if not isinstance(body, DesiredFill | DesiredModel | DesiredConfig) or type(body) is not expected:
            raise InvalidInput(f"{env.type} does not belong on desired/{kind}")
        if env.sender != topics.CONTROL_ID:
            raise InvalidInput(f"desired state is accepted only from the control plane, not {env.sender!r}")
        current = self.desired.get(kind)
        if current is not None and current.body.generation >= body.generation:
            log.info("ignoring desired/%s generation %d (have %d)", kind, body.generation,
                     current.body.generation)
            return
        before = self._applied.get(kind)
        if current is None and before is not None and body.generation < before[0] and env.ts <= before[1]:
            # An older copy the broker held for this session: applying it would undo newer state (an
            # older fill plan would complete, and be served, an older version).  The envelope time
            # tells it from a control plane that lost its counter and starts generations again.
            log.info("ignoring desired/%s generation %d: generation %d was applied before the restart",
                     kind, body.generation, before[0])
            return
        handler = self.desired_handlers.get(kind)
        if handler is not None:
            await handler(env)
        self.desired[kind] = env
        if self._applied.get(kind) != (body.generation, env.ts):
            self._applied[kind] = (body.generation, env.ts)
            await asyncio.to_thread(_save_applied, self.desired_file, dict(self._applied))
        await self._publish_ack(Ack(env.id, env.type, "accepted", detail={"generation": body.generation}))

    # -- telemetry ---------------------------------------------------------------------------------
    def telemetry_sample(self) -> Telemetry:
        self._telemetry_seq += 1
        return telemetry.sample(self.metrics.registry, self.metrics.demand, seq=self._telemetry_seq,
                                interval_s=self.config.telemetry.interval_s,
                                extra_gauges={"draining": 1.0 if self.draining else 0.0,
                                              "uptime_s": time.time() - self.started_at})

    async def send_ack(self, ack: Ack) -> None:
        """For components reporting on desired state (fills): never waits for a lost connection."""
        await self.session.publish(topics.appliance_acks(self.appliance_id), ack, timeout=0)

    async def telemetry_loop(self) -> None:
        """Sample every interval, connected or not: the outbox holds samples until the broker is back."""
        interval = self.config.telemetry.interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.outbox.put(self.session.registry.encode(self.telemetry_sample(),
                                                                   sender=self.appliance_id))
            except Exception as exc:
                log.warning("telemetry sample not spooled: %s", exc)


def _read_state(path: Path) -> dict[str, Any]:
    """A small JSON state file of this agent's; {} when it is absent, unreadable or not an object."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    return doc if isinstance(doc, dict) else {}


def _load_draining(path: Path) -> bool:
    """The last drain command's state (False when none was ever received or the file is unreadable)."""
    doc = _read_state(path)
    return doc.get("draining") is True


def _stored_rotation(path: Path) -> tuple[str, str, str, str] | None:
    """``(command id, command type, user, password)`` of a rotated login stored but not acked yet."""
    doc = _read_state(path)
    unacked = doc.get("unacked")
    if not isinstance(unacked, dict):
        return None
    cid, ctype, user, password = (unacked.get("command_id"), unacked.get("command_type"), doc.get("username"),
                                  doc.get("password"))
    if isinstance(cid, str) and isinstance(ctype, str) and isinstance(user, str) and isinstance(password, str) \
            and cid and ctype and user and password:
        return cid, ctype, user, password
    return None


def _load_applied(path: Path) -> dict[str, tuple[int, float]]:
    """kind -> (generation, envelope ts) of the desired state last applied ({} if none or unreadable)."""
    doc = _read_state(path)
    out: dict[str, tuple[int, float]] = {}
    for kind, entry in doc.items():
        if isinstance(entry, dict) and isinstance(entry.get("generation"), int) \
                and isinstance(entry.get("ts"), int | float):
            out[str(kind)] = (entry["generation"], float(entry["ts"]))
    return out


def _save_applied(path: Path, applied: dict[str, tuple[int, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({k: {"generation": g, "ts": ts} for k, (g, ts) in applied.items()}).encode())


def _save_draining(path: Path, draining: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"draining": draining}).encode())
