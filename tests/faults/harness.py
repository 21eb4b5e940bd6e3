"""Process helpers for fault scenarios, usable inside pytest and from ``bench/faults.py`` (no fixtures).

Everything here is real: a private Mosquitto (:class:`tests.conftest.Mosquitto`), the daemons as
``python -m nearcast ... serve --config`` child processes (:class:`tests.conftest.Daemon`), an HTTP
origin on a real port (a threaded server in this process, so a scenario can run one across many
trials while it kills and restarts only the edge), and MQTT publications of desired state as the
control plane would make them.  A scenario typically does::

    with Stack(workdir) as stack:
        broker = stack.broker()
        origin = stack.origin(root)
        edge = stack.edge("edge-a", broker.port, keys)
        edge.start()
        ...
        edge.kill()       # SIGKILL, same directories kept
        edge.start()      # the same config, ports and cache directory

and every process it started is stopped on the way out of the ``with``, also on failure.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import signal
import socketserver
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from shared import tokens
from shared.messages import REGISTRY
from tests.conftest import Daemon, Mosquitto, free_port
from tests.edge.conftest import Keys, Watcher, make_keys

T = TypeVar("T")

__all__ = ["Control", "Edge", "Keys", "Mosquitto", "Origin", "Stack", "Watcher", "desired_topic", "http_get",
           "make_keys", "metrics", "publish_desired", "until"]


# -- waiting and HTTP -------------------------------------------------------------------------------


def until(check: Callable[[], T | None], timeout: float, what: str, *, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def http_get(url: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0) -> Response:
    """One GET, redirects not followed; any HTTP status is returned, connection errors raise OSError."""
    req = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Response(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


def http_json(method: str, url: str, body: Any = None, token: str | None = None,
              timeout: float = 10.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        with exc:
            raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def metrics(url: str, timeout: float = 5.0) -> dict[str, float]:
    """``/metrics`` as ``{'name{labels}': value}`` (labels exactly as exported; no labels: the bare name)."""
    resp = http_get(f"{url.rstrip('/')}/metrics", timeout=timeout)
    if resp.status != 200:
        raise AssertionError(f"{url}/metrics answered {resp.status}")
    out: dict[str, float] = {}
    for line in resp.body.decode().splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def metric_sum(samples: Mapping[str, float], name: str, **labels: str) -> float:
    """Sum of every sample of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


# -- keys and desired state -------------------------------------------------------------------------


def desired_topic(appliance_id: str, kind: str) -> str:
    return f"nearcast/v1/appliances/{appliance_id}/desired/{kind}"


def publish_desired(watcher: Watcher, appliance_id: str, kind: str, body: Any, msg_id: str) -> None:
    """Publish desired state as the control plane does: retained, qos 1, sender ``control``."""
    watcher.publish(desired_topic(appliance_id, kind), REGISTRY.encode(body, sender="control", msg_id=msg_id),
                    retain=True)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the origin -------------------------------------------------------------------------------------


@dataclass
class OriginLog:
    """What the origin was asked for: (path, Range header) in arrival order."""

    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str, rng: str) -> None:
        with self.lock:
            self.requests.append((path, rng))

    def since(self, mark: int) -> list[tuple[str, str]]:
        with self.lock:
            return list(self.requests[mark:])

    def mark(self) -> int:
        with self.lock:
            return len(self.requests)


