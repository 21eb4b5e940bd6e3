"""Events, catalog, rows and training through the real control API (real store, real trainer process)."""

from __future__ import annotations

import asyncio
import io
import json
import random
import time
from typing import Any

import aiohttp
import pytest

from control.app import CTX
from control.recs.data import load_catalog_csv, load_interactions_csv
from control.recs_service import RecsService
from edge.rerank import parse_candidates

from .conftest import Harness, eventually, make_origin_title

GENRES = ("drama", "comedy", "action", "documentary")


async def publish(control: Harness, n: int) -> list[str]:
    ids = []
    for i in range(n):
        tid = f"t{i:02d}"
        make_origin_title(control.state, tid, genres=(GENRES[i % 4],))
        doc = {"title_id": tid, "released": time.time() - 400 * 86400}
        status, body = await control.call("POST", "/v1/titles", doc)
        assert status == 201, body
        ids.append(tid)
    return ids


def event(profile: str, kind: str, title: str | None, ts: float, n: int, **extra: Any) -> dict[str, Any]:
    doc = {"event_id": f"{profile}-{n}", "type": kind, "profile_id": profile, "ts": ts, "device": "web",
           "region": "isp-a", **extra}
    if title is not None:
        doc["title_id"] = title
    return doc


async def test_events_are_public_idempotent_and_bad_ones_are_named(control: Harness) -> None:
    now = time.time()
    batch = {"events": [event("p1", "play_start", "t1", now - 10, 1), event("p1", "thumbs", "t1", now - 5, 2,
                                                                          value="meh"),
                        event("p1", "complete", "t1", now, 3)]}
    status, body = await control.call("POST", "/v1/events", batch, token=None)
    assert status == 200, body
    assert body["accepted"] == 2 and body["duplicates"] == 0
    assert body["rejected"] == [{"index": 1, "error": "value must be 'up' or 'down'"}]
    status, body = await control.call("POST", "/v1/events", batch, token=None)  # a client retry
    assert (status, body["accepted"], body["duplicates"]) == (200, 0, 2)
    status, body = await control.call("POST", "/v1/events", {"events": [{"type": "complete"}]}, token=None)
    assert status == 400 and body["rejected"][0]["index"] == 0
    for bad in ({"events": []}, {"evts": []}, [1, 2]):
        status, body = await control.call("POST", "/v1/events", bad, token=None)
        assert status == 400, (bad, body)
    async with aiohttp.ClientSession() as http:
        async with http.post(control.url + "/v1/events", data=b"{not json") as resp:
            assert resp.status == 400
        async with http.post(control.url + "/v1/events", data=io.BytesIO(b"[" + b"1," * (1 << 20) + b"1]")) as resp:
            assert resp.status == 413
    assert await control.ctx.store.count_events() == 2
    metrics = await (await control.http.get(control.url + "/metrics")).text()
    assert 'nearcast_control_events_total{outcome="duplicate"} 2.0' in metrics


