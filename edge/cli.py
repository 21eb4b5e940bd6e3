"""``nearcast edge ...``: the appliance daemon's commands."""

from __future__ import annotations

from pathlib import Path

import click

from shared import daemon_cli

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

    daemon_cli.serve(EdgeConfig, config_path, env_prefix=ENV_PREFIX, verbose=verbose, run=run,
                     event_loop=lambda conf: conf.http.event_loop)