class _OriginHandler(http.server.BaseHTTPRequestHandler):
    server: _OriginServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # the stdlib's name for it
        srv = self.server
        path = self.path.split("?", 1)[0]
        rng = self.headers.get("Range", "")
        srv.log.add(path, rng)
        rel = path.lstrip("/")
        target = srv.root / rel
        if ".." in rel.split("/") or not target.is_file():
            self._send(404, b"not found\n")
            return
        data = target.read_bytes()
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng)
        if m and int(m.group(1)) < len(data):
            start = int(m.group(1))
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        chunk = 64 << 10
        rate = srv.rate_bytes_s
        try:
            for i in range(start, len(data), chunk):
                self.wfile.write(data[i:i + chunk])
                if rate:
                    time.sleep(min(len(data) - i, chunk) / rate)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _OriginServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, root: Path, log: OriginLog, rate_bytes_s: int) -> None:
        self.root = root
        self.log = log
        self.rate_bytes_s = rate_bytes_s
        super().__init__(("127.0.0.1", port), _OriginHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a killed edge drops its connections: expected here, not worth a traceback
        super().handle_error(request, client_address)


class Origin:
    """A real HTTP origin serving ``root`` (GET with ``Range: bytes=N-``), on its own thread.

    ``rate_bytes_s`` paces every response (0: as fast as it goes), so a download lasts long enough
    for a kill to land in it; :attr:`log` records every request.
    """

    def __init__(self, root: Path, *, rate_bytes_s: int = 0) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = OriginLog()
        self.port = free_port()
        self._server = _OriginServer(self.port, root, self.log, rate_bytes_s)
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"origin:{self.port}", daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> Origin:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# -- daemons ----------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    return "".join(f"[{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items())
                   for name, values in sections.items())


