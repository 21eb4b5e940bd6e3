"""The process and event-loop gauges both daemons export (``shared.runtime_metrics``)."""

from __future__ import annotations

import asyncio
import os
import threading

from prometheus_client import CollectorRegistry

from control.metrics import ControlMetrics
from edge.metrics import EdgeMetrics
from shared.runtime_metrics import LoopTasks, RuntimeMetrics
from shared.tasks import TaskGroup


def _values(registry: CollectorRegistry) -> dict[str, float]:
    return {s.name: s.value for family in registry.collect() for s in family.samples}


def test_both_daemons_registries_export_memory_fds_and_tasks() -> None:
    for registry in (ControlMetrics().registry, EdgeMetrics().registry):
        values = _values(registry)
        for name in ("process_resident_memory_bytes", "process_open_fds", "nearcast_asyncio_tasks"):
            assert name in values, name
        assert values["process_resident_memory_bytes"] > 0
        assert values["process_open_fds"] > 0


async def test_task_gauge_counts_the_loops_tasks_at_scrape_time() -> None:
    registry = CollectorRegistry()
    RuntimeMetrics(registry)
    gate = asyncio.Event()
    group = TaskGroup("test")
    for i in range(5):
        group.spawn(gate.wait(), name=f"t{i}")
    try:
        assert _values(registry)["nearcast_asyncio_tasks"] == len(asyncio.all_tasks())
        assert len(asyncio.all_tasks()) >= 6
    finally:
        gate.set()
        await asyncio.gather(*group)
    assert _values(registry)["nearcast_asyncio_tasks"] == len(asyncio.all_tasks())


async def test_task_gauge_read_from_another_thread_reports_the_last_loop_seen() -> None:
    count = LoopTasks()
    assert count() == len(asyncio.all_tasks())  # seen on the loop
    gate = asyncio.Event()
    group = TaskGroup("test")
    extra = group.spawn(gate.wait(), name="extra")
    await asyncio.sleep(0)
    seen: list[float] = []
    thread = threading.Thread(target=lambda: seen.append(count()))
    thread.start()
    thread.join()
    try:
        assert seen == [float(len(asyncio.all_tasks()))]
    finally:
        gate.set()
        await extra


def test_task_gauge_without_a_loop_is_zero() -> None:
    count = LoopTasks()
    assert count() == 0.0  # never read on a loop

    async def read() -> float:
        return count()

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(read()) >= 1.0  # at least the task reading it
    finally:
        loop.close()
    assert count() == 0.0  # the loop it last saw is closed


def test_open_fds_follow_this_process() -> None:
    registry = CollectorRegistry()
    RuntimeMetrics(registry)
    before = _values(registry)["process_open_fds"]
    files = [open(os.devnull) for _ in range(20)]  # noqa: SIM115
    try:
        assert _values(registry)["process_open_fds"] == before + 20
    finally:
        for f in files:
            f.close()
