"""``nearcast model build|ls|show|deploy|rollback|status`` against a real control plane and broker."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from control.cli_models import parse_duration, parse_waves
from nearcast.cli import cli

from .conftest import Harness, eventually
from .test_deploy import SimEdge


async def run(h: Harness, *args: str, token: str | None = None) -> Result:
    env = {"NEARCAST_API": h.url, "NEARCAST_TOKEN": token or h.admin}
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env)


def one_line_error(res: Result, code: int = 1) -> str:
    assert res.exit_code == code, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 if code == 1 else lines, res.output
    return lines[-1]


def test_durations_and_waves() -> None:
    assert [parse_duration(t) for t in ("500ms", "60s", "2m", "1h", "1.5", "0")] == [0.5, 60, 120, 3600, 1.5, 0]
    for bad in ("5x", "-1", "1e3", "", "s", "1 h"):
        with pytest.raises(click.BadParameter):
            parse_duration(bad)
    assert parse_waves("5,25,100") == [5, 25, 100] and parse_waves("10%, 100%") == [10, 100]
    for bad in ("a,b", "", "5,,100", "nan,100", ",".join(["1"] * 21)):
        with pytest.raises(click.BadParameter):
            parse_waves(bad)


async def test_operator_commands(control_factory: Any) -> None:
    h = await control_factory({"models": {"tick_s": 0.05}})
    sims = [SimEdge(h, f"sim-{i}", refuse=("v2",)) for i in range(2)]
    for s in sims:
        await s.start()
    try:
        await eventually(lambda: len(h.ctx.fleet.snapshot()) == 2)
        res = await run(h, "model", "status")
        assert res.exit_code == 0 and "no deployment yet; active version: none" in res.output
        assert "no model versions yet" in (await run(h, "model", "ls")).output
        res = await run(h, "model", "build", "--version", "v1", "--source", "synthetic")
        assert res.exit_code == 0, res.output
        assert res.output.startswith("v1 ") and "SYNTHETIC" in res.output and "/v1/bundles/v1.ncb" in res.output
        res = await run(h, "model", "build", "--version", "v2", "--seed", "3", "--json")
        assert res.exit_code == 0 and json.loads(res.output)["version"] == "v2"
        assert "already exists" in one_line_error(await run(h, "model", "build", "--version", "v1"))
        assert "model version" in one_line_error(await run(h, "model", "build", "--version", "../v1"))
        assert "read-only" in one_line_error(await run(h, "model", "build", token=h.reader))
        shown = json.loads((await run(h, "model", "show", "v1", "--json")).output)
        assert shown["metadata"]["version"] == "v1" and shown["size"] > 0
        assert "404" in one_line_error(await run(h, "model", "show", "v9"))

        fast = ["--min-requests", "20", "--ack-timeout", "10s", "--max-p99-ratio", "100"]
        res = await run(h, "model", "deploy", "v1", "--waves", "100", "--bake", "100ms", *fast, "--wait")
        assert res.exit_code == 0 and "wave 1: completed" in res.output, res.output
        listing = (await run(h, "model", "ls")).output
        assert "* v1 " in listing and "  v2 " in listing
        table = (await run(h, "model", "status")).output
        assert "-> v1  completed" in table and all(f"sim-{i}" in table for i in range(2))
        status = json.loads((await run(h, "model", "status", "--json")).output)
        assert [(a["desired"], a["active"]) for a in status["appliances"]] == [("v1", "v1")] * 2
        assert "first version" in one_line_error(await run(h, "model", "rollback"))
        assert "already the current version" in one_line_error(await run(h, "model", "deploy", "v1"))

        # hostile options: click's usage errors (exit 2) or the API's 4xx in one line
        assert "Invalid value for '--waves'" in (await run(h, "model", "deploy", "v2", "--waves", "a,b")).output
        assert (await run(h, "model", "deploy", "v2", "--bake", "5x")).exit_code == 2
        assert (await run(h, "model", "deploy", "v2", "--min-requests", "0")).exit_code == 2
        assert "waves must rise" in one_line_error(await run(h, "model", "deploy", "v2", "--waves", "50,25,100"))
        assert "400" in one_line_error(await run(h, "model", "deploy", "../v2"))
        assert "404" in one_line_error(await run(h, "model", "deploy", "v9"))

        # v2 is refused by the appliances: --wait reports the automatic rollback and exits non-zero
        res = await run(h, "model", "deploy", "v2", "--waves", "50,100", "--bake", "5s", *fast, "--wait")
        assert res.exit_code == 1 and "rolled back" in res.output and "failed to load v2" in res.output
        assert "wave 1: rolled_back" in res.output
        assert "already rolled back" in one_line_error(await run(h, "model", "rollback", "--reason", "again"))
        assert all(s.running == "v1" for s in sims)
    finally:
        for s in sims:
            await s.stop()
