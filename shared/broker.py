"""The embedded MQTT broker (amqtt) for ``nearcast demo`` and single-machine installs.

Production runs Mosquitto or EMQX; the embedded broker only ever binds to loopback by default.  It
enforces the same password and ACL files the control plane writes for Mosquitto
(:mod:`shared.mqtt_auth`): anonymous clients are refused, each appliance is confined to its own
topics, and the files are re-read when they change (an enrollment, a removal, a credential rotation),
at once for a login that would otherwise fail and within ``reload_interval_s`` otherwise; a client
whose credentials were revoked is disconnected, as Mosquitto does on SIGHUP.

amqtt 0.12 looks a client's session up (and for a clean session deletes it) before it asks the
authentication plugins, and on every connect it hands out retained messages without asking the topic
plugins.  :class:`_GuardedBroker` closes both holes: a CONNECT is authenticated before any session is
touched, a client id already held by another identity is refused, and retained messages go only where
the ACL lets them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action, BaseContext
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import IDENTIFIER_REJECTED, NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session
from amqtt.utils import gen_client_id

from .mqtt_auth import BrokerFiles, identity
from .tasks import TaskGroup

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _LockedFiles:
    """:class:`BrokerFiles` refreshed from worker threads one at a time."""

    def __init__(self, files: BrokerFiles) -> None:
        self.files = files
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        with self._lock:
            return self.files.refresh()

    async def refresh_async(self) -> bool:
        return await asyncio.to_thread(self.refresh)


class FileAuthPlugin(BaseAuthPlugin, BaseTopicPlugin):  # type: ignore[misc]
    """Logins checked against the password file, every publish, subscription and delivery against the ACL."""

    @dataclass
    class Config:
        files: Any = None  # a _LockedFiles; amqtt builds this from the plugin's config mapping

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        locked = self.config.files
        if not isinstance(locked, _LockedFiles):
            raise TypeError("FileAuthPlugin needs its broker files")
        self.locked: _LockedFiles = locked

    async def authenticate(self, *, session: Session) -> bool | None:
        files = self.locked.files
        if files.authenticate(session.username, session.password):
            return True
        # Perhaps enrolled (or rotated) a moment ago: look at the files again before refusing.
        if await self.locked.refresh_async():
            return files.authenticate(session.username, session.password)
        return False

    async def topic_filtering(self, *, session: Session | None = None, topic: str | None = None,
                              action: Action | None = None) -> bool | None:
        if session is None or not topic:
            return False
        files = self.locked.files
        client_id = session.client_id or ""
        if action == Action.PUBLISH:
            return files.allows(session.username, client_id, topic, "write")
        if action == Action.RECEIVE:
            return files.allows(session.username, client_id, topic, "read")
        if action == Action.SUBSCRIBE:
            return files.allows_subscribe(session.username, client_id, topic)
        return False


class _Snapshots(dict[str, Any]):
    """amqtt iterates its subscription table with awaits in the loop body (a topic plugin's check), so a
    subscription arriving meanwhile would break the iteration; iterate over a copy instead."""

    def __iter__(self) -> Iterator[str]:
        return iter(list(super().__iter__()))

    def items(self) -> Any:
        return list(super().items())


class _GuardedBroker(Broker):  # type: ignore[misc]
    """amqtt's broker, authenticating before it touches sessions and filtering retained deliveries."""

    def __init__(self, config: dict[str, Any], files: _LockedFiles) -> None:
        super().__init__(config)
        self.files = files
        self._subscriptions = _Snapshots()

    async def _refusal(self, incoming: Session) -> tuple[int, str] | None:
        if not self.files.files.authenticate(incoming.username, incoming.password) \
                and not (await self.files.refresh_async()
                         and self.files.files.authenticate(incoming.username, incoming.password)):
            return NOT_AUTHORIZED, f"not authorized (user {str(incoming.username)[:64]!r})"
        held = self._sessions.get(incoming.client_id or "")
        if held is not None and identity(held[0].username or "") != identity(incoming.username or ""):
            return IDENTIFIER_REJECTED, f"client id {incoming.client_id!r} belongs to another identity"
        return None

    async def _initialize_client_session(self, reader: Any, writer: Any, remote_address: str,
                                         remote_port: int) -> tuple[BrokerProtocolHandler, Session]:
        try:
            handler, incoming = await BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager)
        except MQTTError:
            await writer.close()
            raise
        except NoDataError as exc:
            raise AMQTTError(exc) from exc
        refusal = await self._refusal(incoming)
        if refusal is not None:
            code, why = refusal
            await ConnackPacket.build(0, code).to_stream(writer)
            await writer.close()
            log.warning("MQTT connection from %s:%s refused: %s", remote_address, remote_port, why)
            raise AMQTTError(why)
        session = incoming
        if incoming.clean_session:
            if incoming.client_id:
                await self._delete_session(incoming.client_id)
            else:
                incoming.client_id = gen_client_id()
            incoming.parent = 0
        elif incoming.client_id in self._sessions:
            session = self._sessions[incoming.client_id][0]
            for name in ("will_flag", "will_message", "will_topic", "will_qos", "keep_alive", "username",
                         "password"):
                setattr(session, name, getattr(incoming, name))
            session.parent = 1
        else:
            incoming.parent = 0
        delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        return handler, session

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                          session: Session) -> None:
        topic_filter, qos = subscription
        handler = self._get_handler(session)
        if handler is None:
            return
        sends = []
        for topic, retained in list(self._retained_messages.items()):
            if self._matches(topic, topic_filter) and \
                    await self._topic_filtering(session, topic=topic, action=Action.RECEIVE):
                sends.append(handler.mqtt_publish(retained.topic, retained.data, min(qos, retained.qos or qos),
                                                  retain=True))
        for result in await asyncio.gather(*sends, return_exceptions=True):
            if isinstance(result, Exception):
                log.warning("retained message not delivered to %s: %s", session.client_id, result)

    async def _stop_handler(self, handler: BrokerProtocolHandler) -> None:
        await super()._stop_handler(handler)
        # amqtt's writer adapter drains before it closes, and a drain that fails (the peer is gone) skips
        # the close: the socket would stay open until garbage collection.
        stream = getattr(handler.writer, "_writer", None)
        if isinstance(stream, asyncio.StreamWriter) and not stream.is_closing():
            stream.close()

    async def drop_revoked(self) -> int:
        """Disconnect clients whose user name or password is no longer in the password file."""
        dropped = 0
        for session, handler in list(self._sessions.values()):
            if session.transitions.is_connected() and not self.files.files.authenticate(session.username,
                                                                                        session.password):
                log.info("MQTT client %s (user %s) disconnected: its credentials were revoked",
                         session.client_id, session.username)
                await handler.handle_connection_closed()
                dropped += 1
        return dropped


