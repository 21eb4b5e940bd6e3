"""Operator commands beyond ``appliance ls|show|drain``: tokens, audit, enrollment, titles, steering, fill.

Each command parses, makes one or two API calls through :class:`~control.client.ApiClient`, and
prints; ``--json`` prints the API's data unchanged.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import click

from .cli import _call, _client, _emit, api_option, appliance, control, json_option


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


# -- tokens and audit ----------------------------------------------------------------------------------
@click.group()
def token() -> None:
    """Operator tokens: create, list, revoke."""


@token.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["read", "admin"]), default="read", show_default=True)
@api_option
@json_option
def token_create(name: str, role: str, api: str, as_json: bool) -> None:
    """Create a token (shown once; only its hash is kept)."""
    data = _call(_client(api).post, "/v1/tokens", {"name": name, "role": role})
    _emit(data, as_json, lambda d: click.echo(d["token"]))


@token.command("ls")
@api_option
@json_option
def token_ls(api: str, as_json: bool) -> None:
    """List tokens."""
    def table(d: dict[str, Any]) -> None:
        for t in d["tokens"]:
            click.echo(f"{t['name']:<24} {t['role']:<6} {'revoked' if t['revoked'] else 'active'}")

    _emit(_call(_client(api).get, "/v1/tokens"), as_json, table)


@token.command("revoke")
@click.argument("name")
@api_option
def token_revoke(name: str, api: str) -> None:
    """Revoke a token."""
    _call(_client(api).request, "DELETE", f"/v1/tokens/{urllib.parse.quote(name, safe='')}")
    click.echo(f"{name}: revoked")


@click.command()
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@api_option
@json_option
def audit(limit: int, api: str, as_json: bool) -> None:
    """The audit log of operator writes, newest first."""
    def table(d: dict[str, Any]) -> None:
        for e in d["entries"]:
            click.echo(f"{e['id']:>6} {e['ts']:.0f} {e['actor']:<24} {e['action']:<22} {e['target']}")

    _emit(_call(_client(api).get, f"/v1/audit?limit={limit}"), as_json, table)


# -- appliances ----------------------------------------------------------------------------------------
def _meta_options(fn: Any) -> Any:
    for opt in reversed([
        click.option("--site", help="Site (point of presence)."),
        click.option("--region", help="Demand region (defaults to the site)."),
        click.option("--isp", help="Hosting ISP's name."),
        click.option("--asn", type=int, help="Hosting ISP's AS number."),
        click.option("--prefix", "prefixes", multiple=True, help="Announced client prefix (CIDR); repeat."),
        click.option("--lat", type=float, help="Latitude (degrees)."),
        click.option("--lon", type=float, help="Longitude (degrees)."),
        click.option("--disk-bytes", type=int, help="Disk budget for content."),
        click.option("--bandwidth-bps", type=int, help="Serving capacity."),
        click.option("--fill-window", help="HH:MM-HH:MM when the appliance may fill."),
        click.option("--load-threshold", type=float, help="Load at which steering stops sending clients."),
    ]):
        fn = opt(fn)
    return fn


def _meta(opts: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in opts.items() if v is not None and k != "prefixes"}
    if opts.get("prefixes"):
        out["prefixes"] = list(opts["prefixes"])
    return out


@appliance.command("enroll")
@click.argument("appliance_id")
@_meta_options
@click.option("--ttl", "ttl_s", type=float, help="Seconds the one-time token stays valid.")
@api_option
@json_option
def appliance_enroll(appliance_id: str, api: str, as_json: bool, ttl_s: float | None, **opts: Any) -> None:
    """Register an appliance and print its one-time enrollment token."""
    body = {"appliance_id": appliance_id, **_meta(opts), **({"ttl_s": ttl_s} if ttl_s else {})}
    data = _call(_client(api).post, "/v1/enrollments", body)
    _emit(data, as_json, lambda d: click.echo(d["token"]))


@appliance.command("set")
@click.argument("appliance_id")
@_meta_options
@api_option
@json_option
def appliance_set(appliance_id: str, api: str, as_json: bool, **opts: Any) -> None:
    """Change an appliance's metadata (only the options given)."""
    data = _call(_client(api).request, "PATCH", f"/v1/appliances/{appliance_id}", _meta(opts))
    _emit(data, as_json, lambda d: click.echo(f"{appliance_id}: updated"))


