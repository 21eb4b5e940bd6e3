"""Records that survive the broker going away: on disk first (:class:`~shared.spool.Spool`), then on the broker.

:class:`Outbox` is the sender both daemons use (the edge's telemetry, the control plane's commands):
:meth:`Outbox.put` appends a record to the spool (fsynced) and wakes the sender; :meth:`Outbox.run`
publishes the spool's head in order whenever the session is connected, advancing past a record only
once :meth:`Outbox.deliver` returned (the broker acknowledged the QoS 1 publish).  While the broker is
unreachable records wait on disk within the spool's byte budget (the oldest are dropped when it is
full, reported through :meth:`Outbox.on_dropped`).  Delivery is at least once: a crash between the
acknowledgement and the spool's cursor write sends a record again, so receivers drop duplicates by
envelope id.
"""

from __future__ import annotations

import asyncio
import logging

from .mqtt import MqttSession, NotConnected
from .spool import Spool

log = logging.getLogger(__name__)

RETRY_S = 0.5


class Outbox:
    #: What the records are, for log lines ("telemetry", "commands").
    what = "records"

    def __init__(self, spool: Spool, session: MqttSession) -> None:
        self.spool = spool
        self.session = session
        self._wake = asyncio.Event()
        self._dropped_seen = 0

    async def open(self) -> None:
        await self.spool.open()
        await self._observe()

    async def close(self) -> None:
        await self.spool.close()

    async def put(self, record: bytes) -> None:
        """Queue a record durably; :meth:`run` publishes it when it can."""
        await self.spool.append(record)
        await self._observe()
        self._wake.set()

    async def deliver(self, record: bytes) -> None:
        """Publish one record; returns once the broker acknowledged it (raises ``NotConnected`` if not)."""
        raise NotImplementedError

    def on_dropped(self, count: int) -> None:
        """``count`` more records were dropped unsent because the spool was full."""

    def on_backlog(self, nbytes: int) -> None:
        """Bytes on disk waiting for the broker, after every change."""

    async def run(self) -> None:
        """Publish the spool's head in order whenever connected, until cancelled."""
        while True:
            await self.session.connected.wait()
            self._wake.clear()  # cleared before draining: a record queued meanwhile wakes the next round
            try:
                sent = await self.spool.drain(self.deliver)
            except NotConnected as exc:
                log.info("%s wait on disk: %s", self.what, exc)
                await self._observe()
                await asyncio.sleep(RETRY_S)
                continue
            except OSError as exc:
                log.warning("%s spool unreadable: %s", self.what, exc)
                await asyncio.sleep(RETRY_S)
                continue
            if sent:
                await self._observe()
            await self._wake.wait()

    async def _observe(self) -> None:
        dropped = self.spool.dropped_records - self._dropped_seen
        if dropped > 0:
            self._dropped_seen += dropped
            self.on_dropped(dropped)
        self.on_backlog(await self.spool.backlog())
