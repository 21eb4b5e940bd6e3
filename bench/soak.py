"""Soak: the demo topology under steady client load; RSS, open fds, asyncio tasks and threads over time.

Starts ``nearcast demo`` as a child (its own state directory, a free API port; the demo picks free
ports for the broker and the edges), waits until its sample titles are ready, then runs ``--clients``
simulated viewers for ``--minutes``.  Each viewer, from its own loopback address in ISP 1 or ISP 2
(half each), loops as one of the demo's profiles with a history (a different one each time): its
homepage the way the web page loads it (``/v1/edges``, then the first edge's
``/v1/home/{profile}``), a ``play_start`` event, one real ABR session of a random sample title
(steered by ``/v1/play``, segments from the edge: the players of ``bench/e2e.py``), then ``complete``
and ``qoe`` events, then ``--pause`` seconds.

Every ``--interval`` seconds it samples every process in the demo's tree: the demo process itself
(it hosts the embedded MQTT broker), the control plane, each edge, and any worker process:

- RSS (``VmRSS``) and threads from ``/proc/<pid>/status``, open fds (entries of ``/proc/<pid>/fd``);
- for the daemons, their ``/metrics``: ``process_resident_memory_bytes`` and ``process_open_fds``
  (a cross-check of the /proc figures) and ``nearcast_asyncio_tasks``.

It prints one row per sample as it goes, then per process the median of the first quarter and of
the last quarter of the measured window, and the change.  The measured window starts after
``--warmup`` seconds of load (default 60 s, at most a quarter of the run): the first minute fills
what is bounded but starts empty (the edges' memory cache of manifests and init segments, their
remembered request heads and rendered answers, the control plane's per-profile rows and title
tables, SQLite's page caches, the clients' first connections), and the allocator's arenas grow to
the working set.  What grows after that is what a leak looks like.  RSS and open fds PASS when the
change is within ``--limit`` % (default 10) either way; task and thread counts are reported beside
them.  Client side: requests, errors and p50/p99 latency by kind, and the sessions played.

    .venv/bin/python bench/soak.py [--minutes 10] [--interval 10] [--clients 20] [--json soak.json]

Exit status 1 when a gated figure FAILs, a daemon died, or a request failed.  ``--no-titles`` starts
the demo without its sample titles and runs only homepages and events (a quick check of the
harness, in seconds; the test suite runs it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.e2e import BUFFER_S, start_demo  # noqa: E402
from nearcast.abr.cli import steer  # noqa: E402
from nearcast.abr.player import PlaybackFailed, Player, PlayerOptions  # noqa: E402
from nearcast.abr.qoe import QoeLog  # noqa: E402
from nearcast.demo_titles import SAMPLES  # noqa: E402
from shared.broker import free_port  # noqa: E402
from shared.tasks import TaskGroup  # noqa: E402

#: Figures the verdict is on (the issue's acceptance: flat RSS and file-descriptor counts).
GATED = ("rss_bytes", "fds")
FIGURES = ("rss_bytes", "fds", "tasks", "threads")
#: Seconds between the last viewer stopping and the idle sample after the load.
SETTLE_S = 3.0
#: Profiles with a viewing history in the demo (``demo_titles.synthetic_history``).
PROFILES = 240


# -- what a sample is ---------------------------------------------------------------------------------
@dataclass
class ProcSample:
    pid: int
    rss_bytes: int
    fds: int
    threads: int
    tasks: int | None = None  # nearcast_asyncio_tasks (daemons only)
    metric_rss_bytes: int | None = None  # process_resident_memory_bytes
    metric_fds: int | None = None  # process_open_fds


@dataclass
class Sample:
    t: float  # seconds since the load started
    procs: dict[str, ProcSample]
    requests: int = 0  # client requests finished since the previous sample
    errors: int = 0
    phase: str = "load"  # or idle-before / idle-after (no client running; not in the verdict)


# -- the verdict (pure) -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    first: float  # median over the first quarter of the measured window
    last: float  # median over the last quarter
    change_pct: float
    n: int  # samples in each quarter

    def passes(self, limit_pct: float) -> bool:
        return abs(self.change_pct) <= limit_pct


def quarter_change(values: Sequence[float]) -> Change | None:
    """Median of the first quarter vs median of the last quarter; None under 4 values."""
    if len(values) < 4:
        return None
    q = len(values) // 4
    first, last = statistics.median(values[:q]), statistics.median(values[-q:])
    pct = (last - first) / first * 100.0 if first else (0.0 if last == 0 else math.inf)
    return Change(float(first), float(last), pct, q)


def slope_per_hour(ts: Sequence[float], values: Sequence[float]) -> float | None:
    """Least-squares slope of ``values`` over ``ts`` (seconds), per hour; None under 2 points."""
    if len(ts) < 2:
        return None
    mt, mv = statistics.fmean(ts), statistics.fmean(values)
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in zip(ts, values, strict=True)) / var * 3600.0


def effective_warmup(warmup_s: float, duration_s: float) -> float:
    return min(warmup_s, duration_s / 4)


def summarize(samples: Sequence[Sample], warmup_s: float, limit_pct: float) -> dict[str, Any]:
    """Per process and figure: first- vs last-quarter medians of the samples at ``t >= warmup_s``.

    A process present in fewer than 4 measured samples (a short-lived worker) gets no verdict; one
    that was present and then vanished is reported as ``gone``.
    """
    measured = [s for s in samples if s.t >= warmup_s]
    names = sorted({n for s in samples for n in s.procs})
    out: dict[str, Any] = {}
    for name in names:
        rows = [(s.t, s.procs[name]) for s in measured if name in s.procs]
        entry: dict[str, Any] = {"samples": len(rows), "figures": {}, "verdict": "n/a"}
        if measured and name in samples[0].procs and name not in measured[-1].procs:
            entry["verdict"] = "gone"
        verdicts: list[bool] = []
        for fig in FIGURES:
            values = [float(getattr(p, fig)) for _, p in rows if getattr(p, fig) is not None]
            change = quarter_change(values)
            if change is None:
                continue
            doc: dict[str, Any] = {**asdict(change), "min": min(values), "max": max(values)}
            if fig in GATED:
                doc["pass"] = change.passes(limit_pct)
                verdicts.append(doc["pass"])
            if fig == "rss_bytes":
                doc["slope_per_hour"] = slope_per_hour([t for t, p in rows], values)
            entry["figures"][fig] = doc
        if verdicts and entry["verdict"] != "gone":
            entry["verdict"] = "PASS" if all(verdicts) else "FAIL"
        out[name] = entry
    return out


def percentile(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return math.nan
    k = min(len(sorted_values) - 1, max(0, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


# -- the client side ----------------------------------------------------------------------------------
@dataclass
class KindStats:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0


class ClientStats:
    """Requests by kind (home, edges, events, play, manifest, segment): latency and errors."""

    def __init__(self) -> None:
        self.kinds: dict[str, KindStats] = {}
        self.sessions: list[QoeLog] = []
        self.failed_sessions = 0
        self.recent_errors: deque[str] = deque(maxlen=10)
        self._interval_requests = 0
        self._interval_errors = 0

    def _kind(self, kind: str) -> KindStats:
        return self.kinds.setdefault(kind, KindStats())

    def ok(self, kind: str, seconds: float) -> None:
        self._kind(kind).latencies.append(seconds)
        self._interval_requests += 1

    def error(self, kind: str, why: str) -> None:
        self._kind(kind).errors += 1
        self._interval_requests += 1
        self._interval_errors += 1
        self.recent_errors.append(f"{kind}: {why}")

    def take_interval(self) -> tuple[int, int]:
        out = (self._interval_requests, self._interval_errors)
        self._interval_requests = self._interval_errors = 0
        return out

    @property
    def errors(self) -> int:
        return sum(k.errors for k in self.kinds.values())

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, Any] = {}
        for name, k in sorted(self.kinds.items()):
            lat = sorted(k.latencies)
            kinds[name] = {"requests": len(lat) + k.errors, "errors": k.errors,
                           "p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000}
        startups = sorted(q.startup_delay_s for q in self.sessions if q.startup_delay_s is not None)
        played = sum(q.played_s for q in self.sessions)
        rebuf = sum(q.rebuffer_s for q in self.sessions)
        return {"kinds": kinds, "requests": sum(v["requests"] for v in kinds.values()), "errors": self.errors,
                "sessions": len(self.sessions), "failed_sessions": self.failed_sessions,
                "segments": sum(len(q.bitrates_bps) for q in self.sessions),
                "startup_p50_s": percentile(startups, 50), "startup_p99_s": percentile(startups, 99),
                "rebuffer_ratio": rebuf / (played + rebuf) if played + rebuf else 0.0,
                "recent_errors": list(self.recent_errors)}


class TimedPlayer(Player):
    """The ABR player, with each HTTP fetch (manifest or segment) timed into :class:`ClientStats`."""

    def __init__(self, urls: list[str], options: PlayerOptions, stats: ClientStats) -> None:
        super().__init__(urls, options)
        self.stats = stats

    async def _fetch(self, http: aiohttp.ClientSession, url: str, *, shaped: bool = True) -> bytes:
        kind = "manifest" if url.split("?", maxsplit=1)[0].endswith(".m3u8") else "segment"
        started = time.monotonic()
        try:
            body = await super()._fetch(http, url, shaped=shaped)
        except (aiohttp.ClientError, TimeoutError, PlaybackFailed) as exc:
            self.stats.error(kind, f"{url}: {exc or type(exc).__name__}")
            raise
        self.stats.ok(kind, time.monotonic() - started)
        return body


async def _timed_json(stats: ClientStats, kind: str, http: aiohttp.ClientSession, method: str, url: str,
                      body: Any = None) -> Any:
    started = time.monotonic()
    try:
        async with http.request(method, url, json=body) as resp:
            doc = await resp.json(content_type=None)
            if resp.status != 200:
                stats.error(kind, f"{method} {url}: HTTP {resp.status} {str(doc)[:200]}")
                return None
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        stats.error(kind, f"{method} {url}: {exc or type(exc).__name__}")
        return None
    stats.ok(kind, time.monotonic() - started)
    return doc


async def _homepage(stats: ClientStats, http: aiohttp.ClientSession, api: str, profile: str) -> None:
    """As ``home.js``: the steered edges, then the first one's re-ranked rows."""
    doc = await _timed_json(stats, "edges", http, "GET", f"{api}/v1/edges")
    edges = doc.get("edges") if isinstance(doc, dict) else None
    if not edges:
        await _timed_json(stats, "home-control", http, "GET", f"{api}/v1/profiles/{profile}/home")
        return
    await _timed_json(stats, "home", http, "GET", f"{edges[0]['url']}/v1/home/{profile}?device=web")


