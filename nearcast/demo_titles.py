"""Sample titles for ``nearcast demo``: generated masters, encoded by the real pipeline, registered;
then catalog metadata, a synthetic viewing history and a recommendation model trained on it.

Runs after the daemons are up, so the demo's URLs appear at once and the titles follow.  Encoding
runs in a thread (the pipeline fans out to worker processes) and is cancelled cleanly on Ctrl-C.
The history is seeded (event ids included), so a second run posts the same events and the control
plane ignores them as duplicates.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
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
    seconds: float = 8.0
    year: int = 2026
    description: str = ""
    ladder: str = "fixed"  # one title uses the per-title ladder, so the operator view has measured points


SAMPLES = (
    SampleTitle("demo-ocean", "Ocean Hours", ("documentary", "nature"), "none", 1, 12.0, 2025,
                "Twelve seconds of open water, in slow, wide shots.", "auto"),
    SampleTitle("demo-heist", "The Quiet Heist", ("thriller", "crime"), "cenc", 2, 12.0, 2026,
                "A crew, a vault and no alarms. Encrypted: plays with ClearKey."),
    SampleTitle("demo-garden", "A Year in the Garden", ("documentary", "family"), "none", 3, 8.0, 2024,
                "Seasons pass over one small garden."),
    SampleTitle("demo-laughs", "Laugh Track", ("comedy",), "none", 4, 8.0, 2023,
                "A sitcom about the people who press the laugh button."),
    SampleTitle("demo-chase", "Night Chase", ("action", "thriller"), "none", 5, 8.0, 2026,
                "Two cars, one city, no brakes."),
    SampleTitle("demo-stars", "Under the Stars", ("science", "documentary"), "none", 6, 8.0, 2022,
                "The night sky, explained slowly."),
    SampleTitle("demo-kitchen", "Small Kitchen", ("comedy", "family"), "none", 7, 6.0, 2025,
                "Four cooks, one stove."),
    SampleTitle("demo-rally", "Gravel Rally", ("action", "sport"), "none", 8, 6.0, 2026,
                "Dust, gravel and a stopwatch."),
    SampleTitle("demo-orbit", "Low Orbit", ("science", "thriller"), "none", 9, 6.0, 2026,
                "Ninety minutes around the Earth, one problem at a time."),
    SampleTitle("demo-reef", "Reef Life", ("nature", "family"), "none", 10, 6.0, 2024,
                "Who lives where on a coral reef."),
)
#: The profile the demo's homepage opens with: it has a history (rows are personal from the start).
DEMO_PROFILE = "demo-viewer"


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
        make_master(master, seconds=sample.seconds, width=640, height=360, seed=sample.seed)
    spec = IngestSpec(title_id=sample.title_id, name=sample.name, genres=sample.genres,
                      ladder=sample.ladder,  # type: ignore[arg-type]
                      segment_seconds=2.0, encrypt=sample.encrypt,  # type: ignore[arg-type]
                      max_rungs=3 if sample.seconds > 10 else 2)
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


async def seed_catalog(api: Api, samples: list[SampleTitle]) -> None:
    """Descriptions and years on top of what ingest recorded (name, genres, artwork)."""
    docs = [{"title_id": t.title_id, "year": t.year, "description": t.description} for t in samples]
    status, body = await api.call("PUT", "/v1/catalog", {"titles": docs})
    if status != 200:
        raise RuntimeError(f"catalog update failed: {body}")


def synthetic_history(samples: list[SampleTitle], profiles: int = 240, seed: int = 7,
                      now: float | None = None) -> list[dict[str, Any]]:
    """Viewers with a favourite genre: they finish most titles of it and sample others; plus the demo
    profile, which finished one documentary and is half-way through another."""
    rng = random.Random(seed)
    now = time.time() if now is None else now
    day = 86_400.0
    genres = sorted({g for t in samples for g in t.genres})
    events: list[dict[str, Any]] = []

    def add(profile: str, kind: str, title: str, ts: float, region: str, **extra: Any) -> None:
        events.append({"event_id": f"demo-{seed}-{len(events)}", "type": kind, "profile_id": profile,
                       "title_id": title, "ts": round(ts, 3), "device": rng.choice(["tv", "web", "mobile"]),
                       "region": region, **extra})

    for p in range(profiles):
        fav = genres[p % len(genres)]
        region = "isp-a" if p % 2 else "isp-b"
        liked = [t for t in samples if fav in t.genres]
        others = [t for t in samples if fav not in t.genres]
        watched = rng.sample(liked, len(liked)) + rng.sample(others, min(len(others), rng.randint(0, 2)))
        ts = now - rng.uniform(3, 10) * day
        for t in watched:
            ts += rng.uniform(0.1, 1.0) * day
            add(f"viewer-{p:03d}", "play_start", t.title_id, ts, region)
            if t in liked or rng.random() < 0.3:
                add(f"viewer-{p:03d}", "complete", t.title_id, ts + t.seconds, region)
            else:
                add(f"viewer-{p:03d}", "progress", t.title_id, ts + 2, region, position_s=2.0, duration_s=t.seconds)
    by_id = {t.title_id: t for t in samples}
    add(DEMO_PROFILE, "play_start", "demo-ocean", now - 2 * day, "isp-a")
    add(DEMO_PROFILE, "complete", "demo-ocean", now - 2 * day + 12, "isp-a")
    add(DEMO_PROFILE, "play_start", "demo-garden", now - day, "isp-a")
    add(DEMO_PROFILE, "progress", "demo-garden", now - day + 4, "isp-a", position_s=4.0,
        duration_s=by_id["demo-garden"].seconds)
    return events


async def seed_history_and_train(api: Api, samples: list[SampleTitle], say: Any, timeout: float = 300.0) -> str:
    """Post the synthetic history, train the recommender on it (once), return the serving version."""
    events = synthetic_history(samples)
    for start in range(0, len(events), 500):
        status, body = await api.call("POST", "/v1/events", {"events": events[start:start + 500]})
        if status != 200:
            raise RuntimeError(f"posting the viewing history failed: {body}")
    status, recs = await api.call("GET", "/v1/recs")
    if status == 200 and recs.get("model_version"):
        return str(recs["model_version"])
    say(f"recs: training the recommender on {len(events)} synthetic viewing events")
    status, job = await api.call("POST", "/v1/recs/train")
    if status != 202:
        raise RuntimeError(f"training did not start: {job}")
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(1.0)
        _, recs = await api.call("GET", "/v1/recs")
        job = recs["job"]
        if job["state"] == "done":
            return str(recs["model_version"])
        if job["state"] == "failed":
            raise RuntimeError(f"training failed: {job['error']}")
    raise RuntimeError("training did not finish in time")


async def deploy_edge_model(api: Api, edge_urls: list[str], say: Any, timeout: float = 180.0) -> str:
    """Build the edge re-ranker and roll it out in two waves, with homepage traffic for the health gates.

    A wave is judged on real re-rank requests, so the demo plays a few viewers' homepages against every
    edge while the waves bake.  A second run finds the model already active and returns at once.
    """
    status, models = await api.call("GET", "/v1/models")
    if status == 200 and models.get("active"):
        return str(models["active"])
    status, built = await api.call("POST", "/v1/models", {})
    if status != 201:
        raise RuntimeError(f"building the edge model failed: {built}")
    version = str(built["version"])
    say(f"models: deploying edge re-ranker {version} in waves 50%, 100%")
    # The first model's baseline is "no model" (candidate order, no scoring), which is cheaper by
    # construction; on a busy two-core machine the latency gate must not mistake that for a regression.
    gates = {"min_requests": 20, "max_p99_ratio": 3.0, "p99_slack_ms": 50.0}
    body = {"version": version, "waves": [50, 100], "bake_s": 2, "gates": gates}
    status, started = await api.call("POST", "/v1/deployment", body)
    if status != 202:
        raise RuntimeError(f"deploying the edge model failed: {started}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    k = 0
    while loop.time() < deadline:
        for url in edge_urls:  # canary traffic: what the health gates judge
            for _ in range(10):
                k += 1
                async with api.http.get(f"{url}/v1/home/viewer-{k % 240:03d}?device=web",
                                        timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    await resp.read()
        _, dep = await api.call("GET", "/v1/deployment")
        phase = (dep.get("deployment") or {}).get("phase")
        if phase == "completed":
            return version
        if phase == "rolled_back":
            raise RuntimeError(f"the edge model was rolled back: {dep['deployment'].get('reason')}")
        await asyncio.sleep(0.5)
    raise RuntimeError("the edge model deployment did not finish in time")
