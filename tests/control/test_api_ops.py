"""Operator API over real HTTP: roles, tokens, audit, enrollment, metadata validation, the OpenAPI document."""

from __future__ import annotations

import io
import json
from typing import Any

from aiohttp import web

from control import mosquitto
from control.openapi import route_key

from .conftest import ADMIN, Harness


async def test_roles_and_token_lifecycle(control: Harness) -> None:
    assert (await control.call("GET", "/v1/appliances", token=None))[0] == 401
    assert (await control.call("GET", "/v1/appliances", token=control.reader))[0] == 200
    assert (await control.call("POST", "/v1/tokens", {"name": "x"}, token=control.reader))[0] == 403
    status, body = await control.call("POST", "/v1/tokens", {"name": "ci", "role": "read"})
    assert status == 201 and body["token"].startswith("nct_")
    new = body["token"]
    assert (await control.call("GET", "/v1/titles", token=new))[0] == 200
    listed = (await control.call("GET", "/v1/tokens"))[1]["tokens"]
    assert {t["name"] for t in listed} == {"root", "viewer", "ci"}
    assert not any("sha256" in t or "token" in t for t in listed)
    assert (await control.call("POST", "/v1/tokens", {"name": "ci"}))[0] == 409
    assert (await control.call("POST", "/v1/tokens", {"name": "bad name!"}))[0] == 400
    assert (await control.call("POST", "/v1/tokens", {"name": "r", "role": "god"}))[0] == 400
    assert (await control.call("DELETE", "/v1/tokens/ci"))[0] == 200
    assert (await control.call("GET", "/v1/titles", token=new))[0] == 401
    entries = (await control.call("GET", "/v1/audit"))[1]["entries"]
    assert [(e["action"], e["target"], e["actor"]) for e in entries[:2]] == [
        ("token.revoke", "ci", "operator:root"), ("token.create", "ci", "operator:root")]


async def test_bad_bodies_are_clear_4xx(control: Harness) -> None:
    for raw in (b"not json", b"[1, 2]", b'{"name": ' * 5000, b"\xff\xfe"):
        async with control.http.post(control.url + "/v1/tokens", data=raw,
                                     headers={"Authorization": f"Bearer {control.admin}"}) as resp:
            assert resp.status == 400, raw[:20]
            assert "error" in json.loads(await resp.text())
    big = b'{"name": "' + b"a" * (2 << 20) + b'"}'
    async with control.http.post(control.url + "/v1/tokens", data=io.BytesIO(big),
                                 headers={"Authorization": f"Bearer {control.admin}"}) as resp:
        assert resp.status == 413
    assert (await control.call("GET", "/v1/appliances", token="x" * 10_000))[0] in (400, 401, 431)


async def test_enrollment_gives_credentials_once(control: Harness) -> None:
    meta = {"site": "ams1", "region": "nl", "isp": "ISP A", "asn": 64501,
            "prefixes": ["192.0.2.0/24", "2001:db8::/32"], "lat": 52.37, "lon": 4.9,
            "disk_bytes": 10**12, "bandwidth_bps": 10**10, "fill_window": "01:00-06:00"}
    status, body = await control.call("POST", "/v1/enrollments", {"appliance_id": "edge-a", **meta})
    assert status == 201
    token = body["token"]
    status, bundle = await control.call("POST", "/v1/enroll", {"token": token}, token=None)
    assert status == 201
    assert bundle["appliance_id"] == "edge-a" and bundle["mqtt"]["username"] == "edge-a"
    assert bundle["mqtt"]["port"] == control.broker_port and json.loads(bundle["token_keys"])["keys"]
    assert list(bundle["signing_keys"]) == [control.ctx.signer.key_id]
    assert bundle["meta"]["prefixes"] == ["192.0.2.0/24", "2001:db8::/32"]
    # Once only; the store keeps a hash that mosquitto accepts, never the password.
    assert (await control.call("POST", "/v1/enroll", {"token": token}, token=None))[0] == 400
    passwd = (control.state / "mosquitto" / "passwd").read_text()
    line = next(x for x in passwd.splitlines() if x.startswith("edge-a:"))
    assert mosquitto.verify_password(bundle["mqtt"]["password"], line.split(":", 1)[1])
    assert bundle["mqtt"]["password"] not in passwd
    status, shown = await control.call("GET", "/v1/appliances/edge-a", token=control.reader)
    assert status == 200 and shown["meta"]["asn"] == 64501 and shown["state"] == "unknown"
    assert (await control.call("POST", "/v1/enrollments", {"appliance_id": "edge-a", "site": "x"}))[0] == 409


async def test_metadata_is_validated(control: Harness) -> None:
    bad: list[dict[str, Any]] = [
        {"appliance_id": "e1"},  # no site
        {"appliance_id": "e1", "site": "s", "prefixes": ["10.0.0.1/8"]},  # host bits
        {"appliance_id": "e1", "site": "s", "prefixes": ["not-a-prefix"]},
        {"appliance_id": "e1", "site": "s", "prefixes": "10.0.0.0/8"},
        {"appliance_id": "e1", "site": "s", "lat": 91, "lon": 0},
        {"appliance_id": "e1", "site": "s", "lat": 10},
        {"appliance_id": "e1", "site": "s", "asn": -1},
        {"appliance_id": "e1", "site": "s", "asn": True},
        {"appliance_id": "e1", "site": "s", "fill_window": "25:00-01:00"},
        {"appliance_id": "e1", "site": "s", "surprise": 1},
        {"appliance_id": "e/1", "site": "s"},
        {"appliance_id": "control", "site": "s"},
    ]
    for doc in bad:
        status, body = await control.call("POST", "/v1/enrollments", doc)
        assert status == 400, doc
        assert body["error"]
    await control.enroll("e1", site="s", prefixes=["10.0.0.0/8"])
    status, body = await control.call("PATCH", "/v1/appliances/e1", {"prefixes": ["10.1.0.0/16"], "asn": 7})
    assert status == 200 and body["meta"]["prefixes"] == ["10.1.0.0/16"] and body["meta"]["site"] == "s"
    assert (await control.call("PATCH", "/v1/appliances/e1", {"prefixes": ["::/129"]}))[0] == 400
    assert (await control.call("PATCH", "/v1/appliances/none", {"asn": 1}))[0] == 404


async def test_openapi_documents_every_route(control: Harness) -> None:
    status, doc = await control.call("GET", "/v1/openapi.json", token=None)
    assert status == 200 and doc["openapi"].startswith("3.")
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    routes = {route_key(r.method, r.resource.canonical) for r in control.app.router.routes()
              if r.method != "HEAD" and r.resource is not None
              and not isinstance(r.resource, web.StaticResource)}  # the web pages are not API
    assert routes - documented == set()
    assert documented - routes == set()


async def test_unknown_routes_and_methods(control: Harness) -> None:
    assert (await control.call("GET", "/v1/nope", token=ADMIN))[0] == 404
    assert (await control.call("PUT", "/v1/appliances", token=ADMIN))[0] == 405
