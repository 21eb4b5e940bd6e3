"""End-to-end load: many ABR clients streaming from the demo's two edges, then a throttled trace.

Starts ``nearcast demo`` (reusing ``--state-dir`` when it exists: a second run starts in seconds),
then runs, in one process, real ABR players (``nearcast.abr``: steered by ``/v1/play`` from their own
loopback address, segment downloads from the edge, buffer model on the real clock):

1. reference: one client alone, unthrottled;
2. ``--clients`` clients at once for ``--seconds``, unthrottled — the goal is no failed segment;
3. the same clients on a throttled ``--trace`` per client, once with the throughput rule and once
   with BOLA, side by side.

Each client plays sample titles back to back (chosen at random, seeded) from an address in ISP 1
or ISP 2 (half each) until the phase ends.  Prints one QoE row per phase and the ratios of the
loaded run to the reference.  Exit status 1 when any segment failed in the unthrottled load.

    .venv/bin/python bench/e2e.py [--clients 50] [--seconds 60] [--trace fluctuating]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nearcast.abr.cli import steer  # noqa: E402
from nearcast.abr.player import PlaybackFailed, Player, PlayerOptions  # noqa: E402
from nearcast.abr.qoe import QoeLog  # noqa: E402
from nearcast.abr.traces import Trace, load  # noqa: E402
from nearcast.demo_titles import SAMPLES  # noqa: E402

#: The players' buffer target: short, so a session paces itself on playback instead of fetching a short
#: title whole at full speed.
BUFFER_S = 4.0


@dataclass
class Phase:
    name: str
    sessions: list[QoeLog] = field(default_factory=list)
    failed_sessions: int = 0
    failures: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def segments(self) -> int:
        return sum(len(q.bitrates_bps) for q in self.sessions)

    def row(self) -> dict[str, float | int | str]:
        startups = sorted(q.startup_delay_s for q in self.sessions if q.startup_delay_s is not None)
        played = sum(q.played_s for q in self.sessions)
        rebuf = sum(q.rebuffer_s for q in self.sessions)
        bitrates = [b for q in self.sessions for b in q.bitrates_bps]
        segs = max(1, self.segments)
        return {
            "phase": self.name, "sessions": len(self.sessions), "segments": self.segments,
            "failed": self.failed_sessions + sum(q.errors for q in self.sessions),
            "failovers": sum(q.failovers for q in self.sessions),
            "startup_p50_s": statistics.median(startups) if startups else float("nan"),
            "startup_p95_s": startups[int(0.95 * (len(startups) - 1))] if startups else float("nan"),
            "rebuffer_ratio": rebuf / (played + rebuf) if played + rebuf else 0.0,
            "bitrate_kbps": sum(bitrates) / max(1, len(bitrates)) / 1000,
            "switches_per_session": sum(q.switches for q in self.sessions) / max(1, len(self.sessions)),
            "qoe_per_segment": sum(q.score() for q in self.sessions) / segs,
            "gbit_s": sum(q.bytes for q in self.sessions) * 8 / max(self.wall_s, 1e-9) / 1e9,
        }


def scaled(name: str, factor: float) -> Trace:
    """A shipped trace (or CSV) with every rate multiplied: the demo's ladder tops out near 1 Mbps, so
    traces recorded in Mbps are scaled down to where the ABR choice matters."""
    base = load(name)
    return Trace(f"{base.name} x{factor:g}", base.times, tuple(m * factor for m in base.mbps))


async def client(api: str, k: int, deadline: float, phase: Phase, abr: str, trace: Trace | None, seed: int) -> None:
    rng = random.Random(seed * 1000 + k)
    ip = f"127.0.{1 + k % 2}.{10 + k // 2}"
    while time.monotonic() < deadline:
        title = rng.choice(SAMPLES).title_id
        try:
            urls = await steer(api, title, ip, None)
            player = Player(urls, PlayerOptions(abr=abr, trace=trace, client_ip=ip, max_buffer_s=BUFFER_S))
            phase.sessions.append(await player.play())
        except PlaybackFailed as exc:
            phase.failed_sessions += 1
            phase.failures.append(f"client {k} ({ip}) {title}: {exc}")
            await asyncio.sleep(0.5)


async def run_phase(name: str, api: str, clients: int, seconds: float, abr: str, trace: Trace | None,
                    seed: int) -> Phase:
    phase = Phase(name)
    started = time.monotonic()
    deadline = started + seconds
    await asyncio.gather(*(client(api, k, deadline, phase, abr, trace, seed) for k in range(clients)))
    phase.wall_s = time.monotonic() - started
    return phase


def start_demo(state: Path, port: int, *, titles: bool = True) -> tuple[subprocess.Popen[str], str]:
    """``nearcast demo`` as a child (its own session), once its titles are ready (or, with
    ``titles=False``, once its daemons are up: ``--no-titles``); returns it and the API URL."""
    proc = subprocess.Popen([sys.executable, "-m", "nearcast", "demo", "--port", str(port), "--state-dir", str(state),
                             *([] if titles else ["--no-titles"])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            cwd=ROOT)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("demo exited early:\n" + "".join(lines))
        lines.append(line)
        print(f"  demo | {line.rstrip()}", file=sys.stderr)
        if "titles: ready" in line or (not titles and "Press Ctrl-C" in line):
            break
        if "titles: failed" in line:
            raise SystemExit("demo titles failed:\n" + "".join(lines))
    found = re.search(r"NEARCAST_API=(\S+)", "".join(lines))
    if found is None:
        raise SystemExit("the demo printed no API URL")
    return proc, found.group(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--trace", default="fluctuating", help="throttled phase trace (shipped name or CSV path)")
    ap.add_argument("--trace-scale", type=float, default=0.1,
                    help="multiply the trace's rates (the shipped traces are in Mbps; the demo ladder is < 1 Mbps)")
    ap.add_argument("--state-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "nearcast-bench-e2e")
    ap.add_argument("--port", type=int, default=8790)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    proc, api = start_demo(args.state_dir, args.port)
    try:
        phases = [asyncio.run(run_phase("reference: 1 client", api, 1, min(20.0, args.seconds), "throughput",
                                        None, args.seed))]
        phases.append(asyncio.run(run_phase(f"{args.clients} clients", api, args.clients, args.seconds, "throughput",
                                            None, args.seed)))
        trace = scaled(args.trace, args.trace_scale)
        for abr in ("throughput", "bola"):
            phases.append(asyncio.run(run_phase(f"{args.clients} on {trace.name}, {abr}", api, args.clients,
                                                args.seconds, abr, trace, args.seed)))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    rows = [p.row() for p in phases]
    cols = ["sessions", "segments", "failed", "failovers", "startup_p50_s", "startup_p95_s", "rebuffer_ratio",
            "bitrate_kbps", "switches_per_session", "qoe_per_segment", "gbit_s"]
    print(f"{'phase':<34}" + "".join(f"{c:>21}" for c in cols))
    for r in rows:
        print(f"{r['phase']!s:<34}" + "".join(f"{r[c]:>21.3f}" if isinstance(r[c], float) else f"{r[c]:>21}"
                                             for c in cols))
    ref, load_row = rows[0], rows[1]
    startup_ratio = float(load_row["startup_p50_s"]) / float(ref["startup_p50_s"])
    print(f"\n{args.clients} clients vs one alone: startup p50 x{startup_ratio:.2f}, "
          f"bitrate x{float(load_row['bitrate_kbps']) / float(ref['bitrate_kbps']):.2f}, "
          f"failed segments {load_row['failed']}")
    tp, bola = rows[2], rows[3]
    print(f"on {trace.name}: BOLA vs throughput: QoE/segment {float(bola['qoe_per_segment']):.3f} vs "
          f"{float(tp['qoe_per_segment']):.3f}, rebuffer ratio {float(bola['rebuffer_ratio']):.4f} vs "
          f"{float(tp['rebuffer_ratio']):.4f}, switches/session {float(bola['switches_per_session']):.2f} vs "
          f"{float(tp['switches_per_session']):.2f}")
    for phase in phases:
        for failure in phase.failures[:5]:
            print(f"  {phase.name}: {failure}")
    return 1 if load_row["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
