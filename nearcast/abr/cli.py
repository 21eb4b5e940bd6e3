"""``nearcast client play``: stream a title like a player and print its QoE."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import aiohttp
import click

from shared.errors import InvalidInput, NearcastError

from .player import PlaybackFailed, Player, PlayerOptions
from .traces import load, shipped


async def steer(api: str, title: str, client_ip: str | None, token: str | None) -> list[str]:
    """Ask the control plane for the ranked HLS URLs of ``title``, from ``client_ip`` when given."""
    connector = aiohttp.TCPConnector(local_addr=(client_ip, 0) if client_ip else None)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(connector=connector) as http:
        try:
            async with http.get(f"{api.rstrip('/')}/v1/play/{title}", headers=headers,
                                timeout=aiohttp.ClientTimeout(total=15)) as resp:
                body: Any = await resp.json(content_type=None)
                if resp.status != 200:
                    reason = body.get("error") if isinstance(body, dict) else None
                    raise PlaybackFailed(f"/v1/play/{title}: {resp.status} {reason or ''}".strip())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PlaybackFailed(f"cannot reach the control API at {api}: {exc}") from None
        except ValueError:
            raise PlaybackFailed(f"/v1/play/{title}: the answer is not JSON") from None
    return hls_urls(body)


def hls_urls(body: Any) -> list[str]:
    """The HLS manifest URLs of a ``/v1/play`` answer, best first."""
    items = body.get("sources") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise PlaybackFailed("/v1/play answer has no 'sources' list")
    urls = [item["hls"] for item in items if isinstance(item, dict) and isinstance(item.get("hls"), str)]
    if not urls:
        raise PlaybackFailed("no appliance can serve this title now")
    return urls


@click.group()
def client() -> None:
    """A real ABR client, for checking delivery and QoE."""


@client.command("play")
@click.argument("title")
@click.option("--api", envvar="NEARCAST_API", default="http://127.0.0.1:8700", show_default=True,
              help="Control API base URL (env NEARCAST_API).")
@click.option("--client-ip", default=None, help="Source address to play from (e.g. 127.0.1.7 for ISP 1 in the demo).")
@click.option("--trace", default=None, help=f"Throughput trace: a CSV path or one of {', '.join(shipped())}.")
@click.option("--abr", type=click.Choice(["throughput", "bola"]), default="throughput", show_default=True)
@click.option("--url", "urls", multiple=True, help="Play these HLS URLs (in order) instead of asking /v1/play.")
@click.option("--max-segments", type=click.IntRange(1), default=None, help="Stop after this many segments.")
@click.option("--max-buffer", type=click.FloatRange(1, 600), default=30.0, show_default=True,
              help="Seconds of media the player buffers ahead before it waits.")
@click.option("--json", "as_json", is_flag=True, help="Print the QoE summary as JSON.")
def play(title: str, api: str, client_ip: str | None, trace: str | None, abr: str, urls: tuple[str, ...],
         max_segments: int | None, max_buffer: float, as_json: bool) -> None:
    """Stream TITLE from the steered edge and print startup delay, rebuffering, bitrate, switches and QoE."""
    try:
        trace_obj = load(trace) if trace else None
        sources = list(urls) or asyncio.run(steer(api, title, client_ip, os.environ.get("NEARCAST_TOKEN")))
        player = Player(sources, PlayerOptions(abr=abr, trace=trace_obj, client_ip=client_ip,
                                               max_segments=max_segments, max_buffer_s=max_buffer))
        qoe = asyncio.run(player.play())
    except (NearcastError, InvalidInput) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"network error: {exc}") from None
    summary: dict[str, Any] = {"title": title, "abr": abr, "trace": trace, **qoe.summary(),
                               "sources": [sources[i] for i in sorted(set(player.served_by))]}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{title}: {summary['segments']} segments with {abr}"
               + (f" on trace {trace}" if trace else ""))
    for key in ("startup_delay_s", "rebuffer_s", "rebuffer_ratio", "average_bitrate_kbps", "switches",
                "failovers", "qoe", "qoe_per_segment"):
        click.echo(f"  {key:<22} {summary[key]}")
