"""Sample titles for ``nearcast demo``: generated masters, encoded by the real pipeline, registered.

Runs after the daemons are up, so the demo's URLs appear at once and the titles follow.  Encoding
runs in a thread (the pipeline fans out to worker processes) and is cancelled cleanly on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp


@dataclass(frozen=True)
class SampleTitle:
    title_id: str
    name: str
    genres: tuple[str, ...]
    encrypt: str
    seed: int


SAMPLES = (
    SampleTitle("demo-ocean", "Ocean Hours", ("documentary", "nature"), "none", 1),
    SampleTitle("demo-heist", "The Quiet Heist", ("thriller", "crime"), "cenc", 2),
)


class Api:
    def __init__(self, http: aiohttp.ClientSession, base: str, token: str) -> None:
        self.http, self.base, self.headers = http, base, {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, self.base + path, json=body, headers=self.headers,
                                     timeout=aiohttp.ClientTimeout(total=60)) as resp:
            return resp.status, await resp.json(content_type=None)


def _encode(sample: SampleTitle, state: Path, cancel: threading.Event) -> None:
    from control.encode.pipeline import ingest
    from control.encode.spec import IngestSpec
    from control.encode.synth import make_master

    masters = state / "masters"
    masters.mkdir(parents=True, exist_ok=True)
    master = masters / f"{sample.title_id}.mp4"
    if not master.exists():
        make_master(master, seconds=12.0, width=640, height=360, seed=sample.seed)
    spec = IngestSpec(title_id=sample.title_id, name=sample.name, genres=sample.genres, ladder="fixed",
                      segment_seconds=2.0, encrypt=sample.encrypt, max_rungs=3)  # type: ignore[arg-type]
    ingest(master, state / "control" / "origin", state / "control" / "keys", spec, cancel=cancel)


async def publish_samples(api: Api, state: Path, say: Any, cancel: threading.Event) -> list[SampleTitle]:
    """Encode and register every sample title not yet registered; returns the samples."""
    for sample in SAMPLES:
        status, _ = await api.call("GET", f"/v1/titles/{sample.title_id}")
        if status == 200:
            continue
        if not (state / "control" / "origin" / sample.title_id).exists():
            say(f"  encoding {sample.title_id} ({sample.name}{', encrypted' if sample.encrypt != 'none' else ''})")
            await asyncio.to_thread(_encode, sample, state, cancel)
        status, body = await api.call("POST", "/v1/titles", {"title_id": sample.title_id})
        if status not in (200, 201):
            raise RuntimeError(f"registering {sample.title_id} failed: {body}")
    return list(SAMPLES)


async def fill_and_wait(api: Api, edges: int, timeout: float = 120.0) -> None:
    """Publish a fill plan and wait until every edge reports its plan done."""
    status, body = await api.call("POST", "/v1/fill/plan")
    if status != 200:
        raise RuntimeError(f"fill plan failed: {body}")
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        _, st = await api.call("GET", "/v1/fill/status")
        rows = st.get("appliances", []) if isinstance(st, dict) else []
        if len(rows) >= edges and all(r.get("ack") == "done" and r.get("titles_complete", 0) >= 1 for r in rows):
            return
        await asyncio.sleep(0.5)
    raise RuntimeError("fills did not complete in time (see the edge logs)")
