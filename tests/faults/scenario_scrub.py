"""Damage cached files on an edge's disk, one trial at a time; the scrub must find each and the edge
must fill it again, never serving the damage once it is found.

Real processes: a private Mosquitto, an HTTP origin, one ``nearcast edge serve`` with a fast scrub
(``scrub.interval_s`` short, a bounded ``rate_bytes_s``).  The plan (retained desired fill) holds two
titles.  Each trial picks a file of a complete set at random and damages it in one of four ways: a
flipped byte at a random offset, truncation, a deleted file, bytes appended.  Checked:

* the damage is found (``nearcast_edge_scrub_corrupt_total`` goes up by one) within a bound;
* from the moment it is found, every 200/206 for that title carries the manifest's bytes (the set
  stops being served at once: misses are redirected to the origin), and a miss or redirect is fine;
* the set is filled again and then every one of its files is served with the manifest's bytes;
* the other title is served intact all along.

Before it is found a damaged segment can be served (the scrub is periodic; manifests and init segments
are also checked on read): those serves are counted (``served_before_found``), not failures.
"""

from __future__ import annotations

import functools
import random
import time
from http.client import HTTPException
from pathlib import Path
from typing import Any

from shared.messages import DesiredFill, FileSetRef, FillSource
from tests.edge.conftest import build_file_set
from tests.faults.harness import Edge, Stack, http_get, make_keys, metric_sum, metrics, publish_desired, sha256, until
from tests.faults.scenario import Scenario, ScenarioResult

NAME = "scrub"
TITLES = ("sa", "sb")
DAMAGE = ("flip", "truncate", "delete", "append")
FOUND_WITHIN_S = 20.0


def make_files(rng: random.Random) -> dict[str, bytes]:
    files = {"hls/master.m3u8": b"#EXTM3U\n#" + rng.randbytes(200).hex().encode() + b"\n",
             "hls/init.mp4": rng.randbytes(rng.randrange(600, 2000))}
    for i in range(4):
        files[f"hls/seg_{i}.m4s"] = rng.randbytes(rng.randrange(50_000, 250_000))
    return files


def damage(path: Path, how: str, rng: random.Random) -> None:
    data = path.read_bytes()
    if how == "flip":
        i = rng.randrange(len(data))
        path.write_bytes(data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:])
    elif how == "truncate":
        path.write_bytes(data[:rng.randrange(len(data))])
    elif how == "delete":
        path.unlink()
    else:
        path.write_bytes(data + rng.randbytes(rng.randrange(1, 100)))


def serve(edge: Edge, token: str, title: str, path: str) -> tuple[int, bytes]:
    try:
        resp = http_get(edge.content_url(token, title, path), timeout=5)
    except (OSError, HTTPException) as exc:
        return -1, str(exc).encode()
    return resp.status, resp.body


def found(edge: Edge) -> float:
    return metric_sum(metrics(edge.url), "nearcast_edge_scrub_corrupt_total")


