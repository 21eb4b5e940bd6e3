"""SIGKILL an edge at random moments while it fills a plan; restart it on the same cache, again and again.

Real processes: a private Mosquitto, an HTTP origin, one ``nearcast edge serve``.  The plan (retained
desired fill, as the control plane publishes it) names three titles; every few trials a new generation
replaces each title by a new version (new bytes), so older versions go stale and must give way.
Fills are rate-limited so they last seconds, and the cache is small enough that older versions must
be evicted to make room.

A reader thread hammers the edge all along with signed URLs for every file of those titles (some with
a ``Range``) and checks every 200/206 body against the file-set manifests:

* **bad serve**: a body that is not exactly the bytes (or the byte range) of that file in some version
  of the title (partial, unverified, corrupt);
* **stale serve**: a body of an older version of a title than one the edge already served (requests are
  sequential, so "already" is well defined), or, once the plan reports done, any version but the plan's;
* a miss (302 to the fallback) or a refused connection while the edge is down is fine; a 5xx is not.

A quarter of the kills land at a uniform moment of the start-up (recovery and re-verification of
interrupted fills); the others at a uniform moment in the 2.5 s after the edge answers ``/healthz``
(fills, evictions, swaps of versions).
While the edge is dead, the disk is checked directly: every set ``served.json`` names is complete and
verified under ``sets/``, and no file under ``sets/`` differs from its manifest.  At the end the edge
runs undisturbed until the last plan is done and every file of it is served intact.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Any

from shared.messages import DesiredFill, FileSetRef, FillSource
from tests.edge.conftest import build_file_set
from tests.faults.harness import Edge, Origin, Stack, Watcher, http_get, make_keys, publish_desired, sha256, until
from tests.faults.scenario import Scenario, ScenarioResult

NAME = "edge_kill_fill"
TITLES = ("ta", "tb", "tc")
SEGMENTS = 4
RATE_BPS = 8_000_000  # 1 MB/s: a generation (~2.4 MB) takes a few lives of the edge to fill
KILL_WINDOW_S = (0.0, 2.5)  # after the edge answers /healthz
STARTUP_KILL_SHARE = 0.25  # trials whose kill lands at a uniform moment of the start-up instead
NEW_PLAN_MID_FILL = 0.1  # chance per trial of replacing the plan before the current one is done


@dataclass
class Version:
    title: str
    version: str
    gen: int
    files: dict[str, tuple[int, str]]  # path -> (size, sha256)
    root: Path  # where the origin keeps this version's good copies

    def body(self, path: str) -> bytes:
        return (self.root / path).read_bytes()


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    verified: int = 0
    misses: int = 0
    cut: int = 0  # connection refused or cut mid-response (the edge was killed)
    bad: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Catalogue:
    """Every version published so far, shared by the scenario and the reader thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.versions: dict[str, dict[str, Version]] = {t: {} for t in TITLES}
        self.final: dict[str, str] = {}  # title -> the only acceptable version once the plan is done

    def add(self, v: Version) -> None:
        with self.lock:
            self.versions[v.title][v.version] = v

    def of(self, title: str) -> list[Version]:
        with self.lock:
            return list(self.versions[title].values())


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


def _same(v: Version, path: str, status: int, content_range: re.Match[str] | None, body: bytes) -> bool:
    """Is ``body`` (a 200, or a 206 with ``content_range``) exactly the bytes of ``path`` in ``v``?"""
    size, digest = v.files[path]
    if status == 200:
        return len(body) == size and sha256(body) == digest
    m = content_range
    return m is not None and int(m.group(3)) == size and v.body(path)[int(m.group(1)):int(m.group(2)) + 1] == body


