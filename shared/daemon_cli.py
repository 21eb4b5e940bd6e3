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

C = TypeVar("C")


def serve(config_cls: type[C], config_path: Path, *, env_prefix: str, verbose: int,
          run: Callable[[C], Coroutine[Any, Any, None]]) -> None:
    """Load the config (a one-line error naming file and key on failure) and run the daemon."""
    setup_logging(max(verbose, 1))
    try:
        conf = cfg.load(config_cls, config_path, env_prefix=env_prefix)
        asyncio.run(run(conf))
    except NearcastError as exc:
        raise click.ClickException(str(exc)) from None
