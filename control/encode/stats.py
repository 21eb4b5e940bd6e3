"""Where an ingest's time goes: wall and CPU seconds per phase, CPU per worker job.

CPU time (user + system) is what the accounting is for: unlike wall time it means the same on a
machine shared with other work, so it shows what chunking, process start-up or a serial phase
cost even where a wall-clock ratio would mostly measure the neighbours.  Phases are timed in the
ingesting process (all its threads: in the control plane that includes the event loop, so read
the figures from ``bench/encode.py``); jobs are timed inside the worker processes, and the
workers' whole lives (start-up and imports included) from the operating system's account of
ended child processes.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


def cpu_self() -> float:
    """User + system CPU seconds of this process so far (all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_children() -> float:
    """User + system CPU seconds of this process's child processes that have ended and been reaped."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@dataclass(frozen=True)
class JobTime:
    """One job in a worker process: its kind (the job's class), CPU seconds, and when it ran."""

    kind: str
    cpu: float
    start: float  # time.time() in the worker
    end: float
    pid: int


def timed_call(fn: Callable[[Any], T], job: Any) -> tuple[T, JobTime]:
    """Worker side: run ``fn(job)`` and measure it (the process runs one job at a time)."""
    c0, t0 = cpu_self(), time.time()
    result = fn(job)
    return result, JobTime(type(job).__name__, cpu_self() - c0, t0, time.time(), os.getpid())


@dataclass
class IngestStats:
    #: Phase name -> [wall seconds, CPU seconds of the ingesting process], summed over repeats.
    phases: dict[str, list[float]] = field(default_factory=dict)
    jobs: list[JobTime] = field(default_factory=list)
    #: CPU seconds of the worker processes over their whole lives, start-up and imports included.
    workers_cpu: float = 0.0
    workers: int = 0

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), cpu_self()
        try:
            yield
        finally:
            acc = self.phases.setdefault(name, [0.0, 0.0])
            acc[0] += time.perf_counter() - t0
            acc[1] += cpu_self() - c0

    def job_cpu(self, kind: str | None = None) -> float:
        return sum(j.cpu for j in self.jobs if kind is None or j.kind == kind)

    def serial_cpu(self) -> float:
        """CPU seconds spent in the ingesting process itself (probe, planning, join, manifests...)."""
        return sum(cpu for _, cpu in self.phases.values())

    def makespan(self, workers: int) -> float:
        """Seconds the measured jobs take on ``workers`` dedicated cores, in the order they ran.

        List scheduling by job start time, each job lasting its CPU time: a load-independent
        model of the encode phase's wall time on an otherwise idle machine (it ignores a worker's
        second thread, which only helps).
        """
        free = [0.0] * max(1, workers)
        for job in sorted(self.jobs, key=lambda j: j.start):
            i = min(range(len(free)), key=free.__getitem__)
            free[i] += job.cpu
        return max(free)

    def lines(self) -> list[str]:
        out = [f"{name:14s} wall {wall:7.2f} s  cpu {cpu:7.2f} s" for name, (wall, cpu) in self.phases.items()]
        kinds = sorted({j.kind for j in self.jobs})
        for kind in kinds:
            mine = [j.cpu for j in self.jobs if j.kind == kind]
            out.append(f"{kind:14s} {len(mine):3d} jobs in workers, cpu {sum(mine):7.2f} s "
                       f"(largest {max(mine):.2f} s)")
        out.append(f"{'workers':14s} {self.workers:3d} processes, cpu {self.workers_cpu:7.2f} s, of which outside "
                   f"jobs (start-up, imports, idle) {self.workers_cpu - self.job_cpu():.2f} s")
        return out
