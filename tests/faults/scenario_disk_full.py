"""Fill an edge's disk at random moments; fills must stop with a clear status, serving must go on.

Real processes: a private Mosquitto, an HTTP origin (paced, so a fill lasts about a second), one
``nearcast edge serve`` whose cache lives on a real 8 MiB tmpfs (mounting it needs root; without root
the scenario reports ``skipped``), shared with a ballast file (someone else's data) that the edge's
5 MiB capacity setting knows nothing about.  A keeper set is filled first and must be served intact throughout.

Each trial publishes a plan holding the keeper and a new set of random size (the previous trial's set
drops out of the plan, so it may be evicted for room), and writes a ballast file onto the filesystem:

* ``before``: before the plan, large enough that the new set cannot fit even after evicting every
  earlier set: the fill must fail with ``disk full`` before fetching any of the set's files;
* ``during``: at a random moment while the set downloads, leaving almost nothing free: the fill stops
  (ENOSPC mid-write) or had just finished;
* ``none``: no ballast: the set must fill.

Checked after each final ack: a failure says ``disk full`` (ack reason, ``stopped`` detail, ``/healthz``
``disk: full``, ``nearcast_edge_cache_disk_full`` 1); no ``.part`` file and nothing of the failed set
is left visible or served; the keeper is served intact; then the ballast goes and the next retry fills
the set, which is then served intact, and the status clears.
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import threading
import time
from http.client import HTTPException
from pathlib import Path
from typing import Any

from shared.messages import Ack, DesiredFill, FileSetRef, FillSource
from tests.edge.conftest import build_file_set
from tests.faults.harness import (
    Edge,
    Origin,
    Stack,
    Watcher,
    http_get,
    make_keys,
    metric_sum,
    metrics,
    publish_desired,
    sha256,
    until,
)
from tests.faults.scenario import Scenario, ScenarioResult

NAME = "disk_full"
FS_SIZE = 8 << 20
RESERVE = 128 << 10
#: Sets held stay within this, so the disk fills only with the ballast (someone else's data on a shared
#: disk); the budget still promises more than is free once the ballast is there.
CAPACITY = 5 << 20
ORIGIN_RATE = 512 << 10  # bytes/s per response (4 at once): a 2 MB set takes about a second
MODES = ("before", "during", "none")


def mount_tmpfs(where: Path, size: int) -> str:
    """'' when mounted, else why not."""
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs"
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    return "" if done.returncode == 0 else f"cannot mount a tmpfs: {done.stderr.strip()[:200]}"


def free_bytes(where: Path) -> int:
    st = os.statvfs(where)
    return st.f_bavail * st.f_frsize


def write_ballast(path: Path, nbytes: int) -> int:
    """Up to ``nbytes`` of someone else's data on the filesystem (less if it fills first); returns the size."""
    written = 0
    chunk = b"\0" * (64 << 10)
    try:
        with open(path, "wb") as fh:
            while written < nbytes:
                written += fh.write(chunk[:nbytes - written])
            fh.flush()
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    return written


