"""Operator and data-scientist commands for recommendations: ``catalog``, ``events`` and ``recs``.

``catalog load|ls|show`` manage title metadata; ``events post|export`` feed the log from a file and
take it out in the formats ``nearcast model eval`` reads; ``recs train|status|home`` run the training
job on the control plane and show what a profile's homepage rows are.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from shared.errors import InvalidInput

from . import catalog as catalog_mod
from .cli import _call, _client, _emit, api_option, json_option
from .client import ApiError

EVENT_BATCH = 500
CATALOG_BATCH = 1000


@click.group("catalog")
def catalog() -> None:
    """Title metadata: genres, cast, directors, year, tags, description, artwork."""


@catalog.command("load")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@api_option
def catalog_load(path: Path, api: str) -> None:
    """Merge a catalog file: CSV (item,title,genres[,tags,cast,directors,year,description]) or JSON lines."""
    try:
        entries = catalog_mod.read_file(path)
    except InvalidInput as exc:
        raise click.ClickException(str(exc)) from None
    client, changed = _client(api), 0
    for start in range(0, len(entries), CATALOG_BATCH):
        docs = [{"title_id": t, **{k: list(v) if isinstance(v, tuple) else v for k, v in f.items()}}
                for t, f in entries[start:start + CATALOG_BATCH]]
        changed += _call(client.request, "PUT", "/v1/catalog", {"titles": docs})["changed"]
    click.echo(f"{len(entries)} title(s) sent, {changed} changed")


@catalog.command("ls")
@api_option
@json_option
def catalog_ls(api: str, as_json: bool) -> None:
    """Every catalog entry."""
    def table(d: dict[str, Any]) -> None:
        for t in d["titles"]:
            year = t["year"] or ""
            click.echo(f"{t['title_id']:<24} {year!s:<5} {'|'.join(t['genres'])[:30]:<30} {t['name'][:40]}")

    _emit(_call(_client(api).get, "/v1/catalog"), as_json, table)


@catalog.command("show")
@click.argument("title_id")
@api_option
@json_option
def catalog_show(title_id: str, api: str, as_json: bool) -> None:
    """One title's metadata."""
    def table(t: dict[str, Any]) -> None:
        for key, value in t.items():
            click.echo(f"{key:<12} {', '.join(value) if isinstance(value, list) else value}")

    _emit(_call(_client(api).get, f"/v1/catalog/{title_id}"), as_json, table)


@click.group("events")
def events() -> None:
    """Viewing events: post a file of them, export the log for offline evaluation."""


def _read_events(path: Path) -> list[Any]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    try:
        if text.lstrip().startswith("["):
            docs = json.loads(text)
        else:
            docs = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (ValueError, RecursionError):
        raise click.ClickException(f"{path}: expected JSON lines of events (or one JSON array)") from None
    if not isinstance(docs, list) or not docs:
        raise click.ClickException(f"{path}: no events")
    return docs


@events.command("post")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@api_option
@json_option
def events_post(path: Path, api: str, as_json: bool) -> None:
    """Send events from a JSON-lines file in batches; rejected ones are listed with their line."""
    docs = _read_events(path)
    client = _client(api)
    total: dict[str, Any] = {"accepted": 0, "duplicates": 0, "rejected": []}
    for start in range(0, len(docs), EVENT_BATCH):
        batch = docs[start:start + EVENT_BATCH]
        try:
            result = client.post("/v1/events", {"events": batch})
        except ApiError as exc:
            if exc.status != 400:
                raise click.ClickException(str(exc)) from None
            result = {"accepted": 0, "duplicates": 0, "rejected": [{"index": i, "error": str(exc)}
                                                                    for i in range(len(batch))]}
        total["accepted"] += result["accepted"]
        total["duplicates"] += result["duplicates"]
        total["rejected"] += [{"line": start + r["index"] + 1, "error": r["error"]} for r in result["rejected"]]

    def table(d: dict[str, Any]) -> None:
        click.echo(f"{d['accepted']} accepted, {d['duplicates']} already known, {len(d['rejected'])} rejected")
        for r in d["rejected"][:20]:
            click.echo(f"  line {r['line']}: {r['error']}")

    _emit(total, as_json, table)
    if total["rejected"] and not total["accepted"] and not total["duplicates"]:
        raise SystemExit(1)


@events.command("export")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Directory for interactions.csv and catalog.csv (what `nearcast model eval --data` reads).")
@api_option
def events_export(out_dir: Path, api: str) -> None:
    """Export the event log: implicit ratings plus the catalog (for `model eval --data`), and the artwork
    choices with their plays (for `model eval --policy`)."""
    client = _client(api)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("interactions.csv", "catalog.csv", "choices.csv", "plays.csv"):
        try:
            text = client.request("GET", f"/v1/recs/export/{name}", text=True)
        except ApiError as exc:
            raise click.ClickException(str(exc)) from None
        (out_dir / name).write_text(text)
    rows = (out_dir / "interactions.csv").read_text().count("\n") - 1
    click.echo(f"wrote {rows} interaction(s) and the catalog to {out_dir}")


def recs_commands() -> list[click.Command]:
    """``recs train|status|home``, mounted on the ``nearcast recs`` group beside ``offline``."""
    return [recs_train, recs_status, recs_home]


