"""Serving benchmark: the edge against nginx on the same files, in one run.

Seeds one file set (2 MB segments and ~1 KB manifests) into an edge cache through the store's own
API, starts the real edge daemon (``nearcast edge serve``) and nginx (sendfile on, tcp_nopush on, same
number of worker processes as the edge has serving processes) on the same files, and runs wrk against both:
GB/s for 2 MB segments, requests/s for ~1 KB manifests, p50/p99 latency, and edge ÷ nginx ratios.
Both servers get the same machine at the same time of the run; wrk uses one thread.

    .venv/bin/python bench/serve.py [--duration 5] [--connections 16] [--repeats 2] [--nginx-workers 1]

The edge serves from one process (see ``edge/app.py`` for why), so nginx gets one worker by default;
``--nginx-workers 2`` (nginx's ``auto`` here) shows the gap to nginx on every core.  A second edge on
its own copy of the files runs on asyncio's loop (``http.event_loop = "asyncio"``) to show what the
default, uvloop, is worth.  Each case runs ``--repeats`` times with the servers alternating, and the
median is reported, because the cores are shared with other work.  Both send a segment the same
way: one ``sendfile(2)`` for the body with the head corked to it (nginx's ``tcp_nopush``, the
edge's ``TCP_CORK`` in ``edge/fastpath.py``).  Skips (exit 0, with the reason) when nginx or wrk is
not installed; ``scripts/setup-system.sh`` installs both.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from edge.catalog import Catalog
from edge.manifest import FileEntry
from edge.store import CacheStore
from shared import tokens

SEGMENT_BYTES = 2 * 1024 * 1024
MANIFEST = (b"#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:4\n#EXT-X-MAP:URI=\"init.mp4\"\n"
            + b"".join(b"#EXTINF:4.000,\nseg_%05d.m4s\n" % i for i in range(40)))[:1024]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_url(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


async def seed(cache: Path, files: dict[str, bytes]) -> None:
    store = CacheStore(cache, 10 * 1024**3, Catalog(cache))
    await store.open()
    key = ("bench", "v1")
    await store.begin_fill(key, [FileEntry(p, len(b), hashlib.sha256(b).hexdigest()) for p, b in files.items()])
    base = store.set_dir(key, complete=False)
    for path, body in files.items():
        (base / path).parent.mkdir(parents=True, exist_ok=True)
        (base / path).write_bytes(body)
        await store.file_done(key, path, len(body))
    await store.complete(key)
    await store.close()


NGINX_CONF = """
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    types {{ application/vnd.apple.mpegurl m3u8; video/iso.segment m4s; video/mp4 mp4; }}
    client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp; fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp; scgi_temp_path {dir}/tmp;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /v1/content/ {{
            rewrite ^/v1/content/[^/]+/([^/]+)/(.*)$ /$1/v1/$2 break;
            add_header Access-Control-Allow-Origin *;
        }}
    }}
}}
"""


BARE_AIOHTTP = """
import sys
from aiohttp import web
body = b"#" * 1024
async def handle(request):
    return web.Response(body=body)