def _event(kind: str, profile: str, title: str, **extra: Any) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "type": kind, "profile_id": profile, "title_id": title, "ts": time.time(),
            "device": "web", **extra}


async def viewer(k: int, api: str, deadline: float, stats: ClientStats, *, play: bool, pause_s: float,
                 seed: int) -> None:
    rng = random.Random(seed * 1000 + k)
    ip = f"127.0.{1 + k % 2}.{10 + k // 2}"
    connector = aiohttp.TCPConnector(local_addr=(ip, 0), limit=4)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=15)) as http:
        while time.monotonic() < deadline:
            # A profile of the demo's history at random each session: the events spread over all of them,
            # so no profile's history (which every homepage of that profile reads) runs away in a long soak.
            profile = f"viewer-{rng.randrange(PROFILES):03d}"
            await _homepage(stats, http, api, profile)
            title = rng.choice(SAMPLES).title_id
            await _timed_json(stats, "events", http, "POST", f"{api}/v1/events",
                              {"events": [_event("play_start", profile, title)]})
            if play:
                await _play(stats, http, api, ip, profile, title)
            await asyncio.sleep(pause_s)


async def _play(stats: ClientStats, http: aiohttp.ClientSession, api: str, ip: str, profile: str,
                title: str) -> None:
    started = time.monotonic()
    try:
        urls = await steer(api, title, ip, None)
    except PlaybackFailed as exc:
        stats.error("play", str(exc))
        stats.failed_sessions += 1
        return
    stats.ok("play", time.monotonic() - started)
    try:
        qoe = await TimedPlayer(urls, PlayerOptions(client_ip=ip, max_buffer_s=BUFFER_S), stats).play()
    except PlaybackFailed as exc:
        stats.failed_sessions += 1
        stats.recent_errors.append(f"session {title} from {ip}: {exc}")
        return
    stats.sessions.append(qoe)
    startup_ms = (qoe.startup_delay_s or 0.0) * 1000
    await _timed_json(stats, "events", http, "POST", f"{api}/v1/events", {"events": [
        _event("complete", profile, title),
        _event("qoe", profile, title, startup_ms=round(startup_ms, 1),
               stalls=sum(1 for r in qoe.rebuffers_s if r > 0), stall_ms=round(qoe.rebuffer_s * 1000, 1),
               switches=qoe.switches, bitrate_kbps=round(qoe.average_bitrate_bps / 1000, 1))]})