@appliance.command("rotate-credentials")
@click.argument("appliance_id")
@click.option("--force", is_flag=True, help="Start over even if a rotation is still waiting for the appliance.")
@api_option
@json_option
def appliance_rotate(appliance_id: str, force: bool, api: str, as_json: bool) -> None:
    """Give an appliance a new MQTT login without taking it offline; the old one is revoked once the
    appliance reconnected with the new one."""
    data = _call(_client(api).post, f"/v1/appliances/{urllib.parse.quote(appliance_id, safe='')}/rotate-credentials",
                 {"force": force})
    _emit(data, as_json, lambda d: click.echo(f"{appliance_id}: rotating to MQTT user {d['mqtt']['rotating_to']} "
                                              f"(command {d['command_id']})"))


@appliance.command("rm")
@click.argument("appliance_id")
@api_option
def appliance_rm(appliance_id: str, api: str) -> None:
    """Remove an appliance and its broker login."""
    _call(_client(api).request, "DELETE", f"/v1/appliances/{appliance_id}")
    click.echo(f"{appliance_id}: removed")


@control.command("mosquitto-config")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="The control plane's TOML config "
              "(for where it writes passwd and acl); defaults and the environment otherwise.")
@click.option("--port", default=1883, show_default=True, type=click.IntRange(1, 65535), help="Plain-text listener.")
@click.option("--bind", default="", help="Address the listeners bind to (all if empty).")
@click.option("--tls-port", default=0, type=click.IntRange(0, 65535), help="TLS listener (e.g. 8883); 0: none.")
@click.option("--tls-only", is_flag=True, help="Leave out the plain-text listener.")
@click.option("--cafile", type=click.Path(path_type=Path), help="CA chain the TLS listener presents.")
@click.option("--certfile", type=click.Path(path_type=Path), help="The broker's certificate (PEM).")
@click.option("--keyfile", type=click.Path(path_type=Path), help="The certificate's private key (PEM).")
@click.option("--pid-file", type=click.Path(path_type=Path), help="Where Mosquitto writes its pid (for "
              "broker.reload = \"pid:...\").")
def mosquitto_config(config_path: Path | None, port: int, bind: str, tls_port: int, tls_only: bool,
                     cafile: Path | None, certfile: Path | None, keyfile: Path | None, pid_file: Path | None) -> None:
    """Print a mosquitto.conf enforcing the passwd and ACL files this control plane writes."""
    from shared import config as cfg
    from shared.errors import NearcastError

    from .config import ENV_PREFIX, ControlConfig
    from .mosquitto import mosquitto_conf

    try:
        conf = cfg.load(ControlConfig, config_path, env_prefix=ENV_PREFIX)
        files = conf.broker_files_dir.absolute()
        click.echo(mosquitto_conf(passwd=files / "passwd", acl=files / "acl", port=port, bind=bind,
                                  tls_port=tls_port, cafile=cafile, certfile=certfile, keyfile=keyfile,
                                  tls_only=tls_only, pid_file=pid_file), nl=False)
    except NearcastError as exc:
        raise click.ClickException(str(exc)) from None


# -- titles --------------------------------------------------------------------------------------------
@click.group()
def title() -> None:
    """Titles on the origin: register, list, show."""


@title.command("register")
@click.argument("title_id")
@click.option("--released", type=float, help="Release time (Unix seconds); default now.")
@api_option
@json_option
def title_register(title_id: str, released: float | None, api: str, as_json: bool) -> None:
    """Register a title published on the origin and sign its file set."""
    body: dict[str, Any] = {"title_id": title_id, **({"released": released} if released is not None else {})}
    data = _call(_client(api).post, "/v1/titles", body)
    _emit(data, as_json, lambda d: click.echo(f"{d['title_id']}: {d['version']}, {d['size']} bytes"))


@title.command("ls")
@api_option
@json_option
def title_ls(api: str, as_json: bool) -> None:
    """List titles."""
    def table(d: dict[str, Any]) -> None:
        for t in d["titles"]:
            click.echo(f"{t['title_id']:<24} {t['version']:<6} {_gib(t['size']):>10} {'live' if t['live'] else '-'}")

    _emit(_call(_client(api).get, "/v1/titles"), as_json, table)


@title.command("show")
@click.argument("title_id")
@api_option
@json_option
def title_show(title_id: str, api: str, as_json: bool) -> None:
    """Show one title."""
    data = _call(_client(api).get, f"/v1/titles/{urllib.parse.quote(title_id, safe='')}")
    _emit(data, as_json, lambda d: click.echo("\n".join(f"{k}: {v}" for k, v in d.items())))


