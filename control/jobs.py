"""Ingest jobs: the encoding pipeline run one job at a time behind a small bounded queue.

The pipeline already spreads one job over every core, so jobs run strictly one after another;
a second job for a title that is queued or running is refused (the pipeline leaves per-title
serialisation to its caller).  Job records live in memory and in a small JSON journal so that
``title jobs`` still answers after a restart; a job the restart interrupted is marked failed
rather than silently forgotten.  Publishing (sign the file set, record the title) is a callback,
so this module knows nothing of HTTP or the store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from control.encode.errors import IngestCancelled, one_line
from control.encode.fileset import sweep_staging
from control.encode.pipeline import ingest
from control.encode.spec import IngestSpec
from shared.errors import Conflict, NearcastError, NotFound
from shared.files import write_atomic
from shared.ids import new_id
from shared.tasks import TaskGroup

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
ACTIVE: frozenset[str] = frozenset({"queued", "running"})
#: Finished jobs kept in the journal; older ones are dropped (their titles are in the store).
KEEP_FINISHED = 200
OPERATOR_CANCEL = "cancelled by an operator"

Publish = Callable[[str, str], Awaitable[str]]
"""``publish(title_id, actor) -> version``: sign and record a title the pipeline just published."""


class QueueFull(NearcastError):
    """Refused rather than queued: the encoder farm is already booked for a while."""

    http_status = 503


@dataclass
class Job:
    job_id: str
    title_id: str
    name: str
    spec: dict[str, Any]
    source: str
    actor: str
    created: float
    state: JobState = "queued"
    stage: str = "queued"
    progress: float = 0.0
    error: str | None = None
    version: str | None = None
    started: float | None = None
    finished: float | None = None
    #: The master to delete when the job ends (an upload is consumed by its job); None for a server path.
    consume: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("consume")
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Job:
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


def interrupted(job: Job, now: float) -> Job:
    """A job the journal says was still active when the daemon stopped: it will never finish."""
    if job.state in ACTIVE:
        job.state, job.stage, job.finished = "failed", "interrupted", now
        job.error = "interrupted by a control plane restart; run the ingest again"
    return job


def trim(jobs: list[Job], keep: int = KEEP_FINISHED) -> list[Job]:
    """All active jobs and the newest ``keep`` finished ones, oldest first."""
    finished = sorted((j for j in jobs if j.state not in ACTIVE), key=lambda j: j.created)
    drop = {j.job_id for j in finished[:max(0, len(finished) - keep)]}
    return [j for j in jobs if j.job_id not in drop]


def describe_failure(exc: BaseException) -> str:
    """The one-line reason an operator sees; our own errors say it already, others are bugs."""
    if isinstance(exc, NearcastError):
        return one_line(str(exc))
    return one_line(f"internal error: {exc.__class__.__name__}: {exc}")


@dataclass
class _Running:
    job: Job
    cancel: threading.Event = field(default_factory=threading.Event)
    reason: str = "cancelled"


class IngestJobs:
    """The queue and the one worker; ``start``/``stop`` bracket the daemon's life."""

    def __init__(self, origin_dir: Path, keys_dir: Path, journal: Path, publish: Publish, *,
                 queue_max: int = 8, workers: int | None = None) -> None:
        self.origin_dir = origin_dir
        self.keys_dir = keys_dir
        self.journal = journal
        self.publish = publish
        self.queue_max = queue_max
        self.workers = workers
        self._jobs: dict[str, Job] = {}
        self._specs: dict[str, IngestSpec] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._save_lock = asyncio.Lock()
        self._running: _Running | None = None
        self._tasks = TaskGroup("ingest")
        self._idle = asyncio.Event()
        self._idle.set()

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Forget staging trees a killed job left, reload the journal, start the worker."""
        removed = await asyncio.to_thread(sweep_staging, self.origin_dir)
        if removed:
            log.info("removed %d unfinished ingest staging tree(s)", len(removed))
        now = time.time()
        for job in await asyncio.to_thread(self._load):
            self._jobs[job.job_id] = interrupted(job, now)
        await self._save()
        self._tasks.spawn(self._worker(), name="worker")

    async def stop(self, timeout: float = 30.0) -> None:
        """Cancel what runs (the pipeline stops its processes), then end the worker."""
        for job in list(self._jobs.values()):
            if job.state == "queued":  # its upload is kept: the operator can submit it again
                self._finish(job, "cancelled", "cancelled: the control plane shut down", consume=False)
        if self._running is not None:
            self._running.reason = "cancelled: the control plane shut down"
            self._running.cancel.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("ingest job still running after %.0fs of shutdown", timeout)
        await self._tasks.aclose()
        await self._save()

    # -- operations ------------------------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)

    def get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFound(f"no ingest job {job_id!r}") from None

    async def submit(self, spec: IngestSpec, master: Path, *, source: str, actor: str,
                     consume: bool = False) -> Job:
        """Queue an ingest of ``master``; refused if the title is busy, published, or the queue full."""
        busy = next((j for j in self._jobs.values() if j.title_id == spec.title_id and j.state in ACTIVE), None)
        if busy is not None:
            raise Conflict(f"title {spec.title_id!r} already has ingest job {busy.job_id} ({busy.state})")
        if consume and any(j.consume == str(master) for j in self._jobs.values() if j.state in ACTIVE):
            raise Conflict(f"{master.name} is already being ingested")
        if (self.origin_dir / spec.title_id).exists():
            raise Conflict(f"title {spec.title_id!r} already exists in the origin store")
        if sum(1 for j in self._jobs.values() if j.state == "queued") >= self.queue_max:
            raise QueueFull(f"the ingest queue is full ({self.queue_max} jobs waiting); try again later")
        spec_doc = {"genres": list(spec.genres), "codecs": list(spec.codecs), "ladder": spec.ladder,
                    "segment_seconds": spec.segment_seconds, "encrypt": spec.encrypt}
        job = Job(new_id(), spec.title_id, spec.name, spec_doc, source, actor, time.time(),
                  consume=str(master) if consume else None)
        job.spec["master"] = str(master)
        self._jobs[job.job_id] = job
        self._specs[job.job_id] = spec
        await self._save()
        self._queue.put_nowait(job.job_id)
        return job

    async def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.state == "queued":
            self._finish(job, "cancelled", "cancelled before it started")
            await self._save()
        elif job.state == "running" and self._running is not None and self._running.job is job:
            self._running.reason = OPERATOR_CANCEL
            self._running.cancel.set()
            job.stage = "cancelling"
        else:
            raise Conflict(f"ingest job {job_id} already ended ({job.state})")
        return job

    # -- the worker ------------------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            job_id = await self._queue.get()
            job = self._jobs.get(job_id)
            spec = self._specs.pop(job_id, None)
            if job is None or spec is None or job.state != "queued":
                continue
            self._idle.clear()
            try:
                await self._run(job, spec)
            finally:
                self._running = None
                self._idle.set()

    async def _run(self, job: Job, spec: IngestSpec) -> None:
        running = self._running = _Running(job)
        loop = asyncio.get_running_loop()
        job.state, job.stage, job.started = "running", "probe", time.time()
        await self._save()

        def progress(stage: str, fraction: float) -> None:
            loop.call_soon_threadsafe(self._progress, job, stage, fraction)

        master = Path(job.spec["master"])
        try:
            await asyncio.to_thread(ingest, master, self.origin_dir, self.keys_dir, spec, progress=progress,
                                    cancel=running.cancel)
            job.stage = "register"
            job.version = await self.publish(job.title_id, job.actor)
        except IngestCancelled:
            self._finish(job, "cancelled", running.reason, consume=running.reason == OPERATOR_CANCEL)
        except Exception as exc:
            if not isinstance(exc, NearcastError):
                log.exception("ingest job %s failed", job.job_id)
            self._finish(job, "failed", describe_failure(exc))
        else:
            self._finish(job, "done", None)
        await self._save()

    def _progress(self, job: Job, stage: str, fraction: float) -> None:
        if job.state == "running" and job.stage != "cancelling":
            job.stage = stage
        job.progress = max(job.progress, min(1.0, max(0.0, float(fraction))))

    def _finish(self, job: Job, state: JobState, error: str | None, *, consume: bool = True) -> None:
        job.state, job.error, job.finished = state, error, time.time()
        if state == "done":
            job.stage, job.progress = "done", 1.0
        elif job.stage != "interrupted":
            job.stage = state
        if consume and job.consume is not None:
            Path(job.consume).unlink(missing_ok=True)

    # -- the journal -----------------------------------------------------------------------------------
    def _load(self) -> list[Job]:
        try:
            doc = json.loads(self.journal.read_text())
            return [Job.from_json(d) for d in doc["jobs"]]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            bad = self.journal.with_name(self.journal.name + ".corrupt")
            log.error("ingest journal %s unreadable (%s); kept as %s", self.journal, exc, bad)
            os.replace(self.journal, bad)
            return []

    async def _save(self) -> None:
        # One journal write at a time: two requests saving at once would otherwise race on the
        # temporary file.  The snapshot is taken under the lock, so the last write holds the newest state.
        async with self._save_lock:
            kept = trim(list(self._jobs.values()))
            self._jobs = {j.job_id: j for j in kept}
            doc = {"jobs": [{**j.to_json(), "consume": j.consume} for j in kept]}
            await asyncio.to_thread(write_atomic, self.journal, json.dumps(doc))