# -- the process side ---------------------------------------------------------------------------------
@dataclass
class Proc:
    name: str
    pid: int
    metrics_url: str | None


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(p) for p in (task / "children").read_text().split()]
    return out


def _name(pid: int, demo_pid: int, api: str, cache: dict[int, Proc]) -> Proc:
    """What ``pid`` is: the demo, the control plane, an edge (named as its config file) or a worker."""
    if pid in cache:
        return cache[pid]
    args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    proc = Proc(f"{Path(args[0]).name}:{pid}", pid, None)
    if pid == demo_pid:
        proc = Proc("demo+broker", pid, None)
    elif "serve" in args and "control" in args:
        proc = Proc("control", pid, api)
    elif "serve" in args and "edge" in args and "--config" in args:
        config = Path(args[args.index("--config") + 1])
        port = tomllib.loads(config.read_text())["http"]["port"]
        proc = Proc(config.stem, pid, f"http://127.0.0.1:{port}")
    cache[pid] = proc
    return proc


def read_proc(pid: int) -> ProcSample:
    """RSS and threads from /proc/<pid>/status, open fds from /proc/<pid>/fd (OSError once it is gone)."""
    rss = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return ProcSample(pid, rss, fds, threads)


def read_tree(demo_pid: int, api: str, cache: dict[int, Proc]) -> list[tuple[Proc, ProcSample]]:
    """Every live process in the demo's tree (blocking /proc reads: call from a thread)."""
    out: list[tuple[Proc, ProcSample]] = []
    todo = [demo_pid]
    while todo:
        pid = todo.pop()
        try:
            sample = read_proc(pid)
            proc = _name(pid, demo_pid, api, cache)
        except (OSError, ValueError, KeyError, IndexError, tomllib.TOMLDecodeError):
            continue  # gone (or not yet exec'd) between the listing and the read
        out.append((proc, sample))
        todo += _children(pid)
    return out