def run(trials: int, seed: int, workdir: Path) -> ScenarioResult:
    started = time.monotonic()
    rng = random.Random(seed)
    result = ScenarioResult(NAME, trials)
    detail: dict[str, Any] = {"damaged": 0, "found": 0, "found_on_read": 0, "refilled": 0, "find_s_max": 0.0,
                              "served_before_found": 0, "bad_serves": 0, "checked_serves": 0,
                              **{f"damage_{d}": 0 for d in DAMAGE}}
    with Stack(workdir) as stack:
        broker = stack.broker()
        keys = make_keys(workdir / "keys")
        origin = stack.origin(workdir / "origin")
        edge = stack.edge("edge-scrub", broker.port, keys, {
            "scrub": {"interval_s": 0.3, "rate_bytes_s": 8 << 20}, "fill": {"retry_s": 1.0}})
        watcher = stack.watcher(broker.port, f"nearcast/v1/appliances/{edge.name}/acks")
        sets = {t: make_files(rng) for t in TITLES}
        refs = []
        for title, files in sets.items():
            build_file_set(workdir / "origin", keys.signer, title, "v1", files)
            refs.append(FileSetRef(title, "v1", f"{origin.url}/manifests/{title}/v1.json",
                                   sum(len(b) for b in files.values()),
                                   [FillSource(f"{origin.url}/good/{title}/v1", "origin")]))
        fallback = f"{origin.url}/good"
        tokens = {t: edge.token(f"{t}/", fallbacks=(fallback,)) for t in TITLES}

        def check(title: str, path: str, *, must_serve: bool) -> bool:
            """One GET; a 200 must be the manifest's bytes (a redirect to the origin is fine unless
            ``must_serve``).  Returns whether it was served from the edge."""
            status, body = serve(edge, tokens[title], title, path)
            detail["checked_serves"] += 1
            if status == 200:
                if sha256(body) != sha256(sets[title][path]):
                    detail["bad_serves"] += 1
                    result.failures.append(f"served {title}/{path} with {len(body)} bytes not the manifest's")
                return True
            if status not in (302, 404) or must_serve:
                result.failures.append(f"{title}/{path}: HTTP {status} {body[:200]!r}")
            return False

        def all_served(title: str) -> bool:
            return all(check(title, p, must_serve=False) for p in sorted(sets[title]))

        try:
            edge.start()
            publish_desired(watcher, edge.name, "fill", DesiredFill(1, refs), "fill-scrub-1")
            until(lambda: any(a.command_id == "fill-scrub-1" and a.status == "done" for a in watcher.bodies("/acks")),
                  60, f"the first fill; edge log:\n{edge.log()}")
            for title in TITLES:
                for path in sets[title]:
                    check(title, path, must_serve=True)  # warm: manifests and init segments now in memory
            for trial in range(trials):
                title = TITLES[rng.randrange(len(TITLES))]
                other = next(t for t in TITLES if t != title)
                path = sorted(sets[title])[rng.randrange(len(sets[title]))]
                how = DAMAGE[rng.randrange(len(DAMAGE))]
                target = edge.cache_dir / "sets" / title / "v1" / path
                before = found(edge)
                before_read = metric_sum(metrics(edge.url), "nearcast_edge_scrub_corrupt_total", found_by="read")
                time.sleep(rng.uniform(0, 0.5))
                damage(target, how, rng)
                damaged_at = time.monotonic()
                detail["damaged"] += 1
                detail[f"damage_{how}"] += 1
                while found(edge) <= before:  # until found, the damaged file may still go out: counted
                    if time.monotonic() - damaged_at > FOUND_WITHIN_S:
                        result.failures.append(f"trial {trial}: {how} of {title}/{path} not found in "
                                               f"{FOUND_WITHIN_S:.0f} s")
                        break
                    status, body = serve(edge, tokens[title], title, path)
                    if status == 200 and sha256(body) != sha256(sets[title][path]):
                        detail["served_before_found"] += 1
                    time.sleep(0.05)
                else:
                    detail["found"] += 1
                    detail["find_s_max"] = round(max(detail["find_s_max"], time.monotonic() - damaged_at), 2)
                if metric_sum(metrics(edge.url), "nearcast_edge_scrub_corrupt_total", found_by="read") > before_read:
                    detail["found_on_read"] += 1
                # From here on nothing damaged may be served; the set comes back whole.
                try:
                    until(functools.partial(all_served, title), FOUND_WITHIN_S, f"trial {trial}: {title} filled again")
                    detail["refilled"] += 1
                except AssertionError as exc:
                    result.failures.append(f"{exc}; edge log:\n{edge.log(2000)}")
                for p in sorted(sets[other]):
                    check(other, p, must_serve=True)
            if edge.stop() != 0:
                result.failures.append("the edge did not exit cleanly on SIGTERM")
        except AssertionError as exc:
            result.failures.append(str(exc)[:4000])
    result.detail = detail
    result.seconds = time.monotonic() - started
    return result


SCENARIO = Scenario(
    name=NAME,
    description="damage cached files (flip, truncate, delete, append); the scrub finds each, the set is filled "
                "again, and nothing damaged is served once found",
    run=run,
    fast_trials=2,
    full_trials=20,
)