# -- steering ------------------------------------------------------------------------------------------
@click.command()
@click.option("--client-ip", required=True, help="The client address to steer.")
@click.option("--title", "title_id", required=True, help="The title to play.")
@click.option("--count", default=3, show_default=True, type=click.IntRange(1, 50))
@api_option
@json_option
def steer(client_ip: str, title_id: str, count: int, api: str, as_json: bool) -> None:
    """Show the ranked answer for a client and why every appliance was kept or dropped."""
    q = urllib.parse.urlencode({"client_ip": client_ip, "title": title_id, "count": count})
    data = _call(_client(api).get, f"/v1/steer?{q}")

    def table(d: dict[str, Any]) -> None:
        where = d["client_location"]
        loc = f"{where['lat']:.3f},{where['lon']:.3f} ({d['location_source']})" if where else "location unknown"
        click.echo(f"client {d['client_ip']} title {d['title_id']}: prefix {d['matched_prefix'] or 'none'}; {loc}")
        for v in d["ranked"]:
            click.echo(f"  #{v['rank']} {v['appliance_id']}: {v['reason']} - {v['detail']}")
        for v in d["dropped"]:
            click.echo(f"  -- {v['appliance_id']}: {v['reason']} - {v['detail']}")
        if not d["ranked"]:
            click.echo("  no appliance can serve this client now")
        if d.get("warning"):
            click.echo(f"warning: {d['warning']}")

    _emit(data, as_json, table)


# -- fill and telemetry --------------------------------------------------------------------------------
@click.group()
def fill() -> None:
    """Fill planning: preview or publish a plan, watch progress."""


@fill.command("plan")
@click.option("--publish", is_flag=True, help="Publish the plan as desired state (default: only show it).")
@api_option
@json_option
def fill_plan(publish: bool, api: str, as_json: bool) -> None:
    """Show what a plan would change and the offload it should reach."""
    client = _client(api)
    data = _call(client.post, "/v1/fill/plan") if publish else _call(client.get, "/v1/fill/plan")

    def table(d: dict[str, Any]) -> None:
        click.echo(f"to fill {_gib(d['bytes_to_fill'])}, to delete {_gib(d['bytes_to_delete'])}")
        for r in d["regions"]:
            click.echo(f"region {r['region']}: offload {r['offload_now']:.1%} -> {r['offload_planned']:.1%}, "
                       f"live titles {r['live_now']} -> {r['live_planned']}")
        for a in d["appliances"]:
            if a["skipped"]:
                click.echo(f"  {a['appliance_id']}: skipped ({a['skipped']})")
                continue
            click.echo(f"  {a['appliance_id']}: +{len(a['add'])} -{len(a['remove'])} "
                       f"({_gib(a['planned_bytes'])} of {_gib(a['usable_bytes'])})"
                       + (f" add {', '.join(a['add'][:5])}" if a["add"] else ""))
        if publish:
            click.echo(f"published to {', '.join(d['published']) or 'nobody (no change)'}")

    _emit(data, as_json, table)


@fill.command("status")
@api_option
@json_option
def fill_status(api: str, as_json: bool) -> None:
    """Fill progress per appliance, from its acks."""
    def table(d: dict[str, Any]) -> None:
        if not d["appliances"]:
            click.echo("no plan published yet")
        for a in d["appliances"]:
            progress = "-" if a["progress"] is None else f"{a['progress']:.0%}"
            click.echo(f"{a['appliance_id']:<20} gen {a['generation']:<5} {a['ack']:<9} {progress:>5} "
                       f"{a['titles_complete']}/{a['titles']} titles complete")

    _emit(_call(_client(api).get, "/v1/fill/status"), as_json, table)


@click.group()
def telemetry() -> None:
    """Telemetry reports."""


@telemetry.command("misses")
@click.option("--hours", default=24.0, show_default=True, type=click.FloatRange(0.01, 9600))
@api_option
@json_option
def telemetry_misses(hours: float, api: str, as_json: bool) -> None:
    """Misses by cause per site."""
    def table(d: dict[str, Any]) -> None:
        if not d["sites"]:
            click.echo("no misses")
        for site, causes in sorted(d["sites"].items()):
            click.echo(f"{site}: " + ", ".join(f"{c} {n:.0f}" for c, n in sorted(causes.items())))

    _emit(_call(_client(api).get, f"/v1/telemetry/misses?hours={hours}"), as_json, table)


GROUPS = [token, audit, title, steer, fill, telemetry]
