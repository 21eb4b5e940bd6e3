"""Telemetry that survives the broker going away: every sample goes to disk first, then to the broker.

A sample is encoded into its envelope once (so its id never changes), appended to a
:class:`~shared.spool.Spool` (fsynced) and only then published; the spool advances past it once the
broker acknowledged the QoS 1 publish.  While the broker is unreachable samples pile up on disk within
the spool's byte budget (the oldest are dropped and counted when it is full); after a reconnect they
drain in order.  A crash between the broker's acknowledgement and the spool's cursor write sends a
sample twice: the control plane drops the second copy by envelope id.
"""

from __future__ import annotations

from shared.mqtt import MqttSession
from shared.outbox import Outbox
from shared.spool import Spool

from .metrics import EdgeMetrics


class TelemetryOutbox(Outbox):
    what = "telemetry"

    def __init__(self, spool: Spool, session: MqttSession, topic: str, metrics: EdgeMetrics) -> None:
        super().__init__(spool, session)
        self.topic = topic
        self.metrics = metrics

    async def deliver(self, record: bytes) -> None:
        await self.session.publish_encoded(self.topic, record)
        self.metrics.telemetry_sent.inc()

    def on_dropped(self, count: int) -> None:
        self.metrics.telemetry_dropped.inc(count)

    def on_backlog(self, nbytes: int) -> None:
        self.metrics.telemetry_spool_bytes.set(nbytes)