def held_beyond_plan(fs: Path) -> int:
    """Bytes on disk of earlier trials' sets (outside the new plan: evicting them makes room)."""
    sets = fs / "cache" / "sets"
    return sum(-(-f.stat().st_size // 4096) * 4096 for f in sets.rglob("*")
               if f.is_file() and f.relative_to(sets).parts[0] != "keep")


def make_set(rng: random.Random, title: str, total: int) -> dict[str, bytes]:
    files = {f"{title}/master.m3u8": b"#EXTM3U\n#" + rng.randbytes(64).hex().encode() + b"\n"}
    n = 4
    for i in range(n):
        files[f"{title}/seg_{i}.m4s"] = rng.randbytes(total // n)
    return files


class Keeper(threading.Thread):
    """Reads the keeper set over and over: every answer must be a 200 with the manifest's bytes."""

    def __init__(self, edge: Edge, title: str, files: dict[str, bytes]) -> None:
        super().__init__(name="disk-full-keeper", daemon=True)
        self.edge, self.title, self.files = edge, title, files
        self.token = edge.token(f"{title}/")
        self.stop_event = threading.Event()
        self.served = 0
        self.problems: list[str] = []

    def run(self) -> None:
        paths = sorted(self.files)
        i = 0
        while not self.stop_event.is_set():
            path = paths[i % len(paths)]
            i += 1
            try:
                resp = http_get(self.edge.content_url(self.token, self.title, path), timeout=5)
            except (OSError, HTTPException) as exc:
                self.problems.append(f"keeper {path}: {exc}")
                continue
            if resp.status != 200 or sha256(resp.body) != sha256(self.files[path]):
                self.problems.append(f"keeper {path}: HTTP {resp.status}, {len(resp.body)} bytes")
            else:
                self.served += 1
            time.sleep(0.02)


def final_acks(watcher: Watcher, env_id: str) -> list[Ack]:
    return [a for a in watcher.bodies("/acks") if a.command_id == env_id and a.status in ("done", "failed")]


def health(edge: Edge) -> dict[str, Any]:
    resp = http_get(f"{edge.url}/healthz", timeout=5)
    return dict(json.loads(resp.body))


def run(trials: int, seed: int, workdir: Path) -> ScenarioResult:
    started = time.monotonic()
    rng = random.Random(seed)
    result = ScenarioResult(NAME, trials)
    detail: dict[str, Any] = {**{f"mode_{m}": 0 for m in MODES}, "disk_full_reported": 0, "stopped_mid_fetch": 0,
                              "resumed": 0, "filled_first_time": 0, "evicted_for_room": 0, "keeper_serves": 0,
                              "before_deferred": 0}
    fs = workdir / "edge-fs"
    why = mount_tmpfs(fs, FS_SIZE)
    if why:
        result.trials = 0
        result.detail = {"skipped": why}
        return result
    try:
        with Stack(workdir) as stack:
            broker = stack.broker()
            keys = make_keys(workdir / "keys")
            root = workdir / "origin"
            origin: Origin = stack.origin(root, rate_bytes_s=ORIGIN_RATE)
            edge = stack.edge("edge-df", broker.port, keys, {
                "cache": {"dir": fs / "cache", "capacity_bytes": CAPACITY, "reserve_bytes": RESERVE},
                "fill": {"retry_s": 0.5}, "telemetry": {"interval_s": 1.0}})
            watcher = stack.watcher(broker.port, f"nearcast/v1/appliances/{edge.name}/acks")

            def ref(title: str, files: dict[str, bytes]) -> FileSetRef:
                build_file_set(root, keys.signer, title, "v1", files)
                return FileSetRef(title, "v1", f"{origin.url}/manifests/{title}/v1.json",
                                  sum(len(b) for b in files.values()),
                                  [FillSource(f"{origin.url}/good/{title}/v1", "origin")])

            keeper_files = make_set(rng, "keep", 300_000)
            keeper_ref = ref("keep", keeper_files)
            edge.start()
            publish_desired(watcher, edge.name, "fill", DesiredFill(1, [keeper_ref]), "df-1")
            until(lambda: final_acks(watcher, "df-1"), 60, f"the keeper's fill; edge log:\n{edge.log()}")
            keeper = Keeper(edge, "keep", keeper_files)
            keeper.start()
            ballast = fs / "ballast"
            try:
                order = list(MODES)  # every mode within the first three trials, then at random
                rng.shuffle(order)
                for trial in range(trials):
                    mode = order[trial] if trial < len(order) else MODES[rng.randrange(len(MODES))]
                    if mode == "before" and held_beyond_plan(fs) + (768 << 10) > CAPACITY - keeper_ref.size:
                        # A set that cannot fit on the disk would have to outgrow the capacity budget too
                        # (and fail for that instead): held sets first make way, as the other modes do.
                        mode = "during"
                        detail["before_deferred"] += 1
                    detail[f"mode_{mode}"] += 1
                    title = f"n{trial:03d}"
                    total = rng.randrange(1_000_000, 2_500_000)
                    if mode == "before":  # the ballast leaves `left` free: too little even with earlier sets evicted
                        left = rng.randrange(16 << 10, 256 << 10)
                        want = free_bytes(fs) - RESERVE - left
                        if write_ballast(ballast, want) < want:
                            result.failures.append(f"trial {trial}: could not write a {want}-byte ballast")
                        total = held_beyond_plan(fs) + left + rng.randrange(64 << 10, 512 << 10)
                    files = make_set(rng, title, total)
                    new_ref = ref(title, files)
                    mark = origin.log.mark()
                    env_id = f"df-{trial + 2}"
                    publish_desired(watcher, edge.name, "fill", DesiredFill(trial + 2, [keeper_ref, new_ref]),
                                    env_id)
                    if mode == "during":
                        time.sleep(rng.uniform(0.1, 0.6))
                        write_ballast(ballast, free_bytes(fs) - (16 << 10))
                    until(lambda: final_acks(watcher, env_id), 60,  # noqa: B023 - waited on at once
                          f"trial {trial}: the plan's first walk; edge log:\n{edge.log()}")
                    first = final_acks(watcher, env_id)[0]
                    token = edge.token(f"{title}/")
                    if first.status == "failed":
                        check_failed(result, trial, edge, fs, first, title, token, files)
                        detail["disk_full_reported"] += 1
                        fetched = [p for p, _ in origin.log.since(mark) if p.startswith(f"/good/{title}/")]
                        if mode == "before" and fetched:
                            result.failures.append(f"trial {trial}: {len(fetched)} file(s) fetched although "
                                                   "the disk was known to be full")
                        if fetched:
                            detail["stopped_mid_fetch"] += 1
                        ballast.unlink(missing_ok=True)
                        until(lambda: final_acks(watcher, env_id)[-1].status == "done", 60,  # noqa: B023
                              f"trial {trial}: the fill to resume once there is room; edge log:\n{edge.log()}")
                        detail["resumed"] += 1
                    elif mode == "before":
                        result.failures.append(f"trial {trial}: the set filled although it could not fit")
                    else:
                        detail["filled_first_time"] += 1
                    ballast.unlink(missing_ok=True)
                    for path, body in files.items():
                        resp = http_get(edge.content_url(token, title, path))
                        if resp.status != 200 or sha256(resp.body) != sha256(body):
                            result.failures.append(f"trial {trial}: {title}/{path} answered {resp.status} "
                                                   "after the fill was done")
                    h = health(edge)
                    if h.get("disk") != "ok" or metric_sum(metrics(edge.url), "nearcast_edge_cache_disk_full"):
                        result.failures.append(f"trial {trial}: the disk-full status did not clear: {h}")
                detail["evicted_for_room"] = int(metric_sum(metrics(edge.url), "nearcast_edge_evictions_total",
                                                            reason="disk"))
            finally:
                keeper.stop_event.set()
                keeper.join(10)
                detail["keeper_serves"] = keeper.served
                result.failures += keeper.problems[:20]
            if edge.stop() != 0:
                result.failures.append("the edge did not exit cleanly on SIGTERM")
    except AssertionError as exc:
        result.failures.append(str(exc)[:4000])
    finally:
        subprocess.run(["umount", "-l", str(fs)], check=False)
    result.detail = detail
    result.seconds = time.monotonic() - started
    return result


def check_failed(result: ScenarioResult, trial: int, edge: Edge, fs: Path, ack: Ack, title: str, token: str,
                 files: dict[str, bytes]) -> None:
    """A fill stopped for lack of disk says so everywhere and leaves nothing partial visible."""
    where = f"trial {trial}"
    if "disk full" not in ack.reason or not str(ack.detail.get("stopped", "")).startswith("disk full"):
        result.failures.append(f"{where}: failed without saying disk full: {ack.reason!r} {ack.detail}")
    h = health(edge)
    if h.get("disk") != "full" or "disk full" not in str(h.get("disk_detail")):
        result.failures.append(f"{where}: /healthz does not say the disk is full: {h}")
    if metric_sum(metrics(edge.url), "nearcast_edge_cache_disk_full") != 1:
        result.failures.append(f"{where}: nearcast_edge_cache_disk_full is not 1")
    parts = list(fs.rglob("*.part"))
    if parts:
        result.failures.append(f"{where}: temp files left: {[p.name for p in parts]}")
    if (fs / "cache" / "sets" / title).exists():
        result.failures.append(f"{where}: {title} is under sets/ though its fill failed")
    for path in files:
        status = http_get(edge.content_url(token, title, path)).status
        if status != 404:
            result.failures.append(f"{where}: {title}/{path} answered {status} though its fill failed")


SCENARIO = Scenario(
    name=NAME,
    description="fill an edge's disk (a real tmpfs) before or during fills; fills stop saying 'disk full', "
                "nothing partial is visible, serving goes on, fills resume once there is room",
    run=run,
    fast_trials=3,
    full_trials=12,
)
