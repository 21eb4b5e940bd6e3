"""One MQTT session per daemon: reconnecting, announcing itself, dispatching typed messages.

- reconnects with capped exponential backoff and jitter, re-subscribing every filter each time;
- publishes a retained *birth* status on every connect and registers a retained *Last Will* so the
  broker marks the daemon offline if it vanishes; a clean stop publishes the offline status itself;
- a *persistent* session (the control plane's) keeps its subscriptions on the broker while it is away, so
  QoS 1 messages published meanwhile — an appliance draining its telemetry spool after a broker restart,
  before this daemon reconnected — are queued for it rather than dropped (the broker persists them);
- inbound messages go through a bounded queue (overflow is counted, never silent) into handlers run
  one at a time, in arrival order (desired state must apply in order);
- a bad message never kills the loop: it is logged, counted and, when an ack topic is configured,
  answered with a ``rejected`` ack naming the reason (commands are idempotent by envelope id).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
from prometheus_client import CollectorRegistry, Counter, Gauge

from .config import non_negative, port_check, positive, setting
from .envelope import DEFAULT_MAX_BYTES, Envelope, Registry, dumps, parse_raw
from .errors import ConfigError, EnvelopeError, NearcastError
from .messages import Ack
from .tasks import TaskGroup

log = logging.getLogger(__name__)

_MAX_ROUTES = 100_000

Handler = Callable[[Envelope[Any], str], Awaitable[None]]


@dataclass(frozen=True)
class MqttSettings:
    host: str = setting("127.0.0.1", "MQTT broker host name or address.")
    port: int = setting(1883, "MQTT broker port (8883 is usual with TLS).", check=port_check)
    username: str = setting("", "User name for the broker; appliances use their appliance id.")
    password_file: Path | None = setting(None, "File holding the broker password (kept out of this file).")
    password: str = setting("", "Broker password; prefer password_file or the environment.", secret=True)
    credentials_file: Path | None = setting(None, "JSON file {\"username\", \"password\"} that replaces username "
                                            "and password once it exists: an appliance writes its rotated broker "
                                            "login here (an edge's default: <cache dir>/mqtt-credentials.json).")
    tls: bool = setting(False, "Connect with TLS.")
    tls_ca_file: Path | None = setting(None, "CA bundle to verify the broker's certificate (TLS).")
    tls_cert_file: Path | None = setting(None, "Client certificate for mutual TLS.")
    tls_key_file: Path | None = setting(None, "Client certificate key for mutual TLS.")
    keepalive_s: int = setting(15, "MQTT keepalive; the broker fires the Last Will after 1.5x this.",
                               check=positive)
    reconnect_min_s: float = setting(0.5, "First reconnect delay.", check=positive)
    reconnect_max_s: float = setting(30.0, "Reconnect delay cap (the delay doubles up to this).", check=positive)
    max_payload_bytes: int = setting(DEFAULT_MAX_BYTES, "Largest payload accepted; larger ones are rejected.",
                                     check=positive)
    inbound_queue: int = setting(10_000, "Inbound messages buffered while handlers work; overflow is counted.",
                                 check=positive)
    publish_timeout_s: float = setting(10.0, "How long a publish waits for a connection before failing.",
                                       check=non_negative)

    def resolve_password(self) -> str | None:
        if self.password:
            return self.password
        if self.password_file is not None:
            try:
                return self.password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"mqtt.password_file {self.password_file}: {exc.strerror}") from None
        return None

    def resolve_credentials(self) -> tuple[str | None, str | None]:
        """``(username, password)`` for the next connect: the credentials file when there is one."""
        if self.credentials_file is not None:
            try:
                doc = json.loads(self.credentials_file.read_text())
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as exc:
                raise ConfigError(f"mqtt.credentials_file {self.credentials_file}: {exc}") from None
            else:
                if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) and doc.get(k)
                                                        for k in ("username", "password")):
                    raise ConfigError(f"mqtt.credentials_file {self.credentials_file}: expected "
                                      '{"username": "...", "password": "..."}')
                return doc["username"], doc["password"]
        return self.username or None, self.resolve_password()

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=str(self.tls_ca_file) if self.tls_ca_file else None)
        ctx.sslsocket_class = _ClosingSSLSocket
        if self.tls_cert_file:
            ctx.load_cert_chain(str(self.tls_cert_file), str(self.tls_key_file) if self.tls_key_file else None)
        return ctx


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when the TLS handshake fails.

    paho-mqtt drops the socket without closing it when ``do_handshake`` raises, so a client retrying
    against a broker it cannot verify would leak one socket per attempt until garbage collection.
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


class MqttMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.received = Counter("nearcast_mqtt_messages_received_total",
                                "MQTT messages received, by outcome", ["result"], registry=registry)
        self.published = Counter("nearcast_mqtt_messages_published_total", "MQTT messages published",
                                 registry=registry)
        self.dropped = Counter("nearcast_mqtt_inbound_dropped_total",
                               "Inbound MQTT messages dropped because the inbound queue was full",
                               registry=registry)
        self.connects = Counter("nearcast_mqtt_connects_total", "Successful MQTT connections", registry=registry)
        self.connected = Gauge("nearcast_mqtt_connected", "1 while connected to the broker", registry=registry)


class NotConnected(NearcastError):
    http_status = 503


@dataclass(frozen=True)
class Announcement:
    """A retained message published on connect (birth) or by the broker on loss (will)."""

    topic: str
    body: Any


class MqttSession:
    def __init__(self, settings: MqttSettings, *, client_id: str, registry: Registry,
                 metrics: MqttMetrics, birth: Announcement | None = None,
                 will: Announcement | None = None, ack_topic: str | None = None,
                 persistent: bool = False) -> None:
        self.settings = settings
        self.persistent = persistent
        self.client_id = client_id
        self.registry = registry
        self.metrics = metrics
        self.birth = birth
        self.will = will
        self.ack_topic = ack_topic
        self.connected = asyncio.Event()
        self._subs: dict[str, tuple[int, Handler]] = {}
        self._routes: dict[str, Handler] = {}
        self._ok = metrics.received.labels("ok")
        self._client: aiomqtt.Client | None = None
        self._tasks = TaskGroup(f"mqtt[{client_id}]")
        self._stopping = False
        self._reconnecting = False
        self.connect_count = 0

    # -- setup -----------------------------------------------------------------------------------
    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        """Route messages matching ``topic_filter`` to ``handler``; kept across reconnects."""
        self._subs[topic_filter] = (qos, handler)
        self._routes.clear()
        client = self._client
        if client is not None and self.connected.is_set():
            self._tasks.spawn(client.subscribe(topic_filter, qos=qos), name=f"subscribe {topic_filter}")

    async def start(self) -> None:
        self._stopping = False
        self._tasks.spawn(self._run(), name="connection")

    async def stop(self, *, announce_offline: bool = True) -> None:
        """Publish the offline status (the broker only sends the Will on unclean loss) and disconnect."""
        self._stopping = True
        client = self._client
        if announce_offline and self.will is not None and client is not None and self.connected.is_set():
            try:
                await asyncio.wait_for(self._publish_now(client, self.will.topic, self.will.body, 1, True), 3)
            except (aiomqtt.MqttError, TimeoutError) as exc:
                log.warning("could not publish offline status: %s", exc)
        await self._tasks.aclose()
        self.connected.clear()
        self.metrics.connected.set(0)

    def reconnect(self) -> None:
        """Close the connection cleanly (no Will): the loop connects again, reading the credentials anew."""
        client = self._client
        if client is not None and self.connected.is_set():
            # aiomqtt has no public way out of ``messages`` short of leaving its context: a clean DISCONNECT
            # through paho ends the iteration, and the loop's ordinary reconnect takes over.
            self._reconnecting = True
            client._client.disconnect()

    @property
    def stopping(self) -> bool:
        return self._stopping

    # -- publishing -------------------------------------------------------------------------------
    async def publish(self, topic: str, body: Any, *, qos: int = 1, retain: bool = False,
                      msg_id: str | None = None, timeout: float | None = None) -> str:
        """Publish ``body`` in an envelope; waits for a connection up to the publish timeout.

        Returns the envelope id.  Raises :class:`NotConnected` when no connection came in time.
        """
        wait = self.settings.publish_timeout_s if timeout is None else timeout
        try:
            if not self.connected.is_set():
                await asyncio.wait_for(self.connected.wait(), wait)
        except TimeoutError:
            raise NotConnected(f"not connected to the MQTT broker at {self.settings.host}:"
                               f"{self.settings.port}") from None
        client = self._client
        if client is None:
            raise NotConnected("MQTT session is stopping")
        try:
            return await self._publish_now(client, topic, body, qos, retain, msg_id)
        except aiomqtt.MqttError as exc:
            raise NotConnected(f"publish failed: {exc}") from None

    async def publish_encoded(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        """Publish an envelope encoded earlier (a spooled one keeps its id); returns once the broker
        acknowledged it (QoS 1), raises :class:`NotConnected` without waiting when there is no connection."""
        client = self._client
        if client is None or not self.connected.is_set():
            raise NotConnected("not connected to the MQTT broker")
        try:
            await client.publish(topic, payload, qos=qos)
        except aiomqtt.MqttError as exc:
            raise NotConnected(f"publish failed: {exc}") from None
        self.metrics.published.inc()

    async def clear_retained(self, topic: str) -> None:
        """Remove a retained message (an empty retained payload)."""
        client = self._client
        if client is None or not self.connected.is_set():
            raise NotConnected("not connected to the MQTT broker")
        await client.publish(topic, b"", qos=1, retain=True)

    async def _publish_now(self, client: aiomqtt.Client, topic: str, body: Any, qos: int, retain: bool,
                           msg_id: str | None = None) -> str:
        env = self.registry.wrap(body, sender=self.client_id, msg_id=msg_id)

        await client.publish(topic, dumps(env), qos=qos, retain=retain)
        self.metrics.published.inc()
        return env.id

    # -- the connection loop ----------------------------------------------------------------------
    def _make_client(self, username: str | None, password: str | None) -> aiomqtt.Client:
        metrics = self.metrics

        class CountingQueue(asyncio.Queue[aiomqtt.Message]):
            def put_nowait(self, item: aiomqtt.Message) -> None:
                try:
                    super().put_nowait(item)
                except asyncio.QueueFull:
                    metrics.dropped.inc()
                    raise

        will = None
        if self.will is not None:

            will = aiomqtt.Will(self.will.topic, dumps(self.registry.wrap(self.will.body, sender=self.client_id)),
                                qos=1, retain=True)
        return aiomqtt.Client(
            self.settings.host, self.settings.port,
            username=username, password=password,
            identifier=self.client_id, will=will, keepalive=self.settings.keepalive_s,
            tls_context=self.settings.tls_context(), queue_type=CountingQueue,
            max_queued_incoming_messages=self.settings.inbound_queue, timeout=10,
            clean_session=not self.persistent,
        )

    async def _run(self) -> None:
        delay = self.settings.reconnect_min_s
        while not self._stopping:
            try:  # read at every connect: a rotated login takes effect at the next one
                username, password = await asyncio.to_thread(self.settings.resolve_credentials)
            except ConfigError as exc:
                log.error("MQTT credentials unusable, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.reconnect_max_s)
                continue
            client = self._make_client(username, password)
            try:
                async with client:
                    self._client = client
                    if self.birth is not None:
                        await self._publish_now(client, self.birth.topic, self.birth.body, 1, True)
                    for topic_filter, (qos, _) in list(self._subs.items()):
                        await client.subscribe(topic_filter, qos=qos)
                    self.connect_count += 1
                    self.metrics.connects.inc()
                    self.metrics.connected.set(1)
                    self.connected.set()
                    delay = self.settings.reconnect_min_s
                    log.info("MQTT connected to %s:%s as %s", self.settings.host, self.settings.port,
                             self.client_id)
                    async for message in client.messages:
                        await self._dispatch(message)
            except aiomqtt.MqttError as exc:
                if self._reconnecting:
                    log.info("MQTT reconnecting to %s:%s as asked", self.settings.host, self.settings.port)
                elif not self.stopping:
                    log.warning("MQTT connection to %s:%s lost or refused: %s; retrying in %.1fs",
                                self.settings.host, self.settings.port, exc, delay)
            finally:
                self._reconnecting = False
                self.connected.clear()
                self.metrics.connected.set(0)
                self._client = None
            if self.stopping:
                break
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.settings.reconnect_max_s)

    def _handler_for(self, topic: aiomqtt.Topic) -> Handler | None:
        # Filter matching splits strings; a fleet sends on a bounded set of topics, so remember them.
        cached = self._routes.get(topic.value)
        if cached is not None:
            return cached
        for topic_filter, (_, handler) in self._subs.items():
            if topic.matches(topic_filter):
                if len(self._routes) >= _MAX_ROUTES:
                    self._routes.clear()
                self._routes[topic.value] = handler
                return handler
        return None

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload: Any = message.payload
        if not isinstance(payload, bytes | bytearray):
            payload = b"" if payload is None else str(payload).encode()
        if not payload and message.retain:
            return  # a cleared retained message
        handler = self._handler_for(message.topic)
        if handler is None:
            return
        try:
            env = self.registry.decode(payload, max_bytes=self.settings.max_payload_bytes)
        except EnvelopeError as exc:
            self.metrics.received.labels("rejected").inc()
            log.warning("rejected message on %s: %s", topic, exc)
            await self._ack_rejected(payload, str(exc))
            return
        try:
            await handler(env, topic)
        except NearcastError as exc:
            self.metrics.received.labels("rejected").inc()
            log.warning("handler rejected %s %s on %s: %s", env.type, env.id, topic, exc)
            await self._ack(env.id, env.type, "rejected", str(exc))
            return
        except Exception as exc:
            self.metrics.received.labels("failed").inc()
            log.exception("handler for %s failed on message %s", topic, env.id)
            await self._ack(env.id, env.type, "failed", f"internal error: {type(exc).__name__}")
            return
        self._ok.inc()

    async def _ack_rejected(self, payload: bytes | bytearray, reason: str) -> None:
        try:
            raw = parse_raw(payload, max_bytes=self.settings.max_payload_bytes)
        except EnvelopeError:
            await self._ack("unknown", "", "rejected", reason)
            return
        await self._ack(raw["id"], raw["type"][:64], "rejected", reason)

    async def _ack(self, command_id: str, command_type: str, status: Any, reason: str) -> None:
        client = self._client
        if self.ack_topic is None or client is None:
            return
        try:
            await self._publish_now(client, self.ack_topic,
                                    Ack(command_id, command_type, status, reason[:500]), 1, False)
        except aiomqtt.MqttError as exc:
            log.warning("could not publish ack: %s", exc)
