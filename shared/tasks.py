"""Named, owned background tasks.

``asyncio.create_task`` keeps only a weak reference to its task, so a task nobody holds can be
garbage-collected mid-flight, and an anonymous task is impossible to find in a dump.  Every
background task in nearcast goes through :class:`TaskGroup` (or :func:`spawn`), which names it,
keeps a strong reference until it finishes, logs a crash instead of losing it, and cancels
everything it owns on shutdown.  ruff bans the bare call (see ``pyproject.toml``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def spawn(coro: Coroutine[Any, Any, T], *, name: str, owner: set[asyncio.Task[Any]]) -> asyncio.Task[T]:
    """Start ``coro`` as a task called ``name`` and keep it in ``owner`` until it ends."""
    loop = asyncio.get_running_loop()
    task = loop.create_task(coro, name=name)
    owner.add(task)
    task.add_done_callback(owner.discard)
    task.add_done_callback(_log_crash)
    return task


def _log_crash(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("background task %r crashed", task.get_name(), exc_info=exc)


class TaskGroup:
    """The background tasks of one component: named, referenced, cancelled together.

    Unlike :class:`asyncio.TaskGroup`, a crashing member does not cancel its siblings: a daemon's
    telemetry loop dying must not take serving down with it.  Crashes are logged and counted.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self.crashes = 0

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        task = spawn(coro, name=f"{self.name}:{name}", owner=self._tasks)
        task.add_done_callback(self._count_crash)
        return task

    def _count_crash(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.crashes += 1

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    async def aclose(self, timeout: float = 5.0) -> None:
        """Cancel every task and wait (bounded) for them to finish."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                log.warning("task %r did not stop within %.1fs", task.get_name(), timeout)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    pass  # already logged by _log_crash
