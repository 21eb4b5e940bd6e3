"""The operator commands against a real control API: tables, --json, one-line failures."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from click.testing import CliRunner, Result

from nearcast.cli import cli

from .conftest import Harness, eventually, make_origin_title


async def _run(control: Harness, *args: str, token: str | None = None) -> Result:
    env = {"NEARCAST_API": control.url, "NEARCAST_TOKEN": token or control.admin}
    return await asyncio.get_running_loop().run_in_executor(None, lambda: CliRunner().invoke(cli, list(args), env=env))


async def test_operator_commands_end_to_end(control: Harness) -> None:
    async def ok(*args: str) -> str:
        res = await _run(control, *args)
        assert res.exit_code == 0, f"{args}: {res.output}"
        return res.output

    new = (await ok("token", "create", "ci", "--role", "read")).strip()
    assert new.startswith("nct_")
    assert "ci" in await ok("token", "ls")
    assert (await ok("token", "revoke", "ci")).strip() == "ci: revoked"
    res = await _run(control, "title", "ls", token=new)
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "401" in res.output

    make_origin_title(control.state, "t1")
    assert (await ok("title", "register", "t1")).startswith("t1: v1, ")
    assert json.loads(await ok("title", "show", "t1", "--json"))["title_id"] == "t1"
    assert "t1" in await ok("title", "ls")
    token = (await ok("appliance", "enroll", "edge-a", "--site", "s1", "--prefix", "10.0.0.0/8",
                      "--prefix", "2001:db8::/32", "--disk-bytes", "1000000000", "--ttl", "600")).strip()
    assert token.startswith("nce_")
    res = await _run(control, "appliance", "enroll", "edge-b", "--site", "s1", "--prefix", "10.0.0.1/8")
    assert res.exit_code == 1 and "host bits" in res.output and res.output.count("\n") == 1
    status, _ = await control.call("POST", "/v1/enroll", {"token": token}, token=None)
    assert status == 201
    assert (await ok("appliance", "set", "edge-a", "--asn", "64501")).strip() == "edge-a: updated"
    shown = json.loads(await ok("appliance", "show", "edge-a", "--json"))
    assert shown["meta"]["asn"] == 64501 and shown["meta"]["prefixes"] == ["10.0.0.0/8", "2001:db8::/32"]
    async with control.mqtt("fake") as client:
        await control.announce(client, "edge-a", "http://edge-a:1")
        await eventually(lambda: control.ctx.fleet.get("edge-a"))
    table = await ok("appliance", "ls")
    assert "edge-a" in table and "online" in table

    plan = await ok("fill", "plan")
    assert "to fill" in plan and "edge-a: +0 -0" in plan  # no demand and no floor: nothing to place
    assert "no plan published yet" in await ok("fill", "status")
    assert "published to edge-a" in await ok("fill", "plan", "--publish")  # its first (empty) desired state
    assert "published to nobody" in await ok("fill", "plan", "--publish")  # unchanged: nothing re-sent
    assert "gen" in await ok("fill", "status")
    assert "no misses" in await ok("telemetry", "misses", "--hours", "1")
    entries = json.loads(await ok("audit", "--json", "--limit", "5"))["entries"]
    assert [e["action"] for e in entries[:2]] == ["fill.publish", "appliance.update"]
    assert (await ok("appliance", "rm", "edge-a")).strip() == "edge-a: removed"
    # Still heard on MQTT, but no longer enrolled (so never steered to); an unknown id is a one-line 404.
    assert json.loads(await ok("appliance", "show", "edge-a", "--json"))["enrolled"] is False
    res = await _run(control, "appliance", "show", "edge-zz")
    assert res.exit_code == 1 and "404" in res.output


async def test_no_api_or_bad_url_is_one_line(control: Harness) -> None:
    res: Any = await asyncio.get_running_loop().run_in_executor(None, lambda: CliRunner().invoke(
        cli, ["fill", "status", "--api", "http://127.0.0.1:1"], env={"NEARCAST_TOKEN": "x"}))
    assert res.exit_code == 1 and "cannot reach the control API" in res.output and res.output.count("\n") == 1
