"""Shared fixtures: generated masters, one published title per session, a real HTTP origin."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from control.encode.fileset import FileSetManifest
from control.encode.pipeline import ingest
from control.encode.spec import IngestSpec
from control.encode.synth import make_master

Serve = Callable[..., Awaitable[str]]
ProbeUrl = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def fixed_heap(monkeypatch: pytest.MonkeyPatch) -> Iterator[ProcessPoolExecutor]:
    """A worker process (a fresh interpreter) whose malloc fills every block it hands out.

    libx264's AVX-512 code for the macroblock tree reads heap memory it has not written: on a CPU with
    AVX-512 (seen on AMD Zen 4), two identical encodes in one process can differ in a few bits, and do
    not with x264's asm limited to AVX2 or with mbtree off. With ``MALLOC_PERTURB_`` the heap's
    contents no longer depend on what ran before, so a test can still ask our own pipeline for
    bit-identical output. Submit the encodes to the pool; they run one after another in one process.
    """
    monkeypatch.setenv("MALLOC_PERTURB_", "165")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(int).result()  # start the worker now, with the variable set
        yield pool


@pytest.fixture(scope="session")
def ffprobe_bin() -> str:
    path = shutil.which("ffprobe")
    if path is None:
        pytest.skip("ffprobe not installed (Debian package 'ffmpeg'; scripts/setup-system.sh installs it)")
    return path


@pytest.fixture(scope="session")
def master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s, 640x360, 24 fps, with a stereo tone: two fixed-ladder rungs, four 1 s segments."""
    return make_master(tmp_path_factory.mktemp("masters") / "master.mp4", seconds=4, width=640, height=360)


@pytest.fixture(scope="session")
def published(tmp_path_factory: pytest.TempPathFactory, master: Path) -> tuple[Path, FileSetManifest]:
    origin = tmp_path_factory.mktemp("origin")
    keys = tmp_path_factory.mktemp("keys")
    spec = IngestSpec(title_id="clear-title", name="Clear", genres=("drama",), ladder="fixed", segment_seconds=1.0,
                      workers=2)
    manifest = ingest(master, origin, keys, spec)
    return origin / "clear-title", manifest


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start a real static HTTP server (aiohttp FileResponse: ranges supported) on 127.0.0.1."""
    runners: list[web.AppRunner] = []

    async def start(root: Path, routes: list[web.RouteDef] | None = None) -> str:
        app = web.Application()
        app.router.add_routes(routes or [])
        app.router.add_static("/", root)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def probe_url(ffprobe_bin: str) -> ProbeUrl:
    """Run ffprobe (without blocking the loop that serves it) and return its JSON output."""

    async def run(url: str, *extra: str) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            ffprobe_bin, "-v", "error", "-of", "json", *extra, url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
        result = json.loads(out)
        assert isinstance(result, dict)
        return result

    return run
