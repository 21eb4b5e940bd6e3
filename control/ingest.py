"""Telemetry ingest: validate each sample, feed liveness and demand at once, write to the store in batches.

The MQTT loop runs handlers one at a time, so the handler only validates and enqueues; a separate
task drains the queue into one transaction per batch (by size or age).  Writing sample by sample
would cap ingest at a few hundred per second; batched it keeps up with thousands.  When the store
falls behind, the bounded queue drops samples and counts them rather than growing without limit.

Appliances spool telemetry on disk and resend what the broker may not have acknowledged, so a sample
can arrive twice.  Ingest is idempotent by envelope id: the last ids of each appliance are remembered
here (so a redelivery never feeds demand, liveness or rollout gates twice) and the store ignores an id
it already holds (so a control-plane restart in between cannot double-count either).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import replace

from prometheus_client import CollectorRegistry, Counter, Gauge

from shared.errors import InvalidInput
from shared.ids import is_valid_id
from shared.messages import Telemetry

from .popularity import DemandModel, DemandSample
from .registry import RegistryView
from .store import Store, TelemetryRow

log = logging.getLogger(__name__)

# Prometheus-style names with an optional flattened label set, as appliances export them:
# ``nearcast_edge_cache_misses_total{cause=not_held}``.
_NAME_RE = re.compile(r"[A-Za-z_:][A-Za-z0-9_:.]{0,127}(\{[A-Za-z0-9_=,.:/ +-]{0,120}\})?")
_MISS_RE = re.compile(r"(?:miss\.([A-Za-z0-9_]+)|nearcast_edge_cache_misses_total\{cause=([A-Za-z0-9_]+)\})")
MAX_METRICS = 2048
MAX_TITLES = 10_000
#: ids remembered per appliance; a redelivery repeats at most one spool batch (100 samples)
RECENT_IDS = 256


def _check_values(values: Mapping[str, float], what: str, *, non_negative: bool) -> None:
    if len(values) > MAX_METRICS:
        raise InvalidInput(f"telemetry has {len(values)} {what}; at most {MAX_METRICS}")
    for name, value in values.items():
        if not _NAME_RE.fullmatch(name):
            raise InvalidInput(f"telemetry {what[:-1]} name {name[:64]!r} is not a metric name")
        if not math.isfinite(value) or (non_negative and value < 0):
            raise InvalidInput(f"telemetry {what[:-1]} {name} = {value!r} is out of range")


def validate(appliance_id: str, sample: Telemetry, ts: float, msg_id: str = "") -> TelemetryRow:
    """A sample as stored, or :class:`InvalidInput` naming what is wrong with it."""
    if sample.seq < 0 or not math.isfinite(sample.interval_s) or not 0 < sample.interval_s <= 86_400:
        raise InvalidInput("telemetry seq must be >= 0 and interval_s in (0, 86400]")
    _check_values(sample.counters, "counters", non_negative=True)
    _check_values(sample.gauges, "gauges", non_negative=False)
    if len(sample.titles) > MAX_TITLES:
        raise InvalidInput(f"telemetry names {len(sample.titles)} titles; at most {MAX_TITLES}")
    titles: dict[str, tuple[int, int]] = {}
    for title_id, d in sample.titles.items():
        if not is_valid_id(title_id) or d.requests < 0 or d.bytes < 0 or d.bytes > 2**53:
            raise InvalidInput(f"telemetry demand for {title_id[:64]!r} is invalid")
        titles[title_id] = (d.requests, d.bytes)
    return TelemetryRow(appliance_id, ts, sample.seq, sample.interval_s, dict(sample.counters),
                        dict(sample.gauges), titles, msg_id)


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.samples = Counter("nearcast_control_telemetry_samples_total", "Telemetry samples by outcome",
                               ["result"], registry=registry)
        self.batches = Counter("nearcast_control_telemetry_batches_total", "Telemetry write transactions",
                               registry=registry)
        self.queue = Gauge("nearcast_control_telemetry_queue", "Telemetry samples waiting to be written",
                           registry=registry)


class TelemetryIngest:
    def __init__(self, store: Store, registry: RegistryView, demand: DemandModel, metrics: IngestMetrics, *,
                 batch_max: int = 2000, flush_interval_s: float = 0.2, queue_max: int = 100_000) -> None:
        self.store = store
        self.registry = registry
        self.demand = demand
        self.metrics = metrics
        self.batch_max = batch_max
        self.flush_interval_s = flush_interval_s
        self._queue: asyncio.Queue[TelemetryRow] = asyncio.Queue(queue_max)
        self.written = 0
        self._last: dict[str, dict[str, float]] = {}
        self._recent: dict[str, OrderedDict[str, None]] = {}

    def _deltas(self, row: TelemetryRow) -> TelemetryRow:
        """Counters arrive cumulative (Prometheus semantics); rollups need what happened since the last sample.

        A counter lower than before means the appliance restarted, so its value is the delta.  The
        first sample heard from an appliance is only a baseline unless it is the appliance's first
        (``seq`` 1), whose counters started from zero.
        """
        previous = self._last.get(row.appliance_id)
        self._last[row.appliance_id] = dict(row.counters)
        if previous is None:
            if row.seq <= 1:
                return row
            return replace(row, counters={k: 0.0 for k in row.counters})
        deltas = {k: (v - previous[k] if k in previous and v >= previous[k] else v) for k, v in row.counters.items()}
        return replace(row, counters=deltas)

    def _seen(self, appliance_id: str, msg_id: str) -> bool:
        """Whether ``msg_id`` was heard from this appliance lately; remembers it if not."""
        if not msg_id:
            return False
        recent = self._recent.setdefault(appliance_id, OrderedDict())
        if msg_id in recent:
            return True
        recent[msg_id] = None
        while len(recent) > RECENT_IDS:
            recent.popitem(last=False)
        return False

    def submit(self, appliance_id: str, sample: Telemetry, ts: float, msg_id: str = "") -> TelemetryRow | None:
        """Validate and enqueue; raises :class:`InvalidInput` for a bad sample (the MQTT loop counts it).

        Returns the sample with its counters as deltas, for consumers that judge intervals (rollout gates),
        even when the store's queue is full and the sample is dropped from storage; None for a
        redelivered sample (same ``msg_id``), which is counted and otherwise ignored.
        """
        try:
            row = validate(appliance_id, sample, ts, msg_id)
        except InvalidInput:
            self.metrics.samples.labels("rejected").inc()
            raise
        if self._seen(appliance_id, msg_id):
            self.metrics.samples.labels("duplicate").inc()
            return None
        row = self._deltas(row)
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            self.metrics.samples.labels("dropped").inc()
            return row
        self.metrics.samples.labels("accepted").inc()
        self._observe_demand(row)
        return row

    def _observe_demand(self, row: TelemetryRow) -> None:
        record = self.registry.appliances.get(row.appliance_id)
        if record is None or not row.titles:
            return
        samples = []
        for title_id, (_, nbytes) in row.titles.items():
            size = self.registry.title_sizes.get(title_id)
            if size:
                samples.append(DemandSample.from_bytes(record.meta.region, title_id, nbytes, size, row.ts))
        if samples:
            try:
                self.demand.observe(samples, time.time())
            except InvalidInput as exc:
                log.warning("demand from %s not counted: %s", row.appliance_id, exc)

    async def run(self) -> None:
        """Drain the queue into the store until cancelled; a failing batch is logged and dropped.

        After the first sample of a batch arrives the loop waits the flush interval once (unless a
        full batch is already queued) and then takes everything queued: no per-sample timers.
        """
        while True:
            batch = [await self._queue.get()]
            if self._queue.qsize() < self.batch_max:
                await asyncio.sleep(self.flush_interval_s)
            while len(batch) < self.batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self.metrics.queue.set(self._queue.qsize())
            try:
                written = await self.store.ingest_telemetry(batch)
                self.written += written
                if written < len(batch):
                    self.metrics.samples.labels("duplicate").inc(len(batch) - written)
                self.metrics.batches.inc()
            except Exception:
                self.metrics.samples.labels("failed").inc(len(batch))
                log.exception("could not write %d telemetry samples", len(batch))

    def pending(self) -> int:
        return self._queue.qsize()


def misses_by_site(rollups: list[tuple[str, str, float]], sites: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """``(appliance, counter name, total)`` rows → misses per cause per site.

    Miss counters are ``nearcast_edge_cache_misses_total{cause=...}`` (what the edge exports) or ``miss.<cause>``.
    """
    out: dict[str, dict[str, float]] = {}
    for appliance_id, name, total in rollups:
        m = _MISS_RE.fullmatch(name)
        if m is None:
            continue
        site = sites.get(appliance_id, "unknown")
        cause = m.group(1) or m.group(2)
        out.setdefault(site, {})[cause] = out.get(site, {}).get(cause, 0.0) + total
    return out