app = web.Application()
app.router.add_get("/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def wrk(url: str, duration: float, connections: int) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
    size = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}

    def lat(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * unit[m.group(2)] if m else float("nan")

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    tm = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk saw {errors.group(1)} error responses from {url}")
    return {"rps": rps, "bps": float(tm.group(1)) * size[tm.group(2)] if tm else 0.0,
            "p50": lat("50"), "p99": lat("99")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--nginx-workers", type=int, default=1)
    args = ap.parse_args()
    nginx, wrk_bin = shutil.which("nginx") or "/usr/sbin/nginx", shutil.which("wrk")
    if not os.path.exists(nginx) or wrk_bin is None:
        print("SKIP: nginx and wrk are needed (scripts/setup-system.sh installs them)")
        return 0
    with tempfile.TemporaryDirectory(prefix="nearcast-bench-") as tmp:
        d = Path(tmp)
        d.chmod(0o755)  # nginx workers run unprivileged
        cache = d / "cache"
        files = {"hls/master.m3u8": MANIFEST, "hls/init.mp4": os.urandom(900)}
        files.update({f"hls/seg_{i:05d}.m4s": os.urandom(SEGMENT_BYTES) for i in range(8)})
        asyncio.run(seed(cache, files))
        keys = tokens.TokenKeys.generate()
        keys.save(d / "token-keys.json")
        tok = tokens.sign(keys, path_prefix="bench/", client_prefix="127.0.0.0/8", ttl_s=3600)
        edge_port, nginx_port, asyncio_port = free_port(), free_port(), free_port()
        for name, port, loop, cache_dir in (("edge", edge_port, "uvloop", cache),
                                            ("edge-asyncio", asyncio_port, "asyncio", d / "cache-asyncio")):
            if cache_dir != cache:  # its own copy: each daemon owns its index
                asyncio.run(seed(cache_dir, files))
            (d / f"{name}.toml").write_text(
                f'[appliance]\nid = "bench-{name}"\n[http]\nport = {port}\nevent_loop = "{loop}"\n'
                f'[cache]\ndir = "{cache_dir}"\n[security]\ntoken_keys_file = "{d / "token-keys.json"}"\n'
                f'[mqtt]\nport = 1883\n[telemetry]\ninterval_s = 10.0\n')
        (d / "tmp").mkdir()
        (d / "nginx.conf").write_text(NGINX_CONF.format(workers=args.nginx_workers, dir=d, port=nginx_port,
                                                        root=cache / "sets"))
        log = open(d / "edge.log", "wb")  # noqa: SIM115
        edge, edge_asyncio = (
            subprocess.Popen([sys.executable, "-m", "nearcast", "edge", "serve", "--config", str(d / f"{name}.toml")],
                             stdout=log, stderr=subprocess.STDOUT) for name in ("edge", "edge-asyncio"))
        ngx = subprocess.Popen([nginx, "-c", str(d / "nginx.conf"), "-p", str(d)], stderr=subprocess.DEVNULL)
        bare_port = free_port()
        bare = subprocess.Popen([sys.executable, "-c", BARE_AIOHTTP, str(bare_port)])
        try:
            wait_url(f"http://127.0.0.1:{edge_port}/healthz")
            wait_url(f"http://127.0.0.1:{asyncio_port}/healthz")
            runs: dict[tuple[str, str], list[dict[str, float]]] = {}
            for what, path in (("segment", "hls/seg_00003.m4s"), ("manifest", "hls/master.m3u8")):
                for rep in range(args.repeats):
                    order = (("nginx", nginx_port), ("edge", edge_port), ("edge-asyncio", asyncio_port))
                    for name, port in order if rep % 2 == 0 else order[::-1]:
                        url = f"http://127.0.0.1:{port}/v1/content/{tok}/bench/{path}"
                        if rep == 0:
                            with urllib.request.urlopen(url) as r:
                                assert r.read() == files[path], f"{name} served the wrong bytes for {path}"
                            wrk(url, 1.0, args.connections)  # warm-up
                        runs.setdefault((what, name), []).append(wrk(url, args.duration, args.connections))
            # the framework's own ceiling: aiohttp answering 1 KB from memory with no logic at all
            wait_url(f"http://127.0.0.1:{bare_port}/x")
            wrk(f"http://127.0.0.1:{bare_port}/x", 1.0, args.connections)
            runs[("manifest", "aiohttp")] = [wrk(f"http://127.0.0.1:{bare_port}/x", args.duration, args.connections)
                                             for _ in range(args.repeats)]
            results = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
        finally:
            for proc in (edge, edge_asyncio, ngx, bare):
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log.close()
    print(f"serving benchmark: {os.cpu_count()} cores, wrk -t1 -c{args.connections} -d{args.duration:.0f}s, "
          f"median of {args.repeats}, edge 1 process (http.fast_path, uvloop: the default http.event_loop), "
          f"nginx {args.nginx_workers} worker(s), sendfile + cork on both")
    print(f"{'':22}{'nginx':>14}{'edge':>14}{'edge/nginx':>12}")
    for what in ("segment", "manifest"):
        n, e = results[(what, "nginx")], results[(what, "edge")]
        a = results[(what, "edge-asyncio")]
        if what == "segment":
            print(f"{'2 MB segments GB/s':22}{n['bps'] / 1e9:14.2f}{e['bps'] / 1e9:14.2f}{e['bps'] / n['bps']:12.2f}")
            print(f"{'  edge, asyncio loop':22}{'':14}{a['bps'] / 1e9:14.2f}{a['bps'] / n['bps']:12.2f}")
        else:
            print(f"{'1 KB manifests req/s':22}{n['rps']:14.0f}{e['rps']:14.0f}{e['rps'] / n['rps']:12.2f}")
            print(f"{'  edge, asyncio loop':22}{'':14}{a['rps']:14.0f}{a['rps'] / n['rps']:12.2f}")
            b = results[("manifest", "aiohttp")]
            print(f"{'  bare aiohttp req/s':22}{'':14}{b['rps']:14.0f}{b['rps'] / n['rps']:12.2f}"
                  f"   (framework ceiling; edge/bare {e['rps'] / b['rps']:.2f})")
        print(f"{'  p50 latency ms':22}{n['p50'] * 1e3:14.2f}{e['p50'] * 1e3:14.2f}{e['p50'] / n['p50']:12.2f}")
        print(f"{'  p99 latency ms':22}{n['p99'] * 1e3:14.2f}{e['p99'] * 1e3:14.2f}{e['p99'] / n['p99']:12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