class Reader(threading.Thread):
    """Sequential GETs of every file of every title, each body checked against the manifests."""

    def __init__(self, edge: Edge, origin: Origin, cat: Catalogue, tally: Tally, seed: int) -> None:
        super().__init__(name="fault-reader", daemon=True)
        self.edge, self.cat, self.tally = edge, cat, tally
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.newest: dict[str, int] = {}  # title -> highest generation served so far
        self.tokens = {t: edge.token(f"{t}/", fallbacks=(f"{origin.url}/good",)) for t in TITLES}

    def run(self) -> None:
        while not self.stop_event.is_set():
            title = TITLES[self.rng.randrange(len(TITLES))]
            versions = self.cat.of(title)
            if not versions:
                time.sleep(0.05)
                continue
            paths = sorted(versions[-1].files)
            path = paths[self.rng.randrange(len(paths))]
            headers = {}
            if self.rng.random() < 0.3:
                start = self.rng.randrange(0, versions[-1].files[path][0])
                headers["Range"] = f"bytes={start}-" if self.rng.random() < 0.5 else f"bytes={start}-{start + 999}"
            try:
                resp = http_get(self.edge.content_url(self.tokens[title], title, path), headers, timeout=5)
            except (OSError, HTTPException):
                with self.tally.lock:
                    self.tally.cut += 1
                time.sleep(0.02)
                continue
            self.check(title, path, headers, resp.status, resp.headers, resp.body, versions)
            time.sleep(0.002)

    def check(self, title: str, path: str, req: dict[str, str], status: int, headers: Any, body: bytes,
              versions: list[Version]) -> None:
        what = f"{title}/{path} {req.get('Range', '')}".strip()
        if status in (302, 404):
            with self.tally.lock:
                self.tally.misses += 1
            return
        m = _CONTENT_RANGE.fullmatch(headers.get("content-range", ""))
        unsatisfiable = re.fullmatch(r"bytes \*/(\d+)", headers.get("content-range", ""))
        if status == 416 and unsatisfiable and any(
                path in v.files and v.files[path][0] == int(unsatisfiable.group(1)) for v in versions):
            with self.tally.lock:  # a range beyond the end of an older, shorter version of the file
                self.tally.misses += 1
            return
        if status not in (200, 206):
            with self.tally.lock:
                self.tally.errors.append(f"{what}: HTTP {status} {body[:200]!r}")
            return
        # Every version whose bytes this is: a short range (the last byte of a playlist) may match several.
        matching = [v for v in versions if path in v.files and _same(v, path, status, m, body)]
        with self.tally.lock:
            if not matching:
                self.tally.bad.append(f"{what}: HTTP {status}, {len(body)} bytes matching no version "
                                      f"(content-range {headers.get('content-range')!r})")
                return
            self.tally.verified += 1
            newest = self.newest.get(title, -1)
            final = self.cat.final.get(title)
            # Stale only if every version it could be is older than one already served; and what is
            # known served is only the oldest it could be.
            best = max(matching, key=lambda v: v.gen)
            if best.gen < newest:
                self.tally.stale.append(f"{what}: served {best.version} after {title} generation {newest}")
            elif final is not None and all(v.version != final for v in matching):
                self.tally.stale.append(f"{what}: served {best.version} once the plan holding {final} was done")
            self.newest[title] = max(newest, min(v.gen for v in matching))


class Plan:
    """Generations of the desired fill: each one a new version of every title."""

    def __init__(self, root: Path, origin: Origin, keys: Any, watcher: Watcher, edge: Edge, cat: Catalogue,
                 rng: random.Random) -> None:
        self.root, self.origin, self.keys, self.watcher, self.edge = root, origin, keys, watcher, edge
        self.cat, self.rng = cat, rng
        self.gen = 0
        self.env_id = ""
        self.current: dict[str, Version] = {}

    def publish_next(self) -> None:
        self.gen += 1
        refs = []
        for title in TITLES:
            version = f"g{self.gen:04d}"
            files = {"hls/master.m3u8": b"#EXTM3U\n#" + self.rng.randbytes(self.rng.randrange(200, 400)).hex().encode()
                     + b"\n",
                     "hls/init.mp4": self.rng.randbytes(self.rng.randrange(800, 3000))}
            for i in range(SEGMENTS):
                files[f"hls/seg_{i:02d}.m4s"] = self.rng.randbytes(self.rng.randrange(100_000, 300_000))
            build_file_set(self.root, self.keys.signer, title, version, files)
            v = Version(title, version, self.gen, {p: (len(b), sha256(b)) for p, b in files.items()},
                        self.root / "good" / title / version)
            self.cat.add(v)
            self.current[title] = v
            refs.append(FileSetRef(title, version, f"{self.origin.url}/manifests/{title}/{version}.json",
                                   sum(len(b) for b in files.values()),
                                   [FillSource(f"{self.origin.url}/good/{title}/{version}", "origin")]))
        self.env_id = f"fill-gen-{self.gen}"
        publish_desired(self.watcher, self.edge.name, "fill", DesiredFill(self.gen, refs, rate_limit_bps=RATE_BPS),
                        self.env_id)

    def done(self) -> bool:
        return any(getattr(a, "command_id", None) == self.env_id and a.status == "done"
                   for a in self.watcher.bodies("/acks"))

    def failed(self) -> list[str]:
        return [a.reason for a in self.watcher.bodies("/acks")
                if getattr(a, "command_id", None) == self.env_id and a.status == "failed"]


