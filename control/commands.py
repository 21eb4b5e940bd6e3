"""Commands to appliances that survive a broker outage: on disk first, on the broker when it is back.

An operator's drain or ping used to be published straight away, and with the broker down the publish
timed out: the store said "draining" while the appliance was never told.  Now a command is encoded
into its envelope once (so its id never changes), appended to a :class:`~shared.spool.Spool` under
the state directory (fsynced), and the API answers 202 with the command id at once; a sender task
publishes the spool in order whenever the session is connected, advancing past a command only once
the broker acknowledged it (QoS 1).  Appliances hold persistent sessions, so the broker queues a
command for one that has not reconnected yet.  Delivery is at least once (a crash between the
broker's acknowledgement and the cursor write sends it again); appliances run a command once per
envelope id and acknowledge a redelivery without a second effect, so each command takes effect once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from shared import topics
from shared.errors import InvalidInput
from shared.ids import new_id
from shared.mqtt import MqttSession
from shared.outbox import Outbox
from shared.spool import Spool
from shared.tasks import TaskGroup

log = logging.getLogger(__name__)

MAX_BYTES = 16 << 20
_SEP = b"\n"


class CommandOutbox(Outbox):
    """Records are ``topic \\n envelope``: one spool for every appliance's commands, in issue order."""

    what = "commands"

    def __init__(self, directory: Path, session: MqttSession, registry: CollectorRegistry,
                 *, max_bytes: int = MAX_BYTES) -> None:
        super().__init__(Spool(directory, max_bytes=max_bytes,
                               segment_bytes=max(4096, min(1 << 20, max_bytes // 8))), session)
        self.sent = Counter("nearcast_control_commands_sent_total",
                            "Commands to appliances the broker acknowledged", registry=registry)
        self.queued = Gauge("nearcast_control_commands_queued_bytes",
                            "Bytes of commands on disk waiting for the broker", registry=registry)
        self.dropped = Counter("nearcast_control_commands_dropped_total",
                               "Commands dropped unsent because the command spool was full", registry=registry)
        self._tasks = TaskGroup("commands")

    async def start(self) -> None:
        await self.open()
        self._tasks.spawn(self.run(), name="outbox")

    async def stop(self) -> None:
        await self._tasks.aclose()
        await self.close()

    async def send(self, appliance_id: str, body: Any) -> str:
        """Queue ``body`` for the appliance durably; returns its envelope (command) id."""
        msg_id = new_id()
        payload = self.session.registry.encode(body, sender=self.session.client_id, msg_id=msg_id)
        topic = topics.appliance_commands(appliance_id)
        if _SEP in topic.encode():
            raise InvalidInput("a command topic may not hold a newline")
        await self.put(topic.encode() + _SEP + payload)
        return msg_id

    async def deliver(self, record: bytes) -> None:
        topic, _, payload = record.partition(_SEP)
        await self.session.publish_encoded(topic.decode(), payload)
        self.sent.inc()

    def on_dropped(self, count: int) -> None:
        self.dropped.inc(count)
        log.warning("%d command(s) dropped unsent: the command spool is full", count)

    def on_backlog(self, nbytes: int) -> None:
        self.queued.set(nbytes)
