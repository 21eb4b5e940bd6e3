"""A headless Chromium driven over the DevTools protocol, with no dependency beyond aiohttp.

Used by the browser tests and the end-to-end benchmark to open nearcast's pages in a real browser:
navigate, evaluate JavaScript, wait for a condition, take screenshots.  Chromium is started with the
flags a closed network needs (no background networking, no component updates) and a fresh profile.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from shared.errors import NearcastError

log = logging.getLogger(__name__)

CANDIDATES = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


class BrowserError(NearcastError):
    pass


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    def __init__(self, executable: str | None = None, *, extra_args: list[str] | None = None) -> None:
        exe = executable or find_chromium()
        if exe is None:
            raise BrowserError("no Chromium found (apt-get install chromium-headless-shell)")
        self.executable = exe
        self.extra_args = extra_args or []
        self._profile = Path(tempfile.mkdtemp(prefix="nearcast-chromium-"))
        self._proc: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.console: list[str] = []
        self.exceptions: list[str] = []

    async def __aenter__(self) -> Browser:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        args = [self.executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--mute-audio", "--autoplay-policy=no-user-gesture-required",
                "--window-size=1280,800", "--remote-debugging-port=0", f"--user-data-dir={self._profile}",
                *self.extra_args, "about:blank"]
        # Its own process group, closed as a whole: Debian's /usr/bin/chromium-headless-shell is a shell
        # script that runs the browser as its child, so terminating only the process we started left the
        # browser and its helpers running after every test.
        self._proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.DEVNULL,
                                                          stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        port_file = self._profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            if self._proc.returncode is not None:
                raise BrowserError(f"Chromium exited with status {self._proc.returncode}")
            await asyncio.sleep(0.05)
        else:
            raise BrowserError("Chromium did not open its DevTools port")
        port = int(port_file.read_text().split()[0])
        self._http = aiohttp.ClientSession()
        async with self._http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        page = next(t for t in targets if t.get("type") == "page")
        self._ws = await self._http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        from shared.tasks import spawn

        self._owner: set[asyncio.Task[Any]] = set()
        self._reader = spawn(self._read(), name="cdp-reader", owner=self._owner)
        await self.send("Page.enable")
        await self.send("Runtime.enable")

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(BrowserError(f"CDP error: {data['error'].get('message')}"))
                    else:
                        fut.set_result(data.get("result", {}))
            elif data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            elif data.get("method") == "Runtime.exceptionThrown":
                details = data["params"].get("exceptionDetails", {})
                self.exceptions.append(str(details.get("exception", {}).get("description") or details.get("text")))

    async def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        if self._ws is None:
            raise BrowserError("browser not started")
        msg_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        return await asyncio.wait_for(fut, timeout)

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})

    async def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        res = await self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                   "returnByValue": True}, timeout)
        if "exceptionDetails" in res:
            raise BrowserError(f"JavaScript error: {res['exceptionDetails'].get('text')}")
        return res.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 30.0, interval: float = 0.2) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        last: Any = None
        while asyncio.get_running_loop().time() < deadline:
            with contextlib.suppress(BrowserError):
                last = await self.evaluate(expression)
                if last:
                    return last
            await asyncio.sleep(interval)
        raise BrowserError(f"timed out waiting for {expression!r} (last value {last!r}); "
                           f"console: {self.console[-5:]}; exceptions: {self.exceptions[-3:]}")

    async def screenshot(self, path: Path) -> Path:
        res = await self.send("Page.captureScreenshot", {"format": "png"})
        data = base64.b64decode(res["data"])

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

        await asyncio.to_thread(write)
        return path

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        if self._proc is not None:
            await _stop_group(self._proc)
        shutil.rmtree(self._profile, ignore_errors=True)


def live_in_group(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that still run (zombies, which have ended and wait only for
    their parent or init to reap them, are not counted)."""
    live = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):  # state, ppid, pgrp
            live.append(int(entry.name))
    return live


async def _stop_group(proc: asyncio.subprocess.Process, timeout: float = 10.0) -> None:
    """SIGKILL the process group ``proc`` leads (the browser and every helper it started: its profile is
    a temporary directory, so there is nothing to shut down gracefully), reap ``proc``, and wait until
    the kernel has ended the rest: SIGKILL is delivered at once but a process in the middle of a system
    call (Chromium's helpers often are) dies a moment later, and returning before that leaves browsers
    running for whoever checks next."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
    deadline = time.monotonic() + timeout
    while (left := await asyncio.to_thread(live_in_group, proc.pid)) and time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # and anything forked since the first signal
        await asyncio.sleep(0.02)
    if left:
        log.warning("Chromium processes %s still running %.0f s after SIGKILL", left, timeout)
