"""``nearcast control ...`` (the daemon) and the operator commands that talk to the control API.

Operator commands read ``--api`` / ``$NEARCAST_API`` and ``$NEARCAST_TOKEN``; ``--json`` prints the
API's data as is; failures are one line and a non-zero exit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from shared import daemon_cli
from shared.errors import NearcastError

from .client import ApiClient
from .config import ENV_PREFIX, ControlConfig

api_option = click.option("--api", envvar="NEARCAST_API", default="http://127.0.0.1:8700", show_default=True,
                          help="Control API base URL (env NEARCAST_API).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _client(api: str) -> ApiClient:
    import os

    return ApiClient(api, os.environ.get("NEARCAST_TOKEN"))


def _emit(data: Any, as_json: bool, table: Any) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        table(data)


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except NearcastError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def control() -> None:
    """The central control plane daemon."""


@control.command("serve")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True,
              help="The control plane's TOML config file.")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def serve(config_path: Path, verbose: int) -> None:
    """Run the control plane until SIGTERM or SIGINT."""
    from .daemon import run

    daemon_cli.serve(ControlConfig, config_path, env_prefix=ENV_PREFIX, verbose=verbose, run=run)


@click.group()
def appliance() -> None:
    """Appliances: list, inspect, drain."""


def _appliance_table(data: dict[str, Any]) -> None:
    rows = data.get("appliances", [])
    if not rows:
        click.echo("no appliances")
        return
    click.echo(f"{'ID':<20} {'STATE':<10} {'LAST SEEN':>10}  URL")
    for a in rows:
        seen = "-" if a.get("last_seen_s_ago") is None else f"{a['last_seen_s_ago']:.0f}s ago"
        click.echo(f"{a['id']:<20} {a['state']:<10} {seen:>10}  {a.get('http_url', '')}")


@appliance.command("ls")
@api_option
@json_option
def appliance_ls(api: str, as_json: bool) -> None:
    """List appliances and their state."""
    _emit(_call(_client(api).get, "/v1/appliances"), as_json, _appliance_table)


@appliance.command("show")
@click.argument("appliance_id")
@api_option
@json_option
def appliance_show(appliance_id: str, api: str, as_json: bool) -> None:
    """Show one appliance."""
    data = _call(_client(api).get, f"/v1/appliances/{appliance_id}")
    _emit(data, as_json, lambda d: click.echo("\n".join(f"{k}: {v}" for k, v in d.items())))


@appliance.command("drain")
@click.argument("appliance_id")
@click.option("--undo", is_flag=True, help="Undrain: let the control plane steer new sessions to it again.")
@api_option
@json_option
def appliance_drain(appliance_id: str, undo: bool, api: str, as_json: bool) -> None:
    """Drain an appliance: it keeps serving existing sessions, new ones go elsewhere."""
    action = "undrain" if undo else "drain"
    data = _call(_client(api).post, f"/v1/appliances/{appliance_id}/{action}")
    _emit(data, as_json, lambda d: click.echo(f"{appliance_id}: {action} sent (command {d['command_id']})"))


@appliance.command("undrain")
@click.argument("appliance_id")
@api_option
@json_option
def appliance_undrain(appliance_id: str, api: str, as_json: bool) -> None:
    """Undo a drain."""
    data = _call(_client(api).post, f"/v1/appliances/{appliance_id}/undrain")
    _emit(data, as_json, lambda d: click.echo(f"{appliance_id}: undrain sent (command {d['command_id']})"))


def _operator_groups() -> list[click.Command]:
    from . import cli_ingest  # noqa: F401  (adds `title ingest|jobs|cancel` to cli_ops' title group)
    from .cli_ops import GROUPS  # imported late: cli_ops builds on this module's options
    from .cli_recs import catalog, events, experiment

    return [appliance, *GROUPS, catalog, events, experiment]


#: Operator command groups mounted at the top of ``nearcast``.
OPERATOR_GROUPS = _operator_groups()
