"""Hostile clients against real daemons: how soon a slowloris is cut off, and the thorough property run.

Part 1 starts a private Mosquitto, ``nearcast control serve``, and two ``nearcast edge serve`` (fast
path on, and ``http.fast_path = false``), all with ``http.header_timeout_s`` = ``--header-timeout``,
then opens one connection to each that sends a request head one byte per ``--interval`` seconds and
prints what each server answered and when (reference: the configured timeout).

Part 2 (``--examples N``, 0 skips it) runs every hostile property test (``tests/*/test_hostile_*.py``)
with at least N Hypothesis examples each (``NEARCAST_HOSTILE_EXAMPLES``) and prints pytest's summary.

Usage: .venv/bin/python bench/hostile.py [--header-timeout 3] [--interval 1] [--examples 0]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.faults.harness import Stack, make_keys  # noqa: E402


def trickle(port: int, interval: float, limit: float) -> tuple[str, float]:
    """Send a request head one byte at a time; the server's first answer line (or how it ended) and when."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: y\r\n" * 1000
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.monotonic()  # the head's first byte goes now
        sock.sendall(head[:1])
        sock.settimeout(interval)
        for i in range(1, len(head)):
            if time.monotonic() - started > limit:
                return "<still open>", time.monotonic() - started
            try:
                data = sock.recv(65536)
            except TimeoutError:
                try:
                    sock.sendall(head[i:i + 1])
                except OSError as exc:
                    return f"<{type(exc).__name__}>", time.monotonic() - started
                continue
            line = data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "<closed without an answer>"
            return line, time.monotonic() - started
    return "<head sent whole>", time.monotonic() - started


def slowloris(header_timeout: float, interval: float) -> None:
    with tempfile.TemporaryDirectory(prefix="nearcast-bench-hostile-") as tmp, Stack(Path(tmp)) as stack:
        broker = stack.broker()
        keys = make_keys(Path(tmp) / "keys")
        http = {"header_timeout_s": header_timeout}
        servers = {
            "control (aiohttp + shared.httplimits)": stack.control("control", broker.port, {"http": http}),
            "edge, fast path": stack.edge("edge-fast", broker.port, keys, {"http": http}),
            "edge, fast_path = false": stack.edge("edge-aiohttp", broker.port, keys,
                                                  {"http": {**http, "fast_path": False}}),
        }
        for proc in servers.values():
            proc.start()
        print(f"slowloris: one header byte every {interval:g} s; http.header_timeout_s = {header_timeout:g}")
        for name, proc in servers.items():
            answer, elapsed = trickle(proc.port, interval, limit=max(60.0, 4 * header_timeout))
            print(f"  {name:40s} {answer:35s} after {elapsed:6.2f} s ({elapsed / header_timeout:.2f}x the timeout)")


def thorough(examples: int) -> int:
    tests = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("tests/*/test_hostile_*.py"))
    print(f"hostile property tests with at least {examples} examples each: {' '.join(tests)}")
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                         cwd=ROOT, env={**os.environ, "NEARCAST_HOSTILE_EXAMPLES": str(examples)},
                         capture_output=True, text=True, check=False)
    print(res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr[-2000:])
    print(f"  {time.monotonic() - started:.0f} s")
    if res.returncode:
        print(res.stdout[-6000:])
    return res.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--header-timeout", type=float, default=3.0, help="http.header_timeout_s of every server")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between the slow client's bytes")
    parser.add_argument("--examples", type=int, default=0, help="also run the hostile property tests (0: skip)")
    args = parser.parse_args()
    slowloris(args.header_timeout, args.interval)
    if args.examples:
        sys.exit(thorough(args.examples))


if __name__ == "__main__":
    main()
