"""The one way a daemon's ``serve`` command starts: logging, config from file + environment, run."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from . import config as cfg
from .errors import NearcastError
from .logs import setup_logging
from .loops import loop_factory

C = TypeVar("C")


def serve(config_cls: type[C], config_path: Path, *, env_prefix: str, verbose: int,
          run: Callable[[C], Coroutine[Any, Any, None]], event_loop: Callable[[C], str] | None = None) -> None:
    """Load the config (a one-line error naming file and key on failure) and run the daemon
    (on the event loop ``event_loop`` names from the config; asyncio's own without it)."""
    setup_logging(max(verbose, 1))
    try:
        conf = cfg.load(config_cls, config_path, env_prefix=env_prefix)
        factory = loop_factory(event_loop(conf)) if event_loop is not None else None
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(run(conf))
    except NearcastError as exc:
        raise click.ClickException(str(exc)) from None