def check_disk(cache: Path, cat: Catalogue) -> list[str]:
    """With the edge dead: whatever ``served.json`` names is complete and verified, and nothing under
    ``sets/`` differs from its manifest (an evicted set may be half deleted, never half written)."""
    problems: list[str] = []
    try:
        served = json.loads((cache / "served.json").read_text())
    except FileNotFoundError:
        served = {}
    for title, version in served.items():
        v = cat.versions.get(title, {}).get(version)
        if v is None:
            problems.append(f"served.json names unknown {title}/{version}")
            continue
        for path, (size, digest) in v.files.items():
            f = cache / "sets" / title / version / path
            if not f.is_file():
                problems.append(f"served {title}/{version} lacks {path}")
            elif f.stat().st_size != size or sha256(f.read_bytes()) != digest:
                problems.append(f"served {title}/{version}/{path} does not match its manifest")
    sets = cache / "sets"
    for f in sets.rglob("*") if sets.is_dir() else ():
        if not f.is_file():
            continue
        parts = f.relative_to(sets).parts
        v = cat.versions.get(parts[0], {}).get(parts[1]) if len(parts) > 2 else None
        entry = v.files.get("/".join(parts[2:])) if v else None
        if entry is None:
            problems.append(f"unexpected file under sets/: {f.relative_to(cache)}")
        elif f.stat().st_size != entry[0] or sha256(f.read_bytes()) != entry[1]:
            problems.append(f"{f.relative_to(cache)} under sets/ does not match its manifest")
    return problems


def partial_fill(cache: Path, cat: Catalogue) -> tuple[set[tuple[str, str, str]], int]:
    """Files a killed fill left behind: verified ones at their final name, and ``.part`` bytes."""
    kept: set[tuple[str, str, str]] = set()
    part_bytes = 0
    fill = cache / "fill"
    for f in fill.rglob("*") if fill.is_dir() else ():
        if not f.is_file():
            continue
        parts = f.relative_to(fill).parts
        if f.name.endswith(".part"):
            part_bytes += f.stat().st_size
            continue
        v = cat.versions.get(parts[0], {}).get(parts[1]) if len(parts) > 2 else None
        rel = "/".join(parts[2:])
        entry = v.files.get(rel) if v else None
        if entry and f.stat().st_size == entry[0] and sha256(f.read_bytes()) == entry[1]:
            kept.add((parts[0], parts[1], rel))
    return kept, part_bytes


_ORIGIN_FILE = re.compile(r"/good/([^/]+)/([^/]+)/(.+)")


def settle(pending: set[tuple[str, str, str]], requests: list[tuple[str, str]], cache: Path,
           detail: dict[str, Any]) -> None:
    """Account for files a kill left verified in ``fill/``: fetched again (wasted), or part of a set
    that completed around them (kept: the fill resumed)."""
    for path, rng_header in requests:
        m = _ORIGIN_FILE.fullmatch(path)
        if m is None:
            continue
        if rng_header:
            detail["range_resumes"] += 1
        key = (m.group(1), m.group(2), m.group(3))
        if key in pending:
            pending.discard(key)
            detail["files_refetched"] += 1
    for key in list(pending):
        if (cache / "sets" / key[0] / key[1] / key[2]).is_file():
            pending.discard(key)
            detail["files_kept"] += 1


def _healthy(edge: Edge) -> bool:
    try:
        return http_get(f"{edge.url}/healthz", timeout=0.5).status == 200
    except (OSError, HTTPException):
        return False