def merge(base: dict[str, dict[str, Any]], extra: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    for name, values in (extra or {}).items():
        base.setdefault(name, {}).update(values)
    return base


def mqtt_section(broker_port: int) -> dict[str, Any]:
    """Fast reconnects and short keepalives: a killed peer is noticed within seconds."""
    return {"port": broker_port, "keepalive_s": 2, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0,
            "publish_timeout_s": 1.0}


class Process:
    """One daemon's config and directories; :meth:`start` runs it, :meth:`kill` SIGKILLs it, and a
    later :meth:`start` runs it again on the same config, port and directories."""

    kind = ""  # "edge" | "control"

    def __init__(self, workdir: Path, name: str, sections: dict[str, dict[str, Any]], port: int) -> None:
        self.workdir = workdir
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.conf = workdir / f"{name}.toml"
        self.conf.write_text(toml(sections))
        self.runs = 0
        self.daemon: Daemon | None = None
        self.env: dict[str, str] = {}

    @property
    def running(self) -> bool:
        return self.daemon is not None and self.daemon.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.daemon.proc.pid if self.daemon is not None else None

    def spawn(self) -> Daemon:
        """Start the process and return at once (a kill may land anywhere in its start-up)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.runs += 1
        self.daemon = Daemon([self.kind, "serve", "--config", str(self.conf)], self.workdir,
                             f"{self.name}-run{self.runs}", self.env)
        return self.daemon

    def wait_healthy(self, timeout: float = 60.0) -> None:
        assert self.daemon is not None
        self.daemon.wait_http(f"{self.url}/healthz", timeout)

    def start(self, timeout: float = 60.0) -> None:
        self.spawn()
        self.wait_healthy(timeout)

    def kill(self) -> int:
        """SIGKILL and reap; returns the exit code (-9 unless it had already exited)."""
        if self.daemon is None:
            return 0
        code = self.daemon.stop(signal.SIGKILL)
        return code

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful) and reap; SIGKILL after ``timeout``."""
        if self.daemon is None:
            return 0
        return self.daemon.stop(signal.SIGTERM, timeout)

    def log(self, tail: int = 4000) -> str:
        return self.daemon.log()[-tail:] if self.daemon is not None else ""

    def logs(self) -> str:
        """Every run's log, oldest first."""
        parts = []
        for i in range(1, self.runs + 1):
            path = self.workdir / f"{self.name}-run{i}.log"
            if path.exists():
                parts.append(f"--- run {i} ---\n" + path.read_text(errors="replace"))
        return "\n".join(parts)


class Edge(Process):
    """An edge appliance (``nearcast edge serve``) whose desired state arrives over MQTT, not enrolled:
    it trusts ``keys.control_file`` for manifests and bundles and ``keys.token_file`` for URL tokens."""

    kind = "edge"

    def __init__(self, workdir: Path, name: str, broker_port: int, keys: Keys,
                 extra: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        port = free_port()
        self.cache_dir = workdir / name / "cache"
        self.keys = keys
        sections = merge({
            "appliance": {"id": name},
            "http": {"port": port, "shutdown_timeout_s": 2.0},
            "cache": {"dir": self.cache_dir},
            "security": {"token_keys_file": keys.token_file, "control_public_keys_file": keys.control_file},
            "mqtt": mqtt_section(broker_port),
            "telemetry": {"interval_s": 5.0},
        }, extra)
        super().__init__(workdir, name, sections, port)

    def token(self, prefix: str, ttl_s: float = 3600, fallbacks: tuple[str, ...] = ()) -> str:
        return tokens.sign(self.keys.tokens, path_prefix=prefix, client_prefix="127.0.0.0/8", ttl_s=ttl_s,
                           fallbacks=fallbacks)

    def content_url(self, token: str, title: str, path: str) -> str:
        return f"{self.url}/v1/content/{token}/{title}/{path}"


class Control(Process):
    """A control plane (``nearcast control serve``) with its own state directory and an admin token."""

    kind = "control"

    def __init__(self, workdir: Path, name: str, broker_port: int,
                 extra: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        from control.auth import TokenStore

        port = free_port()
        self.state_dir = workdir / name / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        store = TokenStore([])
        self.admin = store.add("root", "admin")
        self.reader = store.add("viewer", "read")
        store.save(self.state_dir / "tokens.json")
        sections = merge({
            "http": {"port": port, "shutdown_timeout_s": 2.0},
            "state": {"dir": self.state_dir},
            "auth": {"tokens_file": self.state_dir / "tokens.json"},
            "mqtt": mqtt_section(broker_port),
            "telemetry": {"flush_interval_s": 0.05},
        }, extra)
        super().__init__(workdir, name, sections, port)

    def call(self, method: str, path: str, body: Any = None, token: str | None = "admin") -> tuple[int, Any]:
        tok = self.admin if token == "admin" else token
        return http_json(method, self.url + path, body, tok)

    def appliance_state(self, appliance_id: str) -> str:
        """The fleet's state for an appliance (``online``, ``draining`` ...), or why it is not known."""
        try:
            status, doc = self.call("GET", f"/v1/appliances/{appliance_id}")
        except (OSError, HTTPException):
            return "unreachable"
        return str(doc.get("state")) if status == 200 and isinstance(doc, dict) else f"HTTP {status}"


# -- the whole stack, cleaned up on the way out --------------------------------------------------------


class Stack:
    """Owns every process and server a scenario starts; ``with Stack(dir) as s`` stops them all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._exit = ExitStack()
        self.processes: list[Process] = []

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for proc in reversed(self.processes):
            try:
                proc.kill()
            except Exception:  # the others must still be stopped
                pass
        self._exit.close()

    def broker(self, extra_config: str = "") -> Mosquitto:
        broker = Mosquitto(self.workdir, extra_config)
        self._exit.callback(broker.cleanup)
        broker.start()
        return broker

    def origin(self, root: Path, *, rate_bytes_s: int = 0) -> Origin:
        origin = Origin(root, rate_bytes_s=rate_bytes_s).start()
        self._exit.callback(origin.stop)
        return origin

    def watcher(self, port: int, topic_filter: str) -> Watcher:
        """A paho client recording what matches ``topic_filter`` and publishing desired state."""
        w = Watcher(port, topic_filter)
        self._exit.callback(w.close)
        return w

    def edge(self, name: str, broker_port: int, keys: Keys,
             extra: Mapping[str, Mapping[str, Any]] | None = None) -> Edge:
        edge = Edge(self.workdir, name, broker_port, keys, extra)
        self.processes.append(edge)
        return edge

    def control(self, name: str, broker_port: int, extra: Mapping[str, Mapping[str, Any]] | None = None) -> Control:
        control = Control(self.workdir, name, broker_port, extra)
        self.processes.append(control)
        return control
