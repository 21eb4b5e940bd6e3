"""``title ingest`` end to end: the CLI uploads a generated master to a real control plane, whose job
runs the real encoding pipeline (worker processes), signs the file set and records the title."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner, Result

from control.api_ingest import sweep_partial_uploads
from control.auth import TokenStore
from control.encode.spec import IngestSpec
from control.encode.synth import make_master
from control.jobs import IngestJobs, Job, QueueFull, trim
from nearcast.cli import cli
from shared.errors import Conflict
from shared.signing import verify_document

from .conftest import Harness, eventually

CAP = 4 << 20


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s of 320x180 (about 1.2 MB): a fixed ladder of one rung, two 1 s segments."""
    return make_master(tmp_path_factory.mktemp("masters") / "master.mp4", seconds=2, width=320, height=180)


@pytest.fixture
async def control(control_factory: Any, tmp_path: Path) -> Harness:
    (tmp_path / "ingest").mkdir()
    extra = {"ingest": {"dir": str(tmp_path / "ingest"), "max_upload_bytes": CAP, "workers": 2}}
    harness: Harness = await control_factory(extra)
    return harness


async def _cli(control: Harness, *args: str) -> Result:
    env = {"NEARCAST_API": control.url, "NEARCAST_TOKEN": control.admin}
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, lambda: CliRunner().invoke(cli, list(args), env=env))


def _ingest_args(master: Path, title_id: str, *extra: str) -> list[str]:
    return ["title", "ingest", str(master), "--title-id", title_id, "--ladder", "fixed",
            "--segment-seconds", "1", "--codecs", "h264", *extra]


async def _job_ends(control: Harness, job_id: str) -> dict[str, Any]:
    async def ended() -> Any:
        status, job = await control.call("GET", f"/v1/jobs/{job_id}")
        assert status == 200, job
        return job if job["state"] not in ("queued", "running") else None

    return await eventually(ended, timeout=60)  # type: ignore[no-any-return]


