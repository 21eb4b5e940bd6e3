"""Telemetry that survives the broker going away: every sample goes to disk first, then to the broker.

A sample is encoded into its envelope once (so its id never changes), appended to a
:class:`~shared.spool.Spool` (fsynced) and only then published; the spool advances past it once the
broker acknowledged the QoS 1 publish.  While the broker is unreachable samples pile up on disk within
the spool's byte budget (the oldest are dropped and counted when it is full); after a reconnect they
drain in order.  A crash between the broker's acknowledgement and the spool's cursor write sends a
sample twice: the control plane drops the second copy by envelope id.
"""

from __future__ import annotations

import asyncio
import logging

from shared.mqtt import MqttSession, NotConnected
from shared.spool import Spool

from .metrics import EdgeMetrics

log = logging.getLogger(__name__)

RETRY_S = 0.5


class TelemetryOutbox:
    def __init__(self, spool: Spool, session: MqttSession, topic: str, metrics: EdgeMetrics) -> None:
        self.spool = spool
        self.session = session
        self.topic = topic
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._dropped_seen = 0

    async def open(self) -> None:
        await self.spool.open()
        await self._observe()

    async def close(self) -> None:
        await self.spool.close()

    async def put(self, payload: bytes) -> None:
        """Queue an encoded envelope durably; the sender publishes it when it can."""
        await self.spool.append(payload)
        await self._observe()
        self._wake.set()

    async def _observe(self) -> None:
        dropped = self.spool.dropped_records - self._dropped_seen
        if dropped > 0:
            self._dropped_seen += dropped
            self.metrics.telemetry_dropped.inc(dropped)
        self.metrics.telemetry_spool_bytes.set(await self.spool.backlog())

    async def _deliver(self, payload: bytes) -> None:
        await self.session.publish_encoded(self.topic, payload)
        self.metrics.telemetry_sent.inc()

    async def run(self) -> None:
        """Publish the spool's head in order whenever connected, until cancelled."""
        while True:
            await self.session.connected.wait()
            self._wake.clear()  # cleared before draining: a sample queued meanwhile wakes the next round
            try:
                sent = await self.spool.drain(self._deliver)
            except NotConnected as exc:
                log.info("telemetry waits on disk: %s", exc)
                await self._observe()
                await asyncio.sleep(RETRY_S)
                continue
            except OSError as exc:
                log.warning("telemetry spool unreadable: %s", exc)
                await asyncio.sleep(RETRY_S)
                continue
            if sent:
                await self._observe()
            await self._wake.wait()