def run(trials: int, seed: int, workdir: Path) -> ScenarioResult:
    started = time.monotonic()
    rng = random.Random(seed)
    result = ScenarioResult(NAME, trials)
    tally = Tally()
    cat = Catalogue()
    detail: dict[str, Any] = {"kills": 0, "kills_in_startup": 0, "kills_leaving_partial_fill": 0,
                              "files_kept": 0, "files_refetched": 0, "range_resumes": 0, "plans_done": 0,
                              "plans_replaced_mid_fill": 0}
    with Stack(workdir) as stack:
        broker = stack.broker()
        keys = make_keys(workdir / "keys")
        origin = stack.origin(workdir / "origin")
        gen_bytes = len(TITLES) * (SEGMENTS * 200_000 + 4000)
        edge = stack.edge("edge-kf", broker.port, keys, {
            "cache": {"capacity_bytes": 3 * gen_bytes + gen_bytes // 2},
            "fill": {"concurrency": 2, "retry_s": 1.0}})
        watcher = stack.watcher(broker.port, f"nearcast/v1/appliances/{edge.name}/acks")
        plan = Plan(workdir / "origin", origin, keys, watcher, edge, cat, rng)
        plan.publish_next()
        reader = Reader(edge, origin, cat, tally, seed + 1)
        reader.start()
        startup_s = 1.5  # how long a start takes here, measured as it goes
        pending: set[tuple[str, str, str]] = set()  # files a kill left verified in fill/, not yet refetched
        try:
            for trial in range(trials):
                if plan.done():
                    detail["plans_done"] += 1
                    plan.publish_next()
                elif trial and rng.random() < NEW_PLAN_MID_FILL:
                    detail["plans_replaced_mid_fill"] += 1
                    plan.publish_next()
                mark = origin.log.mark()
                edge.spawn()
                spawned = time.monotonic()
                if rng.random() < STARTUP_KILL_SHARE:  # somewhere in start-up (recovery, re-verification)
                    time.sleep(rng.uniform(0.05, startup_s))
                    healthy = _healthy(edge)
                else:  # somewhere in the fills, evictions and swaps that follow
                    edge.wait_healthy()
                    startup_s = 0.7 * startup_s + 0.3 * (time.monotonic() - spawned)
                    time.sleep(rng.uniform(*KILL_WINDOW_S))
                    healthy = True
                code = edge.kill()
                detail["kills"] += 1
                if code != -9:
                    result.failures.append(f"trial {trial}: the edge had exited with {code} before the kill:\n"
                                           f"{edge.log()}")
                    break
                if not healthy:
                    detail["kills_in_startup"] += 1
                settle(pending, origin.log.since(mark), edge.cache_dir, detail)
                for problem in check_disk(edge.cache_dir, cat):
                    result.failures.append(f"trial {trial}: {problem}")
                kept, part_bytes = partial_fill(edge.cache_dir, cat)
                if kept - pending or part_bytes:
                    detail["kills_leaving_partial_fill"] += 1
                pending |= kept
            # Undisturbed: the last plan completes and is served whole, and only it.
            mark = origin.log.mark()
            edge.start()
            until(lambda: plan.done() or plan.failed(), 120, f"the last plan to finish; edge log:\n{edge.log()}")
            if plan.failed():
                result.failures.append(f"the last plan failed: {plan.failed()}")
            detail["plans_done"] += 1
            with cat.lock:
                cat.final.update({t: v.version for t, v in plan.current.items()})
            for title, v in plan.current.items():
                tok = edge.token(f"{title}/")
                for path, (_size, digest) in v.files.items():
                    resp = http_get(edge.content_url(tok, title, path))
                    if resp.status != 200 or sha256(resp.body) != digest:
                        result.failures.append(f"after the last plan: {title}/{path} answered {resp.status} "
                                               f"with {len(resp.body)} bytes not matching {v.version}")
            time.sleep(0.5)  # a last stretch of reads with the final versions pinned
            settle(pending, origin.log.since(mark), edge.cache_dir, detail)
            mark = origin.log.mark()
            code = edge.stop()
            if code != 0:
                result.failures.append(f"the edge exited with {code} on SIGTERM")
        except AssertionError as exc:
            result.failures.append(str(exc)[:4000])
        finally:
            reader.stop_event.set()
            reader.join(10)
    with tally.lock:
        result.failures += [f"bad serve: {b}" for b in tally.bad[:50]]
        result.failures += [f"stale serve: {s}" for s in tally.stale[:50]]
        result.failures += [f"server error: {e}" for e in tally.errors[:50]]
        result.detail = {"bad_serves": len(tally.bad), "stale_serves": len(tally.stale),
                         "server_errors": len(tally.errors), "verified_serves": tally.verified,
                         "misses": tally.misses, "cut_requests": tally.cut, **detail}
    result.seconds = time.monotonic() - started
    return result


SCENARIO = Scenario(
    name=NAME,
    description="SIGKILL an edge at random moments while it fills (and evicts, and replaces stale versions); "
                "a reader checks every body served against the manifests",
    run=run,
    fast_trials=4,
    full_trials=200,
)