def parse_metrics(text: str) -> dict[str, float]:
    wanted = {"process_resident_memory_bytes", "process_open_fds", "nearcast_asyncio_tasks"}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in wanted:
                out[s.name] = s.value
    return out


async def scrape(http: aiohttp.ClientSession, proc: Proc, sample: ProcSample) -> None:
    if proc.metrics_url is None:
        return
    try:
        async with http.get(f"{proc.metrics_url}/metrics") as resp:
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return
    found = parse_metrics(text)
    if "nearcast_asyncio_tasks" in found:
        sample.tasks = int(found["nearcast_asyncio_tasks"])
    if "process_resident_memory_bytes" in found:
        sample.metric_rss_bytes = int(found["process_resident_memory_bytes"])
    if "process_open_fds" in found:
        sample.metric_fds = int(found["process_open_fds"])


async def take_sample(http: aiohttp.ClientSession, demo_pid: int, api: str, cache: dict[int, Proc],
                      t: float) -> Sample:
    tree = await asyncio.to_thread(read_tree, demo_pid, api, cache)
    await asyncio.gather(*(scrape(http, proc, s) for proc, s in tree))
    return Sample(t, {proc.name: s for proc, s in tree})


# -- printing -------------------------------------------------------------------------------------------
def _order(names: list[str]) -> list[str]:
    rank = {"demo+broker": 0, "control": 1}
    return sorted(names, key=lambda n: (rank.get(n, 2 if n.startswith("edge-") else 3), n))


