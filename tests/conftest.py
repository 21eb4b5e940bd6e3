"""Fixtures shared by the whole suite: real brokers and free ports, nothing mocked."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


class Mosquitto:
    """A private mosquitto on a free port, with its own config; stoppable and restartable."""

    def __init__(self, workdir: Path, extra_config: str = "") -> None:
        if MOSQUITTO is None:
            pytest.skip("mosquitto is not installed (run scripts/setup-system.sh)")
        self.port = free_port()
        # Running as root, mosquitto drops to its own user, which cannot enter pytest's private
        # tmp_path: give it a world-traversable folder of its own under /tmp.
        import tempfile

        self.workdir = Path(tempfile.mkdtemp(prefix="nearcast-mosquitto-"))
        self.conf = workdir / "mosquitto.conf"
        self.extra_config = extra_config
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        self.workdir.chmod(0o777)
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            f"log_dest file {self.workdir / 'mosquitto.log'}\n"
            + (self.extra_config or "allow_anonymous true\n"))

    def start(self) -> None:
        self.write_config()
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def log(self) -> str:
        path = self.workdir / "mosquitto.log"
        return path.read_text() if path.exists() else ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture
def private_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.cleanup()


@pytest.fixture
def system_mosquitto_port() -> int:
    """The machine's own Mosquitto on 127.0.0.1:1883 (started by the machine, or by .ci/run)."""
    try:
        with socket.create_connection(("127.0.0.1", 1883), timeout=1):
            return 1883
    except OSError:
        pytest.fail("no MQTT broker on 127.0.0.1:1883: start one with 'mosquitto -d' (make test does)")


class Daemon:
    """A nearcast daemon as a real child process (``python -m nearcast ...``)."""

    def __init__(self, args: list[str], workdir: Path, name: str, env: dict[str, str] | None = None) -> None:
        import sys

        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "nearcast", *args], stdout=self._log,
                                     stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"{url} not healthy in time:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = 15, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Any]:
    started: list[Daemon] = []

    def start(args: list[str], name: str, env: dict[str, str] | None = None) -> Daemon:
        d = Daemon(args, tmp_path, name, env)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop(9)


@pytest.fixture
def port_factory() -> Any:
    return free_port
