"""The ``nearcast`` console script: daemons, operator commands and the demo.

Thin by design: each command parses its options, builds the same object the daemons use, calls one
method and prints.  Every failure is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from control.cli import OPERATOR_GROUPS
from control.cli import control as control_group
from edge.cli import edge as edge_group
from shared.errors import NearcastError
from shared.logs import setup_logging

from . import __version__
from .abr.cli import client as client_group


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="nearcast")
def cli() -> None:
    """nearcast: video delivery from caches inside ISP networks, and the recommender that fills them."""


cli.add_command(edge_group)
cli.add_command(client_group)
cli.add_command(control_group)
for _group in OPERATOR_GROUPS:
    cli.add_command(_group)


@cli.group()
def model() -> None:
    """Recommendation models: evaluate and train offline; build, deploy and roll back edge re-rankers."""


@cli.group()
def recs() -> None:
    """Recommendations: batch top-K for data scientists; training and homepage rows on the control plane."""


def _mount_recs() -> None:
    from control.cli_models import COMMANDS as MODEL_COMMANDS
    from control.cli_recs import recs_commands
    from control.recs.cli import eval_command, offline_command, train_command

    model.add_command(eval_command)
    model.add_command(train_command)
    for command in MODEL_COMMANDS:
        model.add_command(command)
    recs.add_command(offline_command)
    for command in recs_commands():
        recs.add_command(command)


_mount_recs()


# -- config docs --------------------------------------------------------------------------------------
def _config_class(daemon: str) -> tuple[type[Any], str]:
    if daemon == "edge":
        from edge.config import ENV_PREFIX, EdgeConfig

        return EdgeConfig, ENV_PREFIX
    from control.config import ENV_PREFIX as CONTROL_PREFIX
    from control.config import ControlConfig

    return ControlConfig, CONTROL_PREFIX


@cli.group("config")
def config_group() -> None:
    """Config file documentation and templates."""


@config_group.command("template")
@click.argument("daemon", type=click.Choice(["edge", "control"]))
def config_template(daemon: str) -> None:
    """Print a commented config file with every setting at its default."""
    from shared.config import render_template

    cls, _ = _config_class(daemon)
    click.echo(render_template(cls, f"nearcast {daemon} configuration"), nl=False)


@config_group.command("docs")
@click.argument("daemon", type=click.Choice(["edge", "control"]))
def config_docs(daemon: str) -> None:
    """Print the settings reference (Markdown)."""
    from shared.config import render_markdown

    cls, prefix = _config_class(daemon)
    click.echo(render_markdown(cls, f"`{daemon}` settings", prefix), nl=False)


@config_group.command("check")
@click.argument("daemon", type=click.Choice(["edge", "control"]))
@click.argument("path", type=click.Path(path_type=Path))
def config_check(daemon: str, path: Path) -> None:
    """Validate a config file (and the environment overrides) without starting anything."""
    from shared import config as cfg

    cls, prefix = _config_class(daemon)
    try:
        cfg.load(cls, path, env_prefix=prefix)
    except NearcastError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{path}: ok")


# -- demo ---------------------------------------------------------------------------------------------
@cli.command()
@click.option("--port", default=8700, show_default=True, help="Control API port.")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None,
              help="Keep state here (reused by the next run); default a temporary folder.")
@click.option("--edges", default=2, show_default=True, type=click.IntRange(1, 8), help="Edge appliances to run.")
@click.option("--exit-after", type=float, default=None, hidden=True,
              help="Stop by itself after this many seconds once up (tests).")
@click.option("--no-titles", is_flag=True, help="Skip encoding and filling the sample titles.")
def demo(port: int, state_dir: Path | None, edges: int, exit_after: float | None, no_titles: bool) -> None:
    """Run a whole nearcast on this machine: broker, control plane and edge appliances."""
    from .demo import Demo

    setup_logging(0)
    code = asyncio.run(Demo(port=port, state_dir=state_dir, edges=edges, exit_after=exit_after,
                                  titles=not no_titles).run())
    sys.exit(code)


def main() -> None:
    cli(prog_name="nearcast")
