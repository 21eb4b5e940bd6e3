"""Process and event-loop gauges both daemons export on ``/metrics``.

- prometheus' process collector: ``process_resident_memory_bytes``, ``process_open_fds``,
  ``process_cpu_seconds_total``, ... (read from ``/proc/self`` at scrape time; absent elsewhere);
- ``nearcast_asyncio_tasks``: the tasks alive on the daemon's event loop, counted at scrape time.
  A count that only grows under steady load is a task leak; ``bench/soak.py`` watches it.

Both daemons register these on their own registry (no global state), so a test that builds several
daemons in one process gets one set per registry.
"""

from __future__ import annotations

import asyncio
import weakref

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector


class LoopTasks:
    """``len(asyncio.all_tasks())`` of the loop that last read it.

    A scrape runs on the daemon's loop, so the first read finds it; a read from another thread (or
    after the loop closed) reports the last loop seen, or 0 when there is none.
    """

    def __init__(self) -> None:
        self._loop: weakref.ref[asyncio.AbstractEventLoop] | None = None

    def __call__(self) -> float:
        loop: asyncio.AbstractEventLoop | None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            loop = self._loop() if self._loop is not None else None
        else:
            self._loop = weakref.ref(running)
            loop = running
        if loop is None or loop.is_closed():
            return 0.0
        return float(len(asyncio.all_tasks(loop)))


class RuntimeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.process = ProcessCollector(registry=registry)
        self.tasks = Gauge("nearcast_asyncio_tasks", "Tasks alive on the daemon's event loop (read at scrape)",
                           registry=registry)
        self.tasks.set_function(LoopTasks())
