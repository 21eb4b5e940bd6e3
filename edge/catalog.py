"""Which version of each title this appliance serves, shared by the agent and the serving workers.

The agent (the only writer) publishes the map as ``served.json`` in the cache directory with temp
file + fsync + rename, and only ever lists file sets whose directory was renamed into ``sets/`` after
every file verified.  Serving workers in other processes read the file when its mtime changes (at
most once per ``refresh_s``), so they never need the SQLite index and never see a partial set: a set
is either absent from the map (a miss, redirected) or complete.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

from shared.files import write_atomic

from .paths import BadPath, check_title_id

log = logging.getLogger(__name__)

SERVED_FILE = "served.json"
MAX_SERVED_BYTES = 16 << 20


class Catalog:
    """title id → served version; in the agent it is authoritative, in a worker it follows the file."""

    def __init__(self, cache_dir: Path, *, refresh_s: float = 0.5) -> None:
        self.cache_dir = cache_dir
        self.file = cache_dir / SERVED_FILE
        self.refresh_s = refresh_s
        self._served: dict[str, str] = {}
        self._checked = 0.0
        self._mtime_ns = -1

    def get(self, title_id: str) -> str | None:
        return self._served.get(title_id)

    def snapshot(self) -> dict[str, str]:
        return dict(self._served)

    def publish(self, served: Mapping[str, str]) -> None:
        """Agent side: replace the map and write it for the workers (blocking: call from a thread)."""
        self._served = dict(served)
        write_atomic(self.file, json.dumps(self._served, sort_keys=True).encode())

    def refresh(self, now: float | None = None) -> None:
        """Worker side: reload the map if the file changed; a damaged file keeps the previous map."""
        now = time.monotonic() if now is None else now
        if now - self._checked < self.refresh_s:
            return
        self._checked = now
        try:
            st = self.file.stat()
        except FileNotFoundError:
            self._served = {}
            return
        if st.st_mtime_ns == self._mtime_ns:
            return
        try:
            if st.st_size > MAX_SERVED_BYTES:
                raise ValueError("served map too large")
            doc = json.loads(self.file.read_bytes())
            if not isinstance(doc, dict):
                raise ValueError("served map is not an object")
            served = {check_title_id(str(k)): check_title_id(str(v)) for k, v in doc.items()}
        except (OSError, ValueError, BadPath) as exc:
            log.warning("keeping the previous served map: %s is unreadable (%s)", self.file, exc)
            return
        self._served = served
        self._mtime_ns = st.st_mtime_ns