def _cell(p: ProcSample | None) -> str:
    if p is None:
        return f"{'-':>27}"
    tasks = "-" if p.tasks is None else str(p.tasks)
    return f"{p.rss_bytes / 2**20:>8.1f}{p.fds:>5}{tasks:>7}{p.threads:>5}  "


def header(names: list[str]) -> str:
    top = f"{'':>7}{'':>8}{'':>5} " + "".join(f"{n[:25]:^27}" for n in names) + " others"
    sub = f"{'t_s':>7}{'req/s':>8}{'err':>5} " + "".join(f"{'rss_MB':>8}{'fds':>5}{'tasks':>7}{'thr':>5}  "
                                                         for _ in names)
    return top + "\n" + sub


def row(sample: Sample, names: list[str], interval_s: float) -> str:
    others = sorted(set(sample.procs) - set(names))
    rate = f"{sample.requests / interval_s:.1f}" if sample.phase == "load" else sample.phase.split("-")[0]
    return (f"{sample.t:>7.0f}{rate:>8}{sample.errors:>5} " + "".join(_cell(sample.procs.get(n)) for n in names)
            + (f" {len(others)}: " + ", ".join(others) if others else ""))


def summary_lines(summary: dict[str, Any], limit_pct: float) -> list[str]:
    lines = [f"{'process':<16}{'figure':<10}{'first q':>12}{'last q':>12}{'change':>9}{'min':>10}{'max':>10}"
             f"{'slope/h':>10}  verdict"]
    for name in _order(list(summary)):
        entry = summary[name]
        for fig in FIGURES:
            doc = entry["figures"].get(fig)
            if doc is None:
                continue
            scale, unit = (2**20, "MB") if fig == "rss_bytes" else (1, "")
            slope = doc.get("slope_per_hour")
            verdict = ("PASS" if doc["pass"] else "FAIL") if "pass" in doc else "(info)"
            lines.append(f"{name[:15]:<16}{(fig.replace('_bytes', '_MB'))[:9]:<10}{doc['first'] / scale:>12.1f}"
                         f"{doc['last'] / scale:>12.1f}{doc['change_pct']:>+8.1f}%{doc['min'] / scale:>10.1f}"
                         f"{doc['max'] / scale:>10.1f}{'' if slope is None else f'{slope / scale:+.1f}{unit}':>10}"
                         f"  {verdict}")
        if entry["verdict"] in ("gone", "n/a"):
            lines.append(f"{name[:15]:<16}{'':<10}{entry['verdict']} ({entry['samples']} measured samples)")
    return lines


