from __future__ import annotations

import asyncio
import gc

import pytest

from shared.tasks import TaskGroup


async def test_tasks_are_named_referenced_and_cancelled() -> None:
    tg = TaskGroup("comp")
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = tg.spawn(forever(), name="loop")
    del task
    gc.collect()  # a strong reference is kept: the task survives
    await started.wait()
    (only,) = list(tg)
    assert only.get_name() == "comp:loop" and not only.done()
    await tg.aclose()
    assert only.cancelled() and len(tg) == 0


async def test_a_crash_is_logged_and_counted_not_propagated(caplog: pytest.LogCaptureFixture) -> None:
    tg = TaskGroup("comp")

    async def boom() -> None:
        raise RuntimeError("kaput")

    async def fine() -> int:
        await asyncio.sleep(0.01)
        return 1

    t1 = tg.spawn(boom(), name="boom")
    t2 = tg.spawn(fine(), name="fine")
    await asyncio.wait([t1, t2])
    assert tg.crashes == 1 and t2.result() == 1
    assert "comp:boom" in caplog.text and "kaput" in caplog.text
    await tg.aclose()
