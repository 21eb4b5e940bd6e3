"""``nearcast demo``: a whole nearcast on one machine.

An embedded MQTT broker (in this process, refusing anonymous clients and enforcing the passwd and ACL
files the control plane writes, as Mosquitto would), the control plane and N edge appliances as real child
processes, each with its own config file in the state directory, each in its own "ISP" (loopback
prefixes 127.0.N.0/24).  Prints the URLs and the operator ``export`` lines, stays up until Ctrl-C,
then stops every child and exits 0.  A second run with the same ``--state-dir`` reuses keys, tokens
and data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from control.auth import TokenStore
from shared.broker import EmbeddedBroker, free_port
from shared.files import write_private
from shared.mqtt_auth import new_password
from shared.tasks import TaskGroup
from shared.tokens import TokenKeys

from .demo_titles import (
    DEMO_PROFILE,
    Api,
    deploy_edge_model,
    fill_and_wait,
    publish_samples,
    seed_catalog,
    seed_history_and_train,
)

HEALTH_TIMEOUT_S = 60.0


@dataclass
class Child:
    name: str
    url: str
    proc: asyncio.subprocess.Process
    log_path: Path


def _say(msg: str) -> None:
    print(msg, flush=True)


def _toml_str(value: object) -> str:
    return json.dumps(str(value))


async def _wait_quietly(task: asyncio.Task[None]) -> None:
    """Ends when ``task`` fails (so the demo stops); never when it succeeds."""
    try:
        await task
    except asyncio.CancelledError:
        raise
    except Exception:
        return
    await asyncio.Event().wait()


class Demo:
    def __init__(self, *, port: int, state_dir: Path | None, edges: int, exit_after: float | None = None,
                 titles: bool = True) -> None:
        self.titles = titles
        self.reader = ""
        self.port = port
        self.temporary = state_dir is None
        self.state = Path(tempfile.mkdtemp(prefix="nearcast-demo-")) if state_dir is None else state_dir
        self.edges = edges
        self.exit_after = exit_after
        self.children: list[Child] = []

    # -- state ---------------------------------------------------------------------------------------
    def _prepare_state(self, broker_port: int) -> str:
        """Keys, the operator token and the control plane's config; returns the admin token."""
        st = self.state
        st.mkdir(parents=True, exist_ok=True)
        (st / "logs").mkdir(exist_ok=True)
        keys_path = st / "token-keys.json"
        if not keys_path.exists():
            TokenKeys.generate().save(keys_path)
        token_file = st / "demo-operator-token"
        reader_file = st / "demo-read-token"
        tokens_path = st / "control" / "operator-tokens.json"
        if token_file.exists() and tokens_path.exists():
            admin = token_file.read_text().strip()
            if reader_file.exists():
                self.reader = reader_file.read_text().strip()
            else:  # a state dir from before the operator view: add its read-only token
                store = TokenStore.load(tokens_path)
                taken = {e.name for e in store.entries()}
                self.reader = store.add(next(n for n in (f"demo-ops-{i}" if i else "demo-ops" for i in range(100))
                                             if n not in taken), "read")
                store.save(tokens_path)
                write_private(reader_file, self.reader + "\n")
        else:
            store = TokenStore([])
            admin = store.add("demo-admin", "admin")
            self.reader = store.add("demo-ops", "read")  # for the read-only operator view
            store.save(tokens_path)
            write_private(token_file, admin + "\n")
            write_private(reader_file, self.reader + "\n")
        self._mqtt = f"[mqtt]\nhost = \"127.0.0.1\"\nport = {broker_port}\nkeepalive_s = 5\n"
        control_password = st / "control-mqtt-password"  # the control plane's own broker login, never in the repo
        if not control_password.exists():
            write_private(control_password, new_password() + "\n")
        (st / "control.toml").write_text(
            f"[http]\nhost = \"127.0.0.1\"\nport = {self.port}\n\n"
            f"[state]\ndir = {_toml_str(st / 'control')}\n\n"
            f"[auth]\ntokens_file = {_toml_str(tokens_path)}\n\n"
            f"[security]\ntoken_keys_file = {_toml_str(keys_path)}\n\n"
            f"[fill]\ninterval_s = 30.0\n\n"
            f"[steering]\nviewer_override = true\n\n"
            f"[fleet]\nheartbeat_ttl_s = 15.0\n\n{self._mqtt}"
            f"username = \"control\"\npassword_file = {_toml_str(control_password)}\n")
        return admin

    @property
    def broker_files(self) -> tuple[Path, Path]:
        """The passwd and acl files the control plane writes (its default broker.files_dir) and the
        embedded broker enforces."""
        d = self.state / "control" / "mosquitto"
        return d / "passwd", d / "acl"

    async def _enroll(self, api: Api, i: int) -> tuple[str, Path, str]:
        """Enroll edge ``i`` once (kept in the state dir) and write its config; returns (name, config, url)."""
        st = self.state
        name = f"edge-{chr(ord('a') + i - 1)}"
        saved = st / f"{name}-enrollment.json"
        if saved.exists():
            bundle = json.loads(saved.read_text())
        else:
            status, body = await api.call("POST", "/v1/enrollments", {
                "appliance_id": name, "site": f"site-{i}", "region": f"isp-{i}", "isp": f"ISP {i}",
                "asn": 64500 + i, "prefixes": [f"127.0.{i}.0/24"], "disk_bytes": 2 * 1024**3})
            if status != 201:
                raise RuntimeError(f"enrolling {name} failed: {body}")
            status, bundle = await api.call("POST", "/v1/enroll", {"token": body["token"]})
            if status != 201:
                raise RuntimeError(f"{name} could not redeem its enrollment: {bundle}")
            write_private(saved, json.dumps(bundle))
        keys = st / f"{name}-token-keys.json"
        write_private(keys, bundle["token_keys"])
        pub = st / f"{name}-control-keys.json"
        pub.write_text(json.dumps(bundle["signing_keys"]))
        password = st / f"{name}-mqtt-password"
        write_private(password, bundle["mqtt"]["password"])
        port = free_port()
        cfg = st / f"{name}.toml"
        cfg.write_text(
            f"[appliance]\nid = \"{name}\"\nsite = \"site-{i}\"\nisp = \"ISP {i}\"\nasn = {64500 + i}\n"
            f"prefixes = [\"127.0.{i}.0/24\"]\n\n"
            f"[http]\nhost = \"127.0.0.1\"\nport = {port}\n\n"
            f"[cache]\ndir = {_toml_str(st / name / 'cache')}\ncapacity_bytes = {2 * 1024**3}\n\n"
            f"[security]\ntoken_keys_file = {_toml_str(keys)}\ncontrol_public_keys_file = {_toml_str(pub)}\n\n"
            f"[telemetry]\ninterval_s = 5.0\n\n"
            f"[control]\napi_url = \"http://127.0.0.1:{self.port}\"\n\n"
            f"{self._mqtt}username = \"{name}\"\npassword_file = {_toml_str(password)}\n")
        return name, cfg, f"http://127.0.0.1:{port}"

    # -- processes -----------------------------------------------------------------------------------
    async def _spawn(self, name: str, args: list[str], url: str) -> Child:
        log_path = self.state / "logs" / f"{name}.log"
        fh = open(log_path, "ab")  # noqa: SIM115, ASYNC230 - a local log file, handed to the child
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "nearcast", *args, stdout=fh, stderr=fh, stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True)
        finally:
            fh.close()
        child = Child(name, url, proc, log_path)
        self.children.append(child)
        return child

    async def _wait_healthy(self, child: Child, deadline: float) -> None:
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if child.proc.returncode is not None:
                    raise RuntimeError(f"{child.name} exited with status {child.proc.returncode}; "
                                       f"see {child.log_path}")
                try:
                    async with http.get(f"{child.url}/healthz", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{child.name} did not become healthy within {HEALTH_TIMEOUT_S:.0f}s; "
                           f"see {child.log_path}")

    async def _stop_children(self) -> None:
        for child in self.children:
            if child.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                await asyncio.wait_for(child.proc.wait(), 20)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                await child.proc.wait()

    async def _report_exit(self, child: Child) -> None:
        status = await child.proc.wait()
        _say(f"{child.name} exited (status {status}); players fail over to the next edge and steering "
             f"drops it within the heartbeat TTL. Log: {child.log_path}")

    async def _titles(self, api_url: str, admin: str, cancel: threading.Event, edge_urls: list[str]) -> None:
        started = time.monotonic()
        async with aiohttp.ClientSession() as http:
            api = Api(http, api_url, admin)
            try:
                _say("titles: preparing sample titles (generated masters, encoded by the real pipeline)")
                samples = await publish_samples(api, self.state, _say, cancel)
                await seed_catalog(api, samples)
                _say("titles: planning fills and waiting for the edges to hold them")
                await fill_and_wait(api, self.edges)
                version = await seed_history_and_train(api, samples, _say)
                _say(f"recs: serving model {version}")
                try:
                    edge_model = await deploy_edge_model(api, edge_urls, _say)
                    _say(f"models: every edge runs re-ranker {edge_model}")
                except RuntimeError as exc:  # a rolled-back model is the rollout working, not a broken demo
                    _say(f"models: {exc}; the edges keep serving rows in the control plane's order")
            except Exception as exc:
                if not cancel.is_set():
                    _say(f"titles: failed: {exc}")
                raise
        _say(f"titles: ready in {time.monotonic() - started:.0f}s")
        for sample in samples:
            _say(f"  {sample.title_id:<12} {sample.name}"
                 + ("  (CENC, ClearKey)" if sample.encrypt != "none" else ""))
        first = samples[0].title_id
        _say("Open the homepage in a browser, as a viewer in ISP 1 or ISP 2 (rows re-ranked by that ISP's edge):")
        for i in range(1, self.edges + 1):
            _say(f"  {api_url}/web/index.html?profile={DEMO_PROFILE}&as=127.0.{i}.10")
        _say("or go straight to a player:")
        for sample in samples[:2]:
            _say(f"  {api_url}/web/player.html?title={sample.title_id}&as=127.0.1.10")
        _say("Operator view (read-only token in the fragment, never sent to the server):")
        _say(f"  {api_url}/web/ops.html#token={self.reader}")
        _say("Play one like a player would, from inside ISP 1, then steer from ISP 2:")
        _say(f"  nearcast client play {first} --client-ip 127.0.1.10")
        _say(f"  nearcast steer --client-ip 127.0.2.10 --title {first}")

    # -- main ----------------------------------------------------------------------------------------
    async def run(self) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        broker = EmbeddedBroker(*self.broker_files)
        code = 0
        try:
            _say(f"nearcast demo: state in {self.state}")
            await broker.start()
            _say(f"[1/3] MQTT broker (embedded) on {broker.url}; logins and ACL from {self.broker_files[0].parent}")
            admin = self._prepare_state(broker.port)
            api_url = f"http://127.0.0.1:{self.port}"
            deadline = time.monotonic() + HEALTH_TIMEOUT_S
            control = await self._spawn("control", ["control", "serve", "--config", str(self.state / "control.toml")],
                                        api_url)
            await self._wait_healthy(control, deadline)
            _say(f"[2/3] control plane on {api_url}")
            async with aiohttp.ClientSession() as http:
                api = Api(http, api_url, admin)
                edges = [await self._enroll(api, i) for i in range(1, self.edges + 1)]
            started = [await self._spawn(name, ["edge", "serve", "--config", str(cfg)], url)
                       for name, cfg, url in edges]
            for child in started:
                await self._wait_healthy(child, deadline)
            _say(f"[3/3] {len(started)} edge appliances enrolled and up")
            _say("")
            _say(f"control API     {api_url}/v1/appliances   (health {api_url}/healthz, metrics {api_url}/metrics)")
            for i, child in enumerate(started, start=1):
                _say(f"{child.name:<15} {child.url}   ISP {i} (clients 127.0.{i}.0/24); "
                     f"metrics {child.url}/metrics")
            _say("")
            _say("Operator access (paste into another terminal):")
            _say(f"  export NEARCAST_API={api_url}")
            _say(f"  export NEARCAST_TOKEN={admin}")
            _say("")
            _say("Press Ctrl-C to stop.")
            _say("")
            cancel = threading.Event()
            work = TaskGroup("demo-titles")
            titles_task = work.spawn(self._titles(api_url, admin, cancel, [c.url for c in started]),
                                     name="titles") if self.titles else None
            waiters = TaskGroup("demo-wait")
            waiters.spawn(stop.wait(), name="ctrl-c")
            # Without the control plane there is no demo; an edge may die (that is what failover is
            # for): say so and keep the rest running.
            waiters.spawn(control.proc.wait(), name="exit:control")
            for c in started:
                work.spawn(self._report_exit(c), name=f"exit:{c.name}")
            if self.exit_after is not None:
                waiters.spawn(asyncio.sleep(self.exit_after), name="exit-after")
            if titles_task is not None:
                waiters.spawn(_wait_quietly(titles_task), name="titles-failed")
            await asyncio.wait(list(waiters), return_when=asyncio.FIRST_COMPLETED)
            await waiters.aclose()
            cancel.set()
            await work.aclose(timeout=30)
            if titles_task is not None and titles_task.done() and not titles_task.cancelled() \
                    and titles_task.exception() is not None:
                code = 1
            if control.proc.returncode is not None:
                _say(f"control exited unexpectedly (status {control.proc.returncode}); see {control.log_path}")
                code = 1
        except RuntimeError as exc:
            _say(f"nearcast demo: {exc}")
            code = 1
        finally:
            _say("stopping...")
            await self._stop_children()
            await broker.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if self.temporary and code == 0:
                shutil.rmtree(self.state, ignore_errors=True)
        _say("stopped.")
        return code