# -- the run ------------------------------------------------------------------------------------------
@dataclass
class Options:
    minutes: float = 10.0
    interval_s: float = 10.0
    warmup_s: float = 60.0
    clients: int = 20
    pause_s: float = 1.0
    limit_pct: float = 10.0
    titles: bool = True
    seed: int = 1


async def run_load(api: str, demo_pid: int, opts: Options, out: Any = sys.stdout) -> dict[str, Any]:
    """Load for ``opts.minutes`` against a running demo, sampling its processes; the report.

    One sample is taken idle before the load and one idle after it (``SETTLE_S`` after the last
    viewer stopped): they stay out of the verdict, and show whether connections and tasks return to
    what they were once the clients have gone.
    """
    duration = opts.minutes * 60
    stats = ClientStats()
    cache: dict[int, Proc] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        before = await take_sample(http, demo_pid, api, cache, 0.0)
        before.phase = "idle-before"
        names = _order([n for n in before.procs if ":" not in n])
        print(header(names), file=out, flush=True)
        print(row(before, names, 0.0), file=out, flush=True)
        samples = [before]
        started = time.monotonic()
        deadline = started + duration
        loaders = TaskGroup("soak")
        for k in range(opts.clients):
            loaders.spawn(viewer(k, api, deadline, stats, play=opts.titles, pause_s=opts.pause_s, seed=opts.seed),
                          name=f"viewer-{k}")
        try:
            k = 1
            while (at := started + k * opts.interval_s) <= deadline + 1e-6:
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                sample = await take_sample(http, demo_pid, api, cache, time.monotonic() - started)
                sample.requests, sample.errors = stats.take_interval()
                samples.append(sample)
                print(row(sample, names, opts.interval_s), file=out, flush=True)
                k += 1
            await asyncio.wait(list(loaders), timeout=30)  # each ends after its session in flight
        finally:
            await loaders.aclose()
        wall = time.monotonic() - started
        await asyncio.sleep(SETTLE_S)
        after = await take_sample(http, demo_pid, api, cache, time.monotonic() - started)
        after.phase = "idle-after"
        after.requests, after.errors = stats.take_interval()
        samples.append(after)
        print(row(after, names, 0.0), file=out, flush=True)
    warmup = effective_warmup(opts.warmup_s, duration)
    summary = summarize([s for s in samples if s.phase == "load"], warmup, opts.limit_pct)
    died = [n for n in names if n not in after.procs]
    idle = {n: {"before": asdict(before.procs[n]), "after": asdict(after.procs[n])} for n in names if n in after.procs}
    return {"options": asdict(opts), "warmup_s": warmup, "wall_s": wall,
            "samples": [asdict(s) for s in samples], "processes": summary, "idle": idle, "clients": stats.summary(),
            "died": died}