async def test_home_rows_follow_the_viewing_log(control: Harness) -> None:
    titles = await publish(control, 12)
    status, body = await control.call("PUT", "/v1/catalog", {"titles": [
        {"title_id": "t03", "name": "The Third", "cast": ["A. Actor"], "year": 2024, "artwork": ["candidate_01",
                                                                                                 "candidate_02"]}]})
    assert status == 200 and body["changed"] == 1, body
    now = time.time()
    events = [event("p1", "progress", "t01", now - 300, 1, position_s=300, duration_s=1000),
              event("p1", "complete", "t02", now - 200, 2), event("p1", "thumbs", "t05", now - 100, 3, value="down")]
    n = 10
    for viewer in range(6):  # others make t03 trend in p1's region
        events.append(event(f"v{viewer}", "play_start", "t03", now - 60, n := n + 1))
    status, body = await control.call("POST", "/v1/events", {"events": events}, token=None)
    assert status == 200 and body["accepted"] == len(events), body

    status, doc = await control.call("GET", "/v1/profiles/p1/home", token=None)
    assert status == 200, doc
    rows = {r["id"]: [it["title_id"] for it in r["items"]] for r in doc["rows"]}
    assert rows["continue-watching"] == ["t01"]
    on_page = [t for items in rows.values() for t in items]
    assert len(on_page) == len(set(on_page)) and not {"t02", "t05"} & set(on_page)
    byw = next(r for r in doc["rows"] if r["id"] == "because-you-watched")
    assert byw["seed"] == "t02" and set(rows["because-you-watched"]) <= {t for i, t in enumerate(titles) if i % 4 == 2}
    assert set(on_page) <= set(titles)
    item = next(it for r in doc["rows"] for it in r["items"] if it["title_id"] == "t03")
    assert item["artwork"] == ["candidate_01", "candidate_02"]
    assert parse_candidates(doc, "p1").rows  # the edge's contract holds
    names = {it["title_id"]: it["name"] for r in doc["rows"] for it in r["items"]}
    assert names.pop("t03") == "The Third" and all(name == t.title() for t, name in names.items())

    # artwork is public for published titles, and only <variant>.jpg inside the title's artwork folder
    art = control.state / "origin" / "t03" / "artwork"
    art.mkdir()
    (art / "candidate_01.jpg").write_bytes(b"\xff\xd8jpeg")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{control.url}/v1/artwork/t03/candidate_01.jpg") as resp:
            assert resp.status == 200 and await resp.read() == b"\xff\xd8jpeg"
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
        for path, want in (("t03/candidate_02.jpg", 404), ("nope/candidate_01.jpg", 404), ("t03/fileset.json", 400),
                           ("t03/..%2Ffileset.json", 400), ("t03/.hidden.jpg", 400)):
            async with http.get(f"{control.url}/v1/artwork/{path}") as resp:
                assert resp.status == want, (path, resp.status)

    # a profile nobody has seen: regional (here global) trending, t03 first
    status, doc = await control.call("GET", "/v1/profiles/newcomer/home", token=None)
    top = next(r for r in doc["rows"] if r["id"] == "top-picks")
    assert status == 200 and top["source"] == "trending" and top["items"][0]["title_id"] == "t03"

    # new events take effect at once: finishing t01 removes it from Continue Watching
    await control.call("POST", "/v1/events", {"events": [event("p1", "complete", "t01", time.time(), 99)]},
                       token=None)
    status, doc = await control.call("GET", "/v1/profiles/p1/home", token=None)
    assert "continue-watching" not in {r["id"] for r in doc["rows"]}
    status, body = await control.call("GET", "/v1/profiles/..%2Fx/home", token=None)
    assert status in (400, 404)


async def test_title_ladder_shows_the_encoders_record(control: Harness) -> None:
    await publish(control, 1)
    manifest = control.state / "origin" / "t00" / "fileset.json"
    doc = json.loads(manifest.read_text())
    doc["ladder"] = {"mode": "auto", "rungs": [{"codec": "h264", "height": 360, "bitrate": 500000}],
                     "points": [{"codec": "h264", "height": 360, "bitrate": 500000, "quality": 41.5}]}
    manifest.write_text(json.dumps(doc))
    status, body = await control.call("GET", "/v1/titles/t00/ladder", token=control.reader)
    assert status == 200 and body["ladder"]["points"][0]["quality"] == 41.5
    assert (await control.call("GET", "/v1/titles/zz/ladder"))[0] == 404
    manifest.write_text("{broken")
    status, body = await control.call("GET", "/v1/titles/t00/ladder")
    assert status == 400 and "unreadable" in body["error"]
    manifest.unlink()
    assert (await control.call("GET", "/v1/titles/t00/ladder"))[0] == 404