@click.command("train")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the job until it ends.")
@api_option
@json_option
def recs_train(wait: bool, api: str, as_json: bool) -> None:
    """Train the recommendation pipeline on the control plane's event log and serve it."""
    client = _client(api)
    job = _call(client.post, "/v1/recs/train")
    shown = 0
    while wait and job["state"] == "running":
        time.sleep(1.0)
        status = _call(client.get, "/v1/recs")
        job = status["job"]
        if not as_json:
            for line in job["log"][shown:] if len(job["log"]) > shown else []:
                click.echo(f"  {line}", err=True)
            shown = len(job["log"])
    _emit(job, as_json, lambda j: click.echo(
        f"training {j['job_id']}: {j['state']}" + (f", serving {j['version']}" if j["version"] else "")
        + (f" ({j['error']})" if j["error"] else "")))
    if job["state"] == "failed":
        raise SystemExit(1)


@click.command("status")
@api_option
@json_option
def recs_status(api: str, as_json: bool) -> None:
    """The serving model, the last training job and the size of the event log."""
    def table(d: dict[str, Any]) -> None:
        click.echo(f"model:  {d['model_version'] or 'none (rows fall back to trending)'}")
        click.echo(f"events: {d['events']}")
        job = d["job"]
        if job:
            click.echo(f"last training: {job['job_id']} {job['state']} {job['error'] or ''}".rstrip())

    _emit(_call(_client(api).get, "/v1/recs"), as_json, table)


@click.command("home")
@click.argument("profile_id")
@api_option
@json_option
def recs_home(profile_id: str, api: str, as_json: bool) -> None:
    """A profile's candidate rows as the control plane hands them to the edge."""
    def table(d: dict[str, Any]) -> None:
        for row in d["rows"]:
            titles = ", ".join(it["title_id"] for it in row["items"][:8])
            more = f" (+{len(row['items']) - 8})" if len(row["items"]) > 8 else ""
            click.echo(f"{row['title']:<36} {titles}{more}")

    _emit(_call(_client(api).get, f"/v1/profiles/{profile_id}/home"), as_json, table)


@click.group("experiment")
def experiment() -> None:
    """A/B experiments on the homepage rows: create, list, report, stop."""


def _cell(spec: str) -> dict[str, Any]:
    """``NAME=WEIGHT[,policy=P][,model=V]``."""
    head, *opts = spec.split(",")
    name, _, weight = head.partition("=")
    cell: dict[str, Any] = {"name": name.strip()}
    try:
        cell["weight"] = float(weight) if weight else 1.0
    except ValueError:
        raise click.BadParameter(f"{spec!r}: weight must be a number") from None
    for opt in opts:
        key, _, value = opt.partition("=")
        if key.strip() == "policy":
            cell["policy"] = value.strip()
        elif key.strip() == "model":
            cell["model_version"] = value.strip()
        else:
            raise click.BadParameter(f"{spec!r}: options are policy=... and model=...")
    return cell


@experiment.command("create")
@click.argument("experiment_id")
@click.option("--cell", "cells", multiple=True, required=True,
              help="NAME=WEIGHT[,policy=model|trending][,model=VERSION]; repeat for each cell (the first is the "
                   "control unless --control says otherwise).")
@click.option("--control", "control_cell", default=None, help="The control cell's name.")
@api_option
@json_option
def experiment_create(experiment_id: str, cells: tuple[str, ...], control_cell: str | None, api: str,
                      as_json: bool) -> None:
    """Start an experiment: profiles are split between the cells by a salted hash of their id."""
    body: dict[str, Any] = {"id": experiment_id, "cells": [_cell(c) for c in cells]}
    if control_cell:
        body["control"] = control_cell
    data = _call(_client(api).post, "/v1/experiments", body)
    _emit(data, as_json, lambda d: click.echo(
        f"{d['id']}: running with cells " + ", ".join(f"{c['name']} ({c['weight']:g})" for c in d["cells"])))


@experiment.command("ls")
@api_option
@json_option
def experiment_ls(api: str, as_json: bool) -> None:
    """Experiments and their cells."""
    def table(d: dict[str, Any]) -> None:
        for e in d["experiments"]:
            cells = ", ".join(f"{c['name']}:{c.get('policy') or c.get('model_version') or 'model'}" for c in e["cells"])
            click.echo(f"{e['id']:<24} {e['state']:<8} {cells}")

    _emit(_call(_client(api).get, "/v1/experiments"), as_json, table)


@experiment.command("stop")
@click.argument("experiment_id")
@api_option
def experiment_stop(experiment_id: str, api: str) -> None:
    """Stop an experiment (profiles go back to the serving model; the report stays)."""
    _call(_client(api).post, f"/v1/experiments/{experiment_id}/stop")
    click.echo(f"{experiment_id}: stopped")


@experiment.command("report")
@click.argument("experiment_id")
@api_option
@json_option
def experiment_report(experiment_id: str, api: str, as_json: bool) -> None:
    """Per-cell play rate, watch time and completion with 95 % intervals, and the sample-ratio check."""
    def fmt(x: float | None, pct: bool = False) -> str:
        return "-" if x is None else (f"{x:+.2%}" if pct else f"{x:.4g}")

    def table(d: dict[str, Any]) -> None:
        srm = d["srm"]
        verdict = "MISMATCH - assignment or logging is broken; do not trust the metrics" if srm["flagged"] else "ok"
        click.echo(f"sample ratio: {srm['observed']} (expected {srm['expected']}), p={srm['p_value']:.3g}: {verdict}")
        for cell, stats in d["cells"].items():
            click.echo(f"  {cell:<14} " + "  ".join(f"{m} {fmt(s['value'])} (n={s['n']})" for m, s in stats.items()))
        for c in d["comparisons"]:
            mark = "*" if c["significant"] else " "
            click.echo(f"{mark} {c['cell']} vs control, {c['metric']:<22} diff {fmt(c['diff'])} "
                       f"[{fmt(c['low'])}, {fmt(c['high'])}] p={fmt(c['p_value'])}")

    _emit(_call(_client(api).get, f"/v1/experiments/{experiment_id}/report"), as_json, table)
