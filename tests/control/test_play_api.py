"""/v1/play and /v1/steer over real HTTP with appliances speaking real MQTT; the client-IP trust rule."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from click.testing import CliRunner

from control.play import client_ip, client_prefix, trusted_networks
from nearcast.cli import cli
from shared import tokens
from shared.errors import InvalidInput

from .conftest import Harness, eventually, make_origin_title

TRUSTED = trusted_networks(["10.9.0.0/16", "2001:db8:ffff::/48"])


def test_client_ip_believes_forwarded_for_only_from_trusted_proxies() -> None:
    assert client_ip("192.0.2.7", "203.0.113.5", TRUSTED) == "192.0.2.7"  # untrusted peer: header ignored
    assert client_ip("10.9.0.1", "203.0.113.5", TRUSTED) == "203.0.113.5"
    # The client may prepend anything; only the hop our proxy appended counts.
    assert client_ip("10.9.0.1", "1.1.1.1, 203.0.113.5", TRUSTED) == "203.0.113.5"
    assert client_ip("10.9.0.1", "203.0.113.5, 10.9.0.2", TRUSTED) == "203.0.113.5"
    assert client_ip("10.9.0.1", None, TRUSTED) == "10.9.0.1"
    assert client_ip("::ffff:192.0.2.9", None, TRUSTED) == "192.0.2.9"
    assert client_ip("2001:db8:ffff::1", "2001:db8:1::5", TRUSTED) == "2001:db8:1::5"
    for bad in ("not-an-ip", "1.2.3.4, <script>", "x" * 5000):
        with pytest.raises(InvalidInput):
            client_ip("10.9.0.1", bad, TRUSTED)
    assert client_prefix("203.0.113.77") == "203.0.113.0/24"
    assert client_prefix("2001:db8:1:2::5") == "2001:db8:1::/48"


async def _fleet(control: Harness) -> Any:
    """Three enrolled appliances: a and c inside ISP A (AS64501), b inside ISP B; all online with t1."""
    make_origin_title(control.state, "t1")
    assert (await control.call("POST", "/v1/titles", {"title_id": "t1"}))[0] == 201
    await control.enroll("edge-a", site="ams1", region="nl", asn=64501, prefixes=["10.1.0.0/16"], lat=52.4, lon=4.9)
    await control.enroll("edge-c", site="ams1", region="nl", asn=64501, prefixes=["10.1.0.0/16"], lat=52.3,
                         lon=4.8, load_threshold=10.0)
    await control.enroll("edge-b", site="fra1", region="de", asn=64502, prefixes=["10.2.0.0/16", "2001:db8:2::/48"],
                         lat=50.1, lon=8.7)
    client = control.mqtt("fake-fleet")
    await client.__aenter__()
    for aid in ("edge-a", "edge-b", "edge-c"):
        await control.announce(client, aid, f"http://{aid}.example:8080")
        await control.report_held(client, aid, [("t1", "v1", True)])
    await eventually(lambda: all(len(control.ctx.registry.complete_titles(a)) == 1
                                 for a in ("edge-a", "edge-b", "edge-c")))
    return client


async def test_play_ranks_the_clients_isp_first_with_signed_urls(control_factory: Any) -> None:
    control = await control_factory({"http": {"trusted_proxies": ["127.0.0.1/32"]}})
    client = await _fleet(control)
    try:
        status, body = await control.call("GET", "/v1/play/t1", token=None, headers={"X-Forwarded-For": "10.2.3.4"})
        assert status == 200, body
        assert [s["appliance_id"] for s in body["sources"]][:1] == ["edge-b"]
        first = body["sources"][0]
        assert first["hls"].startswith("http://edge-b.example:8080/v1/content/")
        assert first["hls"].endswith("/t1/master.m3u8") and first["dash"].endswith("/t1/manifest.mpd")
        tok = first["hls"].split("/v1/content/")[1].split("/")[0]
        grant = tokens.verify(control.ctx.keys, tok, path="t1/v/seg0.m4s", client_ip="10.2.3.99")
        assert grant.client_prefix == "10.2.3.0/24"
        with pytest.raises(tokens.TokenError):
            tokens.verify(control.ctx.keys, tok, path="t1/x", client_ip="10.1.0.1")
        with pytest.raises(tokens.TokenError):
            tokens.verify(control.ctx.keys, tok, path="t2/x", client_ip="10.2.3.4")
        status, body = await control.call("GET", "/v1/play/t1?count=1", token=None,
                                          headers={"X-Forwarded-For": "10.1.200.1"})
        assert [s["appliance_id"] for s in body["sources"]] == ["edge-a"] or \
            [s["appliance_id"] for s in body["sources"]] == ["edge-c"]
        status, recent = await control.call("GET", "/v1/steer/recent", token=control.reader)
        assert status == 200 and recent["decisions"][0]["client_prefix"] == "10.1.200.0/24"
        assert recent["decisions"][0]["ranked"][0] in ("edge-a", "edge-c")
        assert recent["decisions"][1]["ranked"][0] == "edge-b" and recent["decisions"][1]["title_id"] == "t1"
        assert (await control.call("GET", "/v1/steer/recent", token=None))[0] == 401
        assert (await control.call("GET", "/v1/play/nope", token=None))[0] == 404
        assert (await control.call("GET", "/v1/play/t1?count=0", token=None))[0] == 400
        assert (await control.call("GET", "/v1/play/t1", token=None, headers={"X-Forwarded-For": "junk"}))[0] == 400
    finally:
        await client.__aexit__(None, None, None)


async def test_steer_explains_and_follows_drain_offline_and_holdings(control: Harness) -> None:
    client = await _fleet(control)
    try:
        status, d = await control.call("GET", "/v1/steer?client_ip=10.1.0.9&title=t1", token=control.reader)
        assert status == 200
        assert [v["appliance_id"] for v in d["ranked"]][2] == "edge-b"
        assert {v["reason"] for v in d["ranked"][:2]} == {"embedded_prefix"}
        assert d["matched_prefix"] == "10.1.0.0/16" and d["location_source"] == "prefix_site"

        assert (await control.call("POST", "/v1/appliances/edge-a/drain"))[0] == 202
        d = (await control.call("GET", "/v1/steer?client_ip=10.1.0.9&title=t1"))[1]
        assert "edge-a" not in [v["appliance_id"] for v in d["ranked"]]
        assert {v["appliance_id"]: v["reason"] for v in d["dropped"]}["edge-a"] == "draining"
        assert (await control.call("POST", "/v1/appliances/edge-a/undrain"))[0] == 202

        await control.announce(client, "edge-c", "http://edge-c.example:8080", state="offline")
        await control.report_held(client, "edge-b", [("t1", "v1", False)])

        async def settled() -> bool:
            d = (await control.call("GET", "/v1/steer?client_ip=10.1.0.9&title=t1"))[1]
            reasons = {v["appliance_id"]: v["reason"] for v in d["dropped"]}
            return reasons.get("edge-c") == "offline" and reasons.get("edge-b") == "no_copy"

        await eventually(settled)

        # The operator CLI shows the same decision, with a line for every appliance.
        env = {"NEARCAST_API": control.url, "NEARCAST_TOKEN": control.reader}
        res = await asyncio.get_running_loop().run_in_executor(None, lambda: CliRunner().invoke(
            cli, ["steer", "--client-ip", "10.1.0.9", "--title", "t1"], env=env))
        assert res.exit_code == 0, res.output
        lines = res.output.splitlines()
        assert lines[1].startswith("  #1 edge-a: embedded_prefix")
        assert any(line.startswith("  -- edge-c: offline") for line in lines)
        assert any(line.startswith("  -- edge-b: no_copy") for line in lines)
        res = await asyncio.get_running_loop().run_in_executor(None, lambda: CliRunner().invoke(
            cli, ["steer", "--client-ip", "bogus", "--title", "t1"], env=env))
        assert res.exit_code == 1 and "bogus" in res.output
    finally:
        await client.__aexit__(None, None, None)


async def test_stale_appliances_leave_steering_within_the_ttl(control: Harness) -> None:
    client = await _fleet(control)
    await client.__aexit__(None, None, None)  # no more heartbeats, and no Will either (clean disconnect)
    ttl = control.ctx.config.fleet.heartbeat_ttl_s

    async def gone() -> bool:
        d = (await control.call("GET", "/v1/steer?client_ip=10.1.0.9&title=t1"))[1]
        return not d["ranked"]

    await eventually(gone, timeout=ttl + 5)
    assert (await control.call("GET", "/v1/play/t1", token=None))[0] == 503


async def test_clearkey_license_for_encrypted_titles(control_factory: Any) -> None:
    import base64

    from control.encode.crypto import new_key, write_key

    control = await control_factory({"http": {"trusted_proxies": ["127.0.0.1/32"]}})
    key = new_key("enc1", "cenc")
    write_key(control.state / "keys", key)
    make_origin_title(control.state, "enc1", encryption={"scheme": "cenc", "kid": key.kid})
    assert (await control.call("POST", "/v1/titles", {"title_id": "enc1"}))[1]["encrypted"] is True
    await control.enroll("edge-a", site="s1", prefixes=["10.1.0.0/16"])
    async with control.mqtt("fake") as client:
        await control.announce(client, "edge-a", "http://edge-a:1")
        await control.report_held(client, "edge-a", [("enc1", "v1", True)])
        await eventually(lambda: control.ctx.registry.complete_titles("edge-a"))
    xff = {"X-Forwarded-For": "10.1.0.5"}
    status, body = await control.call("GET", "/v1/play/enc1", token=None, headers=xff)
    assert status == 200 and body["license_url"].startswith(control.url + "/v1/license/")
    kid = base64.urlsafe_b64encode(bytes.fromhex(key.kid)).rstrip(b"=").decode()
    status, lic = await control.call("POST", body["license_url"][len(control.url):], {"kids": [kid]}, token=None,
                                     headers=xff)
    assert status == 200 and lic["keys"][0]["kid"] == kid
    assert base64.urlsafe_b64decode(lic["keys"][0]["k"] + "==") == bytes.fromhex(key.key)
    other = base64.urlsafe_b64encode(b"\x01" * 16).rstrip(b"=").decode()
    assert (await control.call("POST", body["license_url"][len(control.url):], {"kids": [other]}, token=None,
                               headers=xff))[0] == 403
    # The token is bound to the client's network and to this title.
    assert (await control.call("POST", body["license_url"][len(control.url):], {"kids": [kid]}, token=None,
                               headers={"X-Forwarded-For": "10.9.9.9"}))[0] == 403
    wrong_title = body["license_url"][len(control.url):].replace("/enc1", "/t1")
    assert (await control.call("POST", wrong_title, {"kids": [kid]}, token=None, headers=xff))[0] == 403
    assert (await control.call("POST", body["license_url"][len(control.url):], "junk", token=None,
                               headers=xff))[0] == 400


async def test_geoip_database_locates_clients_outside_every_prefix(control_factory: Any, tmp_path: Any) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-City", ipv4_compatible=True)
    writer.insert_network(IPSet(["172.16.0.0/16"]), {"location": {"latitude": 40.7, "longitude": -74.0}})
    db = tmp_path / "city.mmdb"
    writer.to_db_file(str(db))
    control = await control_factory({"steering": {"geoip_db": str(db)}})
    make_origin_title(control.state, "t1")
    assert (await control.call("POST", "/v1/titles", {"title_id": "t1"}))[0] == 201
    await control.enroll("edge-mad", site="mad", prefixes=["10.1.0.0/16"], lat=40.4, lon=-3.7)
    await control.enroll("edge-nyc", site="nyc", prefixes=["10.2.0.0/16"], lat=40.7, lon=-74.0)
    async with control.mqtt("fake") as client:
        for aid in ("edge-mad", "edge-nyc"):
            await control.announce(client, aid, f"http://{aid}:1")
            await control.report_held(client, aid, [("t1", "v1", True)])
        await eventually(lambda: control.ctx.registry.complete_titles("edge-nyc"))
    d = (await control.call("GET", "/v1/steer?client_ip=172.16.3.4&title=t1"))[1]
    assert d["location_source"] == "geoip" and [v["appliance_id"] for v in d["ranked"]] == ["edge-nyc", "edge-mad"]
    d = (await control.call("GET", "/v1/steer?client_ip=10.1.3.4&title=t1"))[1]
    assert d["ranked"][0]["appliance_id"] == "edge-mad"


async def test_edges_ranks_every_healthy_appliance_for_the_homepage(control_factory: Any) -> None:
    control = await control_factory({"http": {"trusted_proxies": ["127.0.0.1/32"]}})
    client = await _fleet(control)
    try:
        # edge-d holds nothing: still a place to fetch homepage rows from, never a place to play t1 from
        await control.enroll("edge-d", site="fra1", region="de", asn=64502, prefixes=["10.4.0.0/16"], lat=50.1,
                             lon=8.7)
        await control.announce(client, "edge-d", "http://edge-d.example:8080")
        await eventually(lambda: control.ctx.fleet.get("edge-d"))
        await asyncio.sleep(0.5)  # the steering snapshot refreshes every 0.2 s in tests
        status, body = await control.call("GET", "/v1/edges", token=None, headers={"X-Forwarded-For": "10.4.0.9"})
        assert status == 200 and body["edges"][0] == {"appliance_id": "edge-d", "url": "http://edge-d.example:8080"}
        status, body = await control.call("GET", "/v1/play/t1", token=None, headers={"X-Forwarded-For": "10.4.0.9"})
        assert "edge-d" not in [s["appliance_id"] for s in body["sources"]]
        status, body = await control.call("GET", "/v1/edges?as=10.2.0.1", token=None)
        assert status == 400 and "override is disabled" in body["error"]
        assert (await control.call("GET", "/v1/edges?count=99", token=None))[0] == 400
    finally:
        await client.__aexit__(None, None, None)
