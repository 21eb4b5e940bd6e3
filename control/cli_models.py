"""``nearcast model build|ls|deploy|rollback|status``: edge model versions and their rollout.

Thin shells over the control API (``/v1/models``, ``/v1/deployment``).  ``deploy --wait`` follows the
deployment until it completes or rolls back, printing each wave as it goes, and exits non-zero on a
rollback so scripts can chain on it.
"""

from __future__ import annotations

import math
import re
import time
import urllib.parse
from typing import Any

import click

from .cli import _call, _client, _emit, api_option, json_option

_DURATION = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,6})?)(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """``500ms``, ``60s``, ``2m``, ``1h`` or plain seconds."""
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise click.BadParameter(f"must look like 500ms, 60s, 2m or 1h, not {text[:40]!r}")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def parse_waves(text: str) -> list[float]:
    """``5,25,100`` → percentages; the control plane checks that they rise and end at 100."""
    try:
        waves = [float(p.strip().rstrip("%")) for p in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"must be percentages like 5,25,100, not {text[:60]!r}") from None
    if not 1 <= len(waves) <= 20 or not all(math.isfinite(w) for w in waves):
        raise click.BadParameter("1 to 20 finite percentages, like 5,25,100")
    return waves


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    return None if value is None else parse_duration(value)


def _waves(ctx: click.Context, param: click.Parameter, value: str) -> list[float]:
    return parse_waves(value)


def _version_line(v: dict[str, Any], active: str | None) -> str:
    meta = v.get("metadata", {})
    m = meta.get("offline_metrics", {})
    window = meta.get("training_window", {})
    source = "synthetic" if str(meta.get("notes", "")).startswith("SYNTHETIC") else "log"
    mark = "*" if v["version"] == active else " "
    return (f"{mark} {v['version']:<24} {v['size'] / 1024:>8.1f} KiB  ndcg@10 {m.get('ndcg@10', 0):.3f} "
            f"(control order {m.get('ndcg@10_control_order', 0):.3f})  {source}  "
            f"{window.get('start', '?')[:10]}..{window.get('end', '?')[:10]}")


@click.command("build")
@click.option("--version", "version", default=None, help="Version id (default edge-YYYYMMDD-HHMMSS).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Seed of the training split (and of the synthetic log when there is no impression log).")
@click.option("--source", type=click.Choice(["auto", "log", "synthetic"]), default="auto", show_default=True,
              help="auto: the impression log when it is big enough, else a synthetic log (said in the metadata).")
@api_option
@json_option
def model_build(version: str | None, seed: int, source: str, api: str, as_json: bool) -> None:
    """Train the edge re-ranker on the control plane and seal it as a signed bundle version."""
    body: dict[str, Any] = {"seed": seed, "source": source, **({"version": version} if version else {})}
    client = _client(api)
    client.timeout = 600.0
    data = _call(client.post, "/v1/models", body)

    def show(d: dict[str, Any]) -> None:
        click.echo(_version_line(d, None).strip())
        click.echo(f"  sha256 {d['sha256']}  {d['url']}")
        if d["metadata"].get("notes"):
            click.echo(f"  {d['metadata']['notes']}")

    _emit(data, as_json, show)


@click.command("ls")
@api_option
@json_option
def model_ls(api: str, as_json: bool) -> None:
    """Edge model versions built on the control plane (* marks the version the fleet runs)."""
    def table(d: dict[str, Any]) -> None:
        if not d["versions"]:
            click.echo("no model versions yet: nearcast model build")
        for v in d["versions"]:
            click.echo(_version_line(v, d["active"]))

    _emit(_call(_client(api).get, "/v1/models"), as_json, table)


def _status_table(d: dict[str, Any]) -> None:
    dep = d["deployment"]
    if dep is None:
        click.echo(f"no deployment yet; active version: {d['active'] or 'none'}")
    else:
        waves = ",".join(f"{w:g}" for w in dep["waves"])
        click.echo(f"deployment {dep['id']}: {dep['previous'] or 'none'} -> {dep['version']}  {dep['phase']}  "
                   f"wave {dep['wave']}/{len(dep['waves'])} ({waves}%, bake {dep['bake_s']:g}s)")
        if dep["reason"]:
            click.echo(f"  reason: {dep['reason']}")
        new, base = dep["health"]["new"], dep["health"]["baseline"]
        click.echo(f"  health: new {new['requests']} req, errors {new['error_rate']:.2%}, p99 {new['p99_ms']:.1f} ms;"
                   f" baseline {base['requests']} req, errors {base['error_rate']:.2%}, p99 {base['p99_ms']:.1f} ms")
    click.echo(f"{'APPLIANCE':<20} {'DESIRED':<16} {'ACTIVE':<16} {'WAVE':>4} {'ONLINE':<6}  LAST ACK")
    for a in d["appliances"]:
        ack = a["last_ack"]
        last = f"{ack['status']} {time.time() - ack['ts']:.0f}s ago" if ack else "-"
        if a["failure"]:
            last += f" ({a['failure'][:60]})"
        click.echo(f"{a['appliance_id']:<20} {a['desired'] or '-':<16} {a['active'] or '-':<16} "
                   f"{a['wave'] or '-':>4} {'yes' if a['online'] else 'no':<6}  {last}")


@click.command("status")
@api_option
@json_option
def model_status(api: str, as_json: bool) -> None:
    """The latest deployment and, per appliance, the desired and active version and the last ack."""
    _emit(_call(_client(api).get, "/v1/deployment"), as_json, _status_table)


@click.command("deploy")
@click.argument("version")
@click.option("--waves", default="5,25,100", show_default=True, callback=_waves,
              help="Cumulative percentages of the fleet per wave, ending at 100.")
@click.option("--bake", default="60s", show_default=True, callback=_duration,
              help="How long each wave runs healthy before the next (500ms, 60s, 2m, 1h).")
@click.option("--min-requests", type=click.IntRange(1, 10**9), default=None,
              help="Re-rank requests a wave must serve before it is judged (default 200).")
@click.option("--ack-timeout", default=None, callback=_duration,
              help="Time for a wave's online appliances to report the new version (default 300s).")
@click.option("--max-error-increase", type=click.FloatRange(0, 1), default=None,
              help="Re-rank error rate allowed above the baseline (default 0.005).")
@click.option("--max-p99-ratio", type=click.FloatRange(1, 1e6), default=None,
              help="Re-rank p99 allowed as a multiple of the baseline's, plus 2 ms (default 1.25).")
@click.option("--wait", is_flag=True, help="Follow the deployment until it completes or rolls back.")
@click.option("--timeout", default="1h", callback=_duration, show_default=True, help="With --wait: give up after.")
@api_option
@json_option
def model_deploy(version: str, waves: list[float], bake: float, min_requests: int | None, ack_timeout: float | None,
                 max_error_increase: float | None, max_p99_ratio: float | None, wait: bool, timeout: float,
                 api: str, as_json: bool) -> None:
    """Deploy VERSION to the edges in waves; a wave that breaches its health gates rolls back by itself."""
    gates = {k: v for k, v in (("min_requests", min_requests), ("ack_timeout_s", ack_timeout),
                               ("max_error_increase", max_error_increase), ("max_p99_ratio", max_p99_ratio))
             if v is not None}
    body: dict[str, Any] = {"version": version, "waves": waves, "bake_s": bake, **({"gates": gates} if gates else {})}
    client = _client(api)
    data = _call(client.post, "/v1/deployment", body)
    dep = data["deployment"]
    if not wait:
        _emit(data, as_json, lambda d: click.echo(f"deployment {dep['id']}: {version} in waves "
                                                  f"{','.join(f'{w:g}' for w in dep['waves'])}%, "
                                                  f"wave 1 on {dep['wave_members']} appliance(s)"))
        return
    seen, dep_id = 0, dep["id"]
    deadline = time.monotonic() + timeout
    while True:
        history = dep["history"]
        if not as_json:
            for e in history[seen:]:
                click.echo(f"wave {e['wave'] + 1}: {e['kind']}" + (f" - {e['detail']}" if e["detail"] else ""))
        seen = len(history)
        if dep["phase"] != "baking" or time.monotonic() > deadline:
            break
        time.sleep(0.25)
        data = _call(client.get, "/v1/deployment")
        dep = data["deployment"]
        if dep["id"] != dep_id:
            raise click.ClickException(f"deployment {dep_id} was replaced by {dep['id']}")
    if as_json:
        _emit(data, True, None)
    if dep["phase"] == "rolled_back":
        raise click.ClickException(f"deployment {dep['id']} rolled back: {dep['reason']}")
    if dep["phase"] != "completed":
        raise click.ClickException(f"deployment {dep['id']} still in wave {dep['wave']} after {timeout:g}s")


@click.command("rollback")
@click.option("--reason", default="", help="Why (kept in the audit log).")
@api_option
@json_option
def model_rollback(reason: str, api: str, as_json: bool) -> None:
    """Roll the latest deployment back: every appliance returns to the previous version (kept on disk)."""
    data = _call(_client(api).post, "/v1/deployment/rollback", {"reason": reason} if reason else {})
    dep = data["deployment"]
    _emit(data, as_json, lambda d: click.echo(f"deployment {dep['id']}: rolling back to {dep['previous']}"))


@click.command("show")
@click.argument("version")
@api_option
@json_option
def model_show(version: str, api: str, as_json: bool) -> None:
    """One model version: descriptor and bundle metadata (metrics, training window, notes)."""
    data = _call(_client(api).get, f"/v1/models/{urllib.parse.quote(version, safe='')}")
    _emit(data, as_json, lambda d: click.echo("\n".join(f"{k}: {v}" for k, v in d.items())))


COMMANDS = [model_build, model_ls, model_show, model_deploy, model_rollback, model_status]
