"""``nearcast edge ...``: the appliance daemon's commands."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from shared import config as cfg
from shared.errors import NearcastError
from shared.logs import setup_logging

from .config import ENV_PREFIX, EdgeConfig


@click.group()
def edge() -> None:
    """The edge appliance daemon."""


@edge.command("serve")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True,
              help="The appliance's TOML config file.")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def serve(config_path: Path, verbose: int) -> None:
    """Run the edge daemon until SIGTERM or SIGINT."""
    from .daemon import run

    setup_logging(max(verbose, 1))
    try:
        conf = cfg.load(EdgeConfig, config_path, env_prefix=ENV_PREFIX)
        asyncio.run(run(conf))
    except NearcastError as exc:
        raise click.ClickException(str(exc)) from None