class EmbeddedBroker:
    """An in-process MQTT broker enforcing ``password_file`` and ``acl_file`` (Mosquitto formats)."""

    def __init__(self, password_file: Path, acl_file: Path, *, host: str = "127.0.0.1", port: int = 0,
                 reload_interval_s: float = 1.0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.files = BrokerFiles(password_file, acl_file)
        self.reload_interval_s = reload_interval_s
        self._locked = _LockedFiles(self.files)
        self._broker: _GuardedBroker | None = None
        self._tasks = TaskGroup("embedded-broker")
        self._checked_loads = 0

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> None:
        await self._locked.refresh_async()
        self._checked_loads = self.files.loads
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {f"{__name__}.FileAuthPlugin": {"files": self._locked}},
        }
        self._broker = _GuardedBroker(config, self._locked)
        await self._broker.start()
        self._tasks.spawn(self._watch(), name="reload broker files")
        log.info("embedded MQTT broker listening on %s (password file %s)", self.url, self.files.password_file)

    async def reload(self) -> bool:
        """Re-read the files now (they are also watched); disconnects clients whose login was revoked."""
        changed = await self._locked.refresh_async()
        # A login that missed may have reloaded the files already: compare load counts, not this call's result.
        if self.files.loads != self._checked_loads and self._broker is not None:
            self._checked_loads = self.files.loads
            await self._broker.drop_revoked()
        return changed

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval_s)
            try:
                await self.reload()
            except Exception:
                log.exception("reloading the broker files failed; keeping the previous ones")

    async def stop(self) -> None:
        await self._tasks.aclose()
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