def report(result: dict[str, Any], out: Any = sys.stdout) -> bool:
    """Print the summary; True when every gated figure passed, no daemon died and no request failed."""
    opts = result["options"]
    print(f"\nmeasured window: t >= {result['warmup_s']:.0f} s of {opts['minutes'] * 60:.0f} s (warm-up excluded); "
          f"first quarter vs last quarter, medians; RSS and fds gated at +/-{opts['limit_pct']:g} %", file=out)
    for line in summary_lines(result["processes"], opts["limit_pct"]):
        print(line, file=out)
    print(f"\nidle before the load -> idle {SETTLE_S:g} s after it (not gated: caches stay warm; connections "
          f"and tasks should be back)", file=out)
    print(f"{'process':<16}{'rss_MB':>16}{'fds':>12}{'tasks':>12}{'threads':>12}", file=out)
    for name, pair in result["idle"].items():
        b, a = pair["before"], pair["after"]
        print(f"{name[:15]:<16}{b['rss_bytes'] / 2**20:>7.1f} ->{a['rss_bytes'] / 2**20:>6.1f}"
              + "".join(f"{'-' if b[f] is None else b[f]:>6} ->{'-' if a[f] is None else a[f]:>3}"
                        for f in ("fds", "tasks", "threads")), file=out)
    c = result["clients"]
    wall = max(result["wall_s"], 1e-9)
    print(f"\nclients: {opts['clients']} viewers for {wall:.0f} s, {c['requests']} requests "
          f"({c['requests'] / wall:.1f}/s), {c['errors']} errors; sessions {c['sessions']} "
          f"({c['failed_sessions']} failed), segments {c['segments']}"
          + (f", startup p50 {c['startup_p50_s']:.3f} s p99 {c['startup_p99_s']:.3f} s, "
             f"rebuffer ratio {c['rebuffer_ratio']:.4f}" if c["sessions"] else ""), file=out)
    print(f"{'kind':<14}{'requests':>10}{'errors':>8}{'p50_ms':>10}{'p99_ms':>10}", file=out)
    for kind, k in c["kinds"].items():
        print(f"{kind:<14}{k['requests']:>10}{k['errors']:>8}{k['p50_ms']:>10.1f}{k['p99_ms']:>10.1f}", file=out)
    for err in c["recent_errors"]:
        print(f"  error: {err}", file=out)
    verdicts = [e["verdict"] for e in result["processes"].values()]
    if result["died"]:
        print(f"died during the soak: {', '.join(result['died'])}", file=out)
    ok = "FAIL" not in verdicts and not result["died"] and c["errors"] == 0 and c["failed_sessions"] == 0
    print(f"\nsoak: {'PASS' if ok else 'FAIL'}", file=out)
    return ok


class DemoOutput(threading.Thread):
    """Keeps reading the demo's stdout (so it never blocks on a full pipe) and keeps the lines."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        super().__init__(name="demo-stdout", daemon=True)
        self.proc = proc
        self.lines: list[str] = []

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())


def stop_demo(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def soak(state: Path, opts: Options, out: Any = sys.stdout) -> dict[str, Any]:
    """Start the demo, load and sample it, stop it; the report (see :func:`run_load`)."""
    proc, api = start_demo(state, free_port(), titles=opts.titles)
    drain = DemoOutput(proc)
    drain.start()
    try:
        result = asyncio.run(run_load(api, proc.pid, opts, out))
    finally:
        stop_demo(proc)
        drain.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
    result["demo_exit"] = proc.returncode
    result["demo_output"] = drain.lines
    return result


def _finite(doc: Any) -> Any:
    """``doc`` with NaN and infinities as null (strict JSON)."""
    if isinstance(doc, float):
        return doc if math.isfinite(doc) else None
    if isinstance(doc, dict):
        return {str(k): _finite(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [_finite(v) for v in doc]
    return doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=60.0,
                    help="seconds of load left out of the verdict (at most a quarter of the run)")
    ap.add_argument("--clients", type=int, default=20, help="concurrent simulated viewers")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds a viewer waits between sessions")
    ap.add_argument("--limit", type=float, default=10.0, help="largest RSS / fd change that passes, in %%")
    ap.add_argument("--no-titles", action="store_true",
                    help="demo without sample titles: homepages and events only (a quick check of the harness)")
    ap.add_argument("--state-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "nearcast-bench-soak",
                    help="the demo's state (reused: a second run skips encoding)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the whole report (every sample) here as JSON")
    args = ap.parse_args()
    if args.minutes <= 0 or args.interval <= 0 or args.clients < 0:
        ap.error("--minutes and --interval must be positive, --clients not negative")
    opts = Options(minutes=args.minutes, interval_s=args.interval, warmup_s=args.warmup, clients=args.clients,
                   pause_s=args.pause, limit_pct=args.limit, titles=not args.no_titles, seed=args.seed)
    result = soak(args.state_dir, opts)
    ok = report(result)
    if args.json:
        args.json.write_text(json.dumps(_finite(result), indent=1))
        print(f"report written to {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
