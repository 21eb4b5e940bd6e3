"""``title ingest`` and ``title jobs``: upload a master, run it as a control-plane job, follow it.

The encode runs in the control plane (its worker processes, its origin store), not here: the CLI only
streams the master up, starts the job and polls it, so an operator's laptop going to sleep does not
lose a half-encoded title.  Ctrl-C cancels the job it started rather than leaving it running unseen.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

import click

from shared.ids import new_id

from .cli import _call, _client, _emit, api_option, json_option
from .cli_ops import title
from .client import ApiClient, ApiError

ACTIVE = ("queued", "running")
POLL_S = 0.5


class _Counting:
    """A file reader that reports how much urllib has sent, for the upload progress bar."""

    def __init__(self, f: BinaryIO, report: Any) -> None:
        self._f = f
        self._report = report

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._report(len(data))
        return data


def _upload(client: ApiClient, master: Path, show_bar: bool) -> str:
    """Stream ``master`` to ``PUT /v1/uploads/<id>`` without reading it into memory."""
    upload_id = new_id()
    size = master.stat().st_size
    url = f"{client.base_url}/v1/uploads/{upload_id}"
    with master.open("rb") as f, click.progressbar(length=size, label="upload", file=sys.stderr,
                                                   hidden=not show_bar) as bar:
        req = urllib.request.Request(url, data=_Counting(f, bar.update), method="PUT")
        req.add_header("Content-Type", "application/octet-stream")
        req.add_header("Content-Length", str(size))
        if client.token:
            req.add_header("Authorization", f"Bearer {client.token}")
        try:
            with urllib.request.urlopen(req, timeout=client.timeout) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()[:2000]).get("error") or exc.reason
            except (ValueError, AttributeError):
                message = exc.reason
            raise ApiError(f"upload: {exc.code} {message}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ApiError(f"upload to {client.base_url} failed: {getattr(exc, 'reason', exc)}") from None
    return upload_id


def _follow(client: ApiClient, job: dict[str, Any], show_bar: bool) -> dict[str, Any]:
    """Poll the job to its end, with a bar on a terminal (silently otherwise: the result is the output)."""
    path = f"/v1/jobs/{urllib.parse.quote(job['job_id'], safe='')}"
    with click.progressbar(length=1000, label=f"ingest {job['title_id']}", file=sys.stderr,
                           hidden=not show_bar) as bar:
        try:
            while job["state"] in ACTIVE:
                time.sleep(POLL_S)
                job = _call(client.get, path)
                bar.label = f"ingest {job['title_id']} ({job['stage']})"
                bar.update(int(job["progress"] * 1000) - bar.pos)
        except KeyboardInterrupt:
            _call(client.post, f"{path}/cancel")
            raise click.ClickException(f"interrupted: cancelled ingest job {job['job_id']}") from None
    return job


@title.command("ingest")
@click.argument("master", type=click.Path(path_type=Path))
@click.option("--title-id", required=True, help="Identifier of the new title.")
@click.option("--name", help="Display name (defaults to the title id).")
@click.option("--genres", default="", help="Comma-separated genres.")
@click.option("--codecs", default="h264", show_default=True, help="Comma-separated: h264 plus hevc, av1.")
@click.option("--ladder", type=click.Choice(["auto", "fixed"]), default="auto", show_default=True)
@click.option("--segment-seconds", type=float, default=4.0, show_default=True)
@click.option("--encrypt", type=click.Choice(["none", "cenc", "aes128"]), default="none", show_default=True)
@click.option("--server-path", is_flag=True,
              help="MASTER is a path on the control plane (inside its ingest.dir): do not upload it.")
@click.option("--no-wait", is_flag=True, help="Start the job and print it; do not follow it.")
@api_option
@json_option
def title_ingest(master: Path, title_id: str, name: str | None, genres: str, codecs: str, ladder: str,
                 segment_seconds: float, encrypt: str, server_path: bool, no_wait: bool, api: str,
                 as_json: bool) -> None:
    """Encode MASTER into a title on the control plane and publish it."""
    client = _client(api)
    show_bar = sys.stderr.isatty() and not as_json
    body: dict[str, Any] = {
        "title_id": title_id, "name": name or title_id, "ladder": ladder, "segment_seconds": segment_seconds,
        "encrypt": encrypt, "genres": [g.strip() for g in genres.split(",") if g.strip()],
        "codecs": [c.strip() for c in codecs.split(",") if c.strip()]}
    if server_path:
        body["path"] = os.fspath(master)
    else:
        if not master.is_file():
            raise click.ClickException(f"{master}: no such file")
        body["upload_id"] = _call(_upload, client, master, show_bar)
    job = _call(client.post, "/v1/titles/ingest", body)
    if not no_wait:
        job = _follow(client, job, show_bar)

    def summary(j: dict[str, Any]) -> None:
        version = f" {j['version']}" if j.get("version") else ""
        click.echo(f"{j['title_id']}: {j['state']}{version} (job {j['job_id']})")

    failed = job["state"] in ("failed", "cancelled")
    if as_json or not failed:
        _emit(job, as_json, summary)
    if failed:
        raise click.ClickException(f"ingest {job['title_id']} {job['state']}: {job['error'] or 'no reason given'}")


@title.command("jobs")
@api_option
@json_option
def title_jobs(api: str, as_json: bool) -> None:
    """List ingest jobs, newest first."""
    def table(d: dict[str, Any]) -> None:
        if not d["jobs"]:
            click.echo("no ingest jobs")
        for j in d["jobs"]:
            tail = j["error"] or j["version"] or ""
            click.echo(f"{j['job_id']:<26} {j['title_id']:<24} {j['state']:<9} {j['stage']:<10} "
                       f"{j['progress']:>4.0%} {tail}")

    _emit(_call(_client(api).get, "/v1/jobs"), as_json, table)


@title.command("cancel")
@click.argument("job_id")
@api_option
@json_option
def title_cancel(job_id: str, api: str, as_json: bool) -> None:
    """Cancel a queued or running ingest job."""
    data = _call(_client(api).post, f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}/cancel")
    _emit(data, as_json, lambda d: click.echo(f"{d['job_id']}: {d['stage']}"))
