"""Which event loop a daemon runs on (``[http] event_loop``): uvloop or the standard library's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

EVENT_LOOPS = ("uvloop", "asyncio")


def event_loop_check(value: str) -> str | None:
    return None if value in EVENT_LOOPS else f"must be one of {', '.join(EVENT_LOOPS)}"


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop a daemon runs on: ``uvloop`` (libuv, its I/O callbacks in C) or the standard
    library's selector loop (``None``: asyncio's default)."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    if name == "asyncio":
        return None
    raise ValueError(f"unknown event loop {name!r}")