async def test_catalog_merges_validates_and_needs_admin(control: Harness) -> None:
    await publish(control, 1)
    status, entry = await control.call("GET", "/v1/catalog/t00", token=control.reader)
    assert status == 200 and entry["genres"] == ["drama"] and entry["name"] == "T00"  # seeded by publishing
    status, _ = await control.call("PUT", "/v1/catalog", {"titles": [{"title_id": "t00", "year": 1999}]},
                                   token=control.reader)
    assert status == 403
    status, _ = await control.call("PUT", "/v1/catalog", {"titles": [{"title_id": "t00", "tags": "noir|rain",
                                                                       "description": "Wet."}]})
    status, entry = await control.call("GET", "/v1/catalog/t00")
    assert entry["tags"] == ["noir", "rain"] and entry["genres"] == ["drama"] and entry["description"] == "Wet."
    for bad, reason in [({"titles": [{"title_id": "t00", "oscars": 3}]}, "unknown"),
                        ({"titles": [{"title_id": "t00", "year": 12}]}, "year"),
                        ({"titles": [{"title_id": "t00", "genres": ["x"] * 65}]}, "genres"),
                        ({"titles": [{"title_id": "a/b"}]}, "title id"),
                        ({"titles": [{"title_id": "t1"}, {"title_id": "t1"}]}, "twice"),
                        ({"titles": [{"title_id": f"x{i}"} for i in range(1001)]}, "at most 1000")]:
        status, body = await control.call("PUT", "/v1/catalog", bad)
        assert status == 400 and reason in body["error"], (bad, body)
    status, body = await control.call("GET", "/v1/catalog/nothing")
    assert status == 404


def synthetic_log(titles: list[str], profiles: int, seed: int = 3) -> list[dict[str, Any]]:
    """Each profile loves one genre: it finishes most of that genre's titles, and samples one other."""
    rng = random.Random(seed)
    now = time.time()
    out: list[dict[str, Any]] = []
    for p in range(profiles):
        fav = p % 4
        mine = [t for i, t in enumerate(titles) if i % 4 == fav]
        watched = [*rng.sample(mine, len(mine) - 1), rng.choice([t for t in titles if t not in mine])]
        for k, t in enumerate(watched):
            out.append(event(f"u{p}", "complete", t, now - 86400 * (len(watched) - k) - rng.random() * 3600,
                             len(out)))
    return out


@pytest.mark.slow
async def test_training_from_the_event_log_serves_model_rows(control: Harness) -> None:
    titles = await publish(control, 20)
    log = synthetic_log(titles, 120)
    for start in range(0, len(log), 500):
        status, body = await control.call("POST", "/v1/events", {"events": log[start:start + 500]}, token=None)
        assert status == 200, body
    status, csv_text = await control.call("GET", "/v1/recs/export/interactions.csv", token=control.reader)
    assert status == 200 and csv_text.startswith("user,item,rating,timestamp\n")
    export = control.state / "export"
    export.mkdir()
    (export / "interactions.csv").write_text(csv_text)
    (export / "catalog.csv").write_text((await control.call("GET", "/v1/recs/export/catalog.csv"))[1])
    assert len(load_interactions_csv(export / "interactions.csv")) == len(log)
    assert len(load_catalog_csv(export / "catalog.csv")) == 20

    status, job = await control.call("POST", "/v1/recs/train")
    assert status == 202 and job["state"] == "running"
    status, again = await control.call("POST", "/v1/recs/train")
    assert status == 409

    async def trained() -> dict[str, Any] | None:
        _, body = await control.call("GET", "/v1/recs", token=control.reader)
        assert body["job"]["state"] != "failed", body["job"]
        return body if body["job"]["state"] == "done" else None

    status_doc = await eventually(trained, timeout=240)
    version = status_doc["model_version"]
    assert version and status_doc["events"] == len(log)
    status, doc = await control.call("GET", "/v1/profiles/u0/home", token=None)
    top = next(r for r in doc["rows"] if r["id"] == "top-picks")
    assert top["source"] == "model" and doc["model_version"] == version
    # a restart serves the same model
    ctx = control.app[CTX]
    again_service = RecsService(ctx.store, ctx.config.recs, ctx.config.recs_dir)
    await again_service.start()
    assert again_service.model_version == version
    await again_service.stop()


async def test_training_with_no_events_fails_with_a_reason(control: Harness) -> None:
    status, job = await control.call("POST", "/v1/recs/train")
    assert status == 202

    async def failed() -> dict[str, Any] | None:
        _, body = await control.call("GET", "/v1/recs")
        return body if body["job"]["state"] == "failed" else None

    body = await eventually(failed)
    assert "too few viewing events" in body["job"]["error"] and body["model_version"] is None
    await asyncio.sleep(0)