async def test_cli_ingest_publishes_a_signed_title(control: Harness, master: Path) -> None:
    res = await _cli(control, *_ingest_args(master, "demo-1", "--name", "Demo One", "--genres", "drama,doc",
                                            "--json"))
    assert res.exit_code == 0, res.output
    job = json.loads(res.stdout)
    assert job["state"] == "done" and job["progress"] == 1.0 and job["error"] is None and job["version"] == "v1"
    assert job["started"] <= job["finished"]

    res = await _cli(control, "title", "show", "demo-1", "--json")
    shown = json.loads(res.stdout)
    assert shown["version"] == job["version"] and shown["name"] == "Demo One"
    assert shown["genres"] == ["drama", "doc"] and shown["size"] > 0
    assert "demo-1" in (await _cli(control, "title", "ls")).stdout
    listed = (await _cli(control, "title", "jobs")).stdout
    assert job["job_id"] in listed and "done" in listed

    # The signed file set is served publicly and lists files that are really on the origin.
    status, signed = await control.call("GET", f"/v1/filesets/demo-1/{job['version']}", token=None)
    assert status == 200, signed
    body = verify_document({control.ctx.signer.key_id: control.ctx.signer.public_raw}, signed)
    assert body["hls"] == "master.m3u8" and any(f["path"].endswith(".m4s") for f in body["files"])
    first = next(f for f in body["files"] if f["path"].endswith(".m4s"))
    data = (control.state / "origin" / "demo-1" / first["path"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == first["sha256"]
    assert not list((control.state / "uploads").iterdir())  # the upload was consumed by its job

    # The title exists now: a second ingest is refused up front, before any upload is wasted on a job.
    res = await _cli(control, *_ingest_args(master, "demo-1"))
    assert res.exit_code == 1 and "409" in res.output and "already exists" in res.output


async def test_garbage_master_fails_in_one_line_and_leaves_nothing(control: Harness, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(200_000))
    res = await _cli(control, *_ingest_args(garbage, "junk"))
    assert res.exit_code == 1
    assert res.output.strip().count("\n") == 0 and "ingest junk failed:" in res.output, res.output
    status, _ = await control.call("GET", "/v1/titles/junk")
    assert status == 404
    origin = control.state / "origin"
    assert not origin.exists() or not list(origin.iterdir())  # no title, no staging tree
    assert not list((control.state / "uploads").iterdir())
    status, jobs = await control.call("GET", "/v1/jobs")
    assert [j["state"] for j in jobs["jobs"]] == ["failed"] and jobs["jobs"][0]["error"]


async def test_server_paths_only_inside_the_ingest_dir(control: Harness, master: Path, tmp_path: Path) -> None:
    inside = tmp_path / "ingest" / "m.mp4"
    inside.write_bytes(master.read_bytes())
    (tmp_path / "ingest" / "escape.mp4").symlink_to(master)
    for path in (str(master), "../ingest/../" + master.name, "escape.mp4", str(tmp_path / "ingest" / ".." / "x")):
        status, body = await control.call("POST", "/v1/titles/ingest", {"title_id": "p1", "path": path})
        assert status == 403 and "outside the ingest directory" in body["error"], (path, body)
    status, body = await control.call("POST", "/v1/titles/ingest", {"title_id": "p1", "path": "nope.mp4"})
    assert status == 404
    status, body = await control.call("POST", "/v1/titles/ingest",
                                      {"title_id": "p1", "path": "m.mp4", "upload_id": "u1"})
    assert status == 400 and "exactly one" in body["error"]
    res = await _cli(control, *_ingest_args(Path("m.mp4"), "p1", "--server-path", "--json"))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["state"] == "done" and inside.exists()  # a server file is not consumed


@pytest.mark.parametrize("body", [
    {"title_id": "x", "upload_id": "u", "codecs": ["vp9"]},
    {"title_id": "x", "upload_id": "u", "codecs": ["hevc"]},
    {"title_id": "x", "upload_id": "u", "segment_seconds": 0.1},
    {"title_id": "x", "upload_id": "u", "segment_seconds": True},
    {"title_id": "x", "upload_id": "u", "ladder": ["fixed"]},
    {"title_id": "x", "upload_id": "u", "name": 3},
    {"title_id": "x", "upload_id": "u", "genres": ["a" * 200]},
    {"title_id": "../etc", "upload_id": "u"},
    {"title_id": "x", "upload_id": "u", "evil": 1},
    {"title_id": "x", "upload_id": "../../etc/passwd"},
])
async def test_bad_ingest_requests_are_400(control: Harness, body: dict[str, Any]) -> None:
    status, answer = await control.call("POST", "/v1/titles/ingest", body)
    assert status == 400 and isinstance(answer["error"], str), answer
    status, jobs = await control.call("GET", "/v1/jobs")
    assert jobs == {"jobs": []}


async def test_uploads_are_capped_and_guarded(control: Harness) -> None:
    uploads = control.state / "uploads"
    auth = {"Authorization": f"Bearer {control.admin}"}
    big = io.BytesIO(b"\0" * (CAP + 1))
    async with control.http.put(f"{control.url}/v1/uploads/big", data=big, headers=auth) as resp:
        assert resp.status == 413 and "limit" in (await resp.json())["error"]

    async def stream() -> Any:
        for _ in range(CAP // 65536 + 4):
            yield b"\1" * 65536

    try:  # no Content-Length: the cap is enforced while reading; the server may cut the connection
        async with control.http.put(f"{control.url}/v1/uploads/chunked", data=stream(), headers=auth) as resp:
            assert resp.status == 413
    except aiohttp.ClientError:
        pass
    assert not uploads.exists() or not list(uploads.iterdir())  # neither the upload nor a partial file

    status, _ = await control.call("PUT", "/v1/uploads/x", token=control.reader)
    assert status == 403
    async with control.http.put(f"{control.url}/v1/uploads/.hidden", data=b"x", headers=auth) as resp:
        assert resp.status == 400
    async with control.http.put(f"{control.url}/v1/uploads/small", data=b"abc", headers=auth) as resp:
        assert resp.status == 201
        assert (await resp.json())["sha256"] == hashlib.sha256(b"abc").hexdigest()
    async with control.http.put(f"{control.url}/v1/uploads/small", data=b"abcd", headers=auth) as resp:
        assert resp.status == 409
    assert (uploads / "small").read_bytes() == b"abc"


async def test_cancel_running_and_queued_jobs(control: Harness, tmp_path: Path) -> None:
    long = make_master(tmp_path / "ingest" / "long.mp4", seconds=8, width=640, height=360)
    spec = {"ladder": "fixed", "segment_seconds": 1.0, "path": long.name}
    status, first = await control.call("POST", "/v1/titles/ingest", {"title_id": "c1", **spec})
    assert status == 202, first
    status, second = await control.call("POST", "/v1/titles/ingest", {"title_id": "c2", **spec})
    assert status == 202 and second["state"] == "queued"
    status, body = await control.call("POST", "/v1/titles/ingest", {"title_id": "c2", **spec})
    assert status == 409 and second["job_id"] in body["error"]  # one job per title at a time

    status, cancelled = await control.call("POST", f"/v1/jobs/{second['job_id']}/cancel")
    assert status == 202 and cancelled["state"] == "cancelled"
    await eventually(lambda: control.ctx.jobs and control.ctx.jobs.get(first["job_id"]).state == "running")
    res = await _cli(control, "title", "cancel", first["job_id"])
    assert res.exit_code == 0, res.output
    ended = await _job_ends(control, first["job_id"])
    assert ended["state"] == "cancelled" and ended["error"] == "cancelled by an operator"
    status, body = await control.call("POST", f"/v1/jobs/{first['job_id']}/cancel")
    assert status == 409
    for title_id in ("c1", "c2"):
        assert (await control.call("GET", f"/v1/titles/{title_id}"))[0] == 404
        assert not (control.state / "origin" / title_id).exists()
    assert not (control.state / "keys" / "c1.json").exists()


async def test_a_restart_marks_interrupted_jobs_failed(tmp_path: Path) -> None:
    journal = tmp_path / "jobs.json"
    running = Job("j1", "t1", "T1", {}, "path:/x", "operator:a", 1.0, state="running", stage="encode")
    done = Job("j0", "t0", "T0", {}, "path:/x", "operator:a", 0.5, state="done", stage="done", version="v1")
    journal.write_text(json.dumps({"jobs": [running.to_json(), done.to_json()]}))

    async def publish(title_id: str, actor: str) -> str:
        raise AssertionError("nothing runs")

    jobs = IngestJobs(tmp_path / "origin", tmp_path / "keys", journal, publish)
    await jobs.start()
    try:
        assert jobs.get("j1").state == "failed" and "restart" in (jobs.get("j1").error or "")
        assert jobs.get("j0").state == "done"
    finally:
        await jobs.stop()
    assert json.loads(journal.read_text())["jobs"][0]["state"] == "failed"

    journal.write_text("{not json")
    jobs = IngestJobs(tmp_path / "origin", tmp_path / "keys", journal, publish)
    await jobs.start()
    await jobs.stop()
    assert jobs.jobs() == [] and journal.with_name("jobs.json.corrupt").exists()


def test_trim_keeps_active_jobs_and_the_newest_finished() -> None:
    jobs = [Job(f"j{i}", f"t{i}", "n", {}, "s", "a", float(i), state="done") for i in range(5)]
    jobs.append(Job("q", "tq", "n", {}, "s", "a", 0.0))
    kept = trim(jobs, keep=2)
    assert [j.job_id for j in kept] == ["j3", "j4", "q"]


async def test_shutdown_keeps_queued_uploads_an_operator_cancel_consumes_them(tmp_path: Path) -> None:
    async def publish(title_id: str, actor: str) -> str:
        raise AssertionError("nothing runs")

    kept, dropped = tmp_path / "kept.mp4", tmp_path / "dropped.mp4"
    kept.write_bytes(b"m")
    dropped.write_bytes(b"m")
    jobs = IngestJobs(tmp_path / "origin", tmp_path / "keys", tmp_path / "jobs.json", publish, queue_max=2)
    first = await jobs.submit(IngestSpec(title_id="a", name="A"), kept, source="upload:a", actor="t", consume=True)
    second = await jobs.submit(IngestSpec(title_id="b", name="B"), dropped, source="upload:b", actor="t",
                               consume=True)
    with pytest.raises(Conflict):
        await jobs.submit(IngestSpec(title_id="c", name="C"), kept, source="upload:a", actor="t", consume=True)
    with pytest.raises(QueueFull):
        await jobs.submit(IngestSpec(title_id="d", name="D"), tmp_path, source="path", actor="t")
    await jobs.cancel(second.job_id)  # the worker never started: both jobs stay queued until now
    assert second.state == "cancelled" and not dropped.exists()
    await jobs.stop(timeout=1)
    assert first.state == "cancelled" and "shut down" in (first.error or "") and kept.exists()


def test_partial_uploads_are_swept_at_start(tmp_path: Path) -> None:
    assert sweep_partial_uploads(tmp_path / "missing") == 0
    (tmp_path / ".u1.part").write_bytes(b"x")
    (tmp_path / "u2").write_bytes(b"x")
    assert sweep_partial_uploads(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["u2"]


def test_daemon_process_ingests_and_shuts_down_mid_job(tmp_path: Path, master: Path, daemons: Any,
                                                       port_factory: Any, system_mosquitto_port: int) -> None:
    """The real ``nearcast control serve`` process: spawned encoder workers, SIGTERM during a job, restart."""
    tokens = TokenStore([])
    admin = tokens.add("admin", "admin")
    tokens.save(tmp_path / "tokens.json")
    (tmp_path / "in").mkdir()
    long = make_master(tmp_path / "in" / "long.mp4", seconds=8, width=640, height=360)
    port = port_factory()
    conf = tmp_path / "control.toml"
    conf.write_text(f'[http]\nport = {port}\n[state]\ndir = "{tmp_path / "state"}"\n'
                    f'[auth]\ntokens_file = "{tmp_path / "tokens.json"}"\n[mqtt]\nport = {system_mosquitto_port}\n'
                    f'[ingest]\ndir = "{tmp_path / "in"}"\nworkers = 2\n')
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "NEARCAST_API": url, "NEARCAST_TOKEN": admin}

    def nearcast(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nearcast", *args], env=env, capture_output=True, text=True,
                              timeout=120)

    d = daemons(["control", "serve", "--config", str(conf)], "control")
    d.wait_http(f"{url}/healthz")
    res = nearcast(*_ingest_args(master, "d1", "--json"))
    assert res.returncode == 0, res.stderr + d.log()
    assert json.loads(res.stdout)["state"] == "done"
    res = nearcast(*_ingest_args(long, "d2", "--server-path", "--no-wait", "--json"))
    assert res.returncode == 0, res.stderr
    job_id = json.loads(res.stdout)["job_id"]
    deadline = time.monotonic() + 30
    while json.loads(nearcast("title", "jobs", "--json").stdout)["jobs"][0]["state"] != "running":
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.1)
    assert d.stop(15) == 0, d.log()  # a clean exit: the running encode was cancelled, not orphaned
    assert not (tmp_path / "state" / "origin" / "d2").exists()

    d = daemons(["control", "serve", "--config", str(conf)], "control-again")
    d.wait_http(f"{url}/healthz")
    jobs = {j["job_id"]: j for j in json.loads(nearcast("title", "jobs", "--json").stdout)["jobs"]}
    assert jobs[job_id]["state"] == "cancelled" and "shut down" in jobs[job_id]["error"]
    assert json.loads(nearcast("title", "show", "d1", "--json").stdout)["version"] == "v1"
    assert d.stop(15) == 0
