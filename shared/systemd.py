"""sd_notify over ``$NOTIFY_SOCKET``, without a dependency: READY, WATCHDOG, STOPPING, STATUS.

The watchdog is pinged from the event loop itself (:class:`Watchdog`), so a loop that is stuck stops
pinging and systemd restarts the daemon; a thread would keep pinging a dead loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):
            addr = "\0" + addr[1:]  # abstract namespace
        self._addr = addr
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6

    @property
    def enabled(self) -> bool:
        return bool(self._addr)

    def notify(self, *states: str) -> bool:
        """Send ``states`` (e.g. ``"READY=1"``); False when not under systemd or the send failed."""
        if not self._addr:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._addr)
                sock.sendall("\n".join(states).encode())
            return True
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")


class Watchdog:
    """Pings WATCHDOG=1 at half the interval systemd asked for, while ``healthy()`` holds."""

    def __init__(self, notifier: Notifier, healthy: Callable[[], bool] = lambda: True) -> None:
        self._notifier = notifier
        self._healthy = healthy

    async def run(self) -> None:
        interval = self._notifier.watchdog_interval
        if interval is None:
            return
        while True:
            if self._healthy():
                self._notifier.notify("WATCHDOG=1")
            await asyncio.sleep(interval / 2)
