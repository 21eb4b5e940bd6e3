"""A fill killed with SIGKILL halfway, then restarted: never serves a partial or unverified file, completes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp

from shared import tokens
from shared.messages import REGISTRY, DesiredFill, FileSetRef, FillSource


def _toml(tmp_path: Path, keys: Any, aid: str, port: int) -> Path:
    p = tmp_path / f"{aid}.toml"
    p.write_text(f'[appliance]\nid = "{aid}"\n[http]\nport = {port}\n'
                 f'[cache]\ndir = "{tmp_path / "cache"}"\ncapacity_bytes = 100000000\n'
                 f'[security]\ntoken_keys_file = "{keys.token_file}"\n'
                 f'control_public_keys_file = "{keys.control_file}"\n'
                 f'[fill]\nconcurrency = 2\n[telemetry]\ninterval_s = 1.0\n[mqtt]\nport = 1883\nkeepalive_s = 2\n')
    return p


async def _wait_http(url: str, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert loop.time() < deadline, f"{url} not up"
            await asyncio.sleep(0.1)


async def test_sigkill_mid_fill_then_restart_completes_and_never_serves_partial(
        tmp_path: Path, keys: Any, origin: Any, file_set: Any, watch: Any, daemons: Any,
        port_factory: Any) -> None:
    files = {f"hls/seg_{i:02d}.m4s": os.urandom(256_000) for i in range(8)}
    files["hls/master.m3u8"] = b"#EXTM3U\n" + b"#" * 300
    file_set(origin.root, keys.signer, "tk", "v1", files)
    aid, port = f"edge-k{port_factory()}", port_factory()
    conf = _toml(tmp_path, keys, aid, port)
    base = f"http://127.0.0.1:{port}"
    w = watch(aid)
    d1 = daemons(["edge", "serve", "--config", str(conf)], "edge-run1")
    await _wait_http(base + "/healthz")
    size = sum(len(b) for b in files.values())
    ref = FileSetRef("tk", "v1", f"{origin.url}/manifests/tk/v1.json", size,
                     [FillSource(f"{origin.source('good')}/tk/v1", "origin")])
    env_id = "fill-crash-1"
    w.publish(f"nearcast/v1/appliances/{aid}/desired/fill",
              REGISTRY.encode(DesiredFill(1, [ref], rate_limit_bps=4_000_000), sender="control", msg_id=env_id),
              retain=True)

    def progress() -> float:
        got = [a.progress or 0.0 for a in w.bodies("/acks") if a.command_id == env_id and a.status == "progress"]
        return max(got, default=0.0)

    await w.wait(lambda: progress() >= 0.3, timeout=30)
    d1.proc.send_signal(signal.SIGKILL)
    d1.proc.wait(10)
    assert progress() < 1.0, "the fill finished before it could be killed; slow it down"
    cache = tmp_path / "cache"
    assert not (cache / "sets" / "tk").exists()  # nothing partial was ever published
    committed = [p for p in (cache / "fill" / "tk" / "v1").rglob("*") if p.is_file() and p.suffix == ".m4s"]
    assert committed, "some files should have been committed before the kill"
    committed[0].write_bytes(b"\x00" * committed[0].stat().st_size)  # and one of them rots on disk

    d2 = daemons(["edge", "serve", "--config", str(conf)], "edge-run2")
    await _wait_http(base + "/healthz")
    tok = tokens.sign(keys.tokens, path_prefix="tk/", client_prefix="127.0.0.1/32", ttl_s=300)
    statuses: list[int] = []
    done = False
    async with aiohttp.ClientSession() as s:
        while not done:
            done = any(a.command_id == env_id and a.status == "done" for a in w.bodies("/acks"))
            for path in ("hls/master.m3u8", "hls/seg_00.m4s", "hls/seg_07.m4s"):
                async with s.get(f"{base}/v1/content/{tok}/tk/{path}", allow_redirects=False) as r:
                    body = await r.read()
                    statuses.append(r.status)
                    if r.status == 200:
                        assert hashlib.sha256(body).digest() == hashlib.sha256(files[path]).digest(), path
                    else:
                        assert r.status == 404, r.status
            await asyncio.sleep(0.05)
            assert d2.proc.poll() is None, d2.log()
        for path, body in files.items():
            async with s.get(f"{base}/v1/content/{tok}/tk/{path}") as r:
                assert r.status == 200 and await r.read() == body, path
    assert 404 in statuses  # requests did arrive while the set was still being completed
    assert not list(cache.rglob("*.part"))
    log = d2.log()
    assert "failed verification" in log and "complete" in log
    assert d2.stop() == 0
