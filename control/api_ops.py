"""Operator API: tokens, audit, enrollment and the appliance registry."""

from __future__ import annotations

import re
import time
from typing import Any

from aiohttp import web

from shared import topics
from shared.errors import InvalidInput
from shared.ids import check_id
from shared.messages import Ping, SetDraining
from shared.web import read_json

from . import credentials, enrollment, mosquitto
from .auth import OPERATOR, ROLES, new_token, token_hash
from .context import CTX, ControlContext
from .store import ApplianceRecord, Enrollment


def actor(request: web.Request) -> str:
    entry = request.get(OPERATOR)
    return f"operator:{entry.name}" if entry is not None else "anonymous"


async def _body(request: web.Request) -> dict[str, Any]:
    doc = await read_json(request, request.app[CTX].config.http.max_body_bytes)
    if not isinstance(doc, dict):
        raise InvalidInput("expected a JSON object")
    return doc


def int_param(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    """A bounded integer query parameter; ASCII digits only (``str.isdigit`` accepts ``²``)."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,12}", raw) or not lo <= int(raw) <= hi:
        raise InvalidInput(f"{name} must be an integer in {lo}..{hi}")
    return int(raw)


# -- tokens and audit ----------------------------------------------------------------------------------
async def list_tokens(request: web.Request) -> web.Response:
    items = await request.app[CTX].store.list_tokens()
    return web.json_response({"tokens": [{"name": t.name, "role": t.role, "created": t.created,
                                          "revoked": t.revoked} for t in items]})


async def create_token(request: web.Request) -> web.Response:
    doc = await _body(request)
    name, role = check_id(doc.get("name"), "token name"), doc.get("role", "read")
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}")
    token = new_token()
    await request.app[CTX].store.add_token(name, token_hash(token), role, actor=actor(request))
    return web.json_response({"name": name, "role": role, "token": token}, status=201)


async def revoke_token(request: web.Request) -> web.Response:
    name = check_id(request.match_info["name"], "token name")
    await request.app[CTX].store.revoke_token(name, actor=actor(request))
    return web.json_response({"name": name, "revoked": True})


async def audit(request: web.Request) -> web.Response:
    limit = int_param(request, "limit", 100, 1, 1000) or 100
    before = int_param(request, "before", None, 1, 2**62)
    items = await request.app[CTX].store.audit_log(limit=limit, before_id=before)
    return web.json_response({"entries": [{"id": e.id, "ts": e.ts, "actor": e.actor, "action": e.action,
                                           "target": e.target, "detail": e.detail} for e in items]})


# -- enrollment --------------------------------------------------------------------------------------
async def create_enrollment(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    doc = await _body(request)
    appliance_id = check_id(doc.get("appliance_id"), "appliance id")
    if appliance_id == ctx.config.broker.control_username:
        raise InvalidInput(f"{appliance_id!r} is the control plane's own MQTT identity")
    meta = enrollment.meta_from_json(doc)
    ttl = enrollment.enrollment_ttl(doc, ctx.config.security.enrollment_ttl_s)
    token = enrollment.new_enrollment_token()
    now = time.time()
    await ctx.store.create_enrollment(Enrollment(enrollment.token_sha256(token), appliance_id, meta, now, now + ttl),
                                      actor=actor(request))
    return web.json_response({"appliance_id": appliance_id, "token": token, "expires": now + ttl}, status=201)


sync_broker_files = credentials.sync_broker_files


async def redeem(request: web.Request) -> web.Response:
    """Public: an appliance trades its one-time token for its identity, credentials and keys."""
    ctx = request.app[CTX]
    doc = await _body(request)
    token = doc.get("token")
    if not isinstance(token, str) or not token.startswith(enrollment.ENROLL_PREFIX) or len(token) > 200:
        raise InvalidInput("token must be an enrollment token (nce_...)")
    password = mosquitto.new_password()
    record = await ctx.store.redeem_enrollment(enrollment.token_sha256(token), mosquitto.hash_password(password),
                                               time.time())
    ctx.registry.put(record)
    await sync_broker_files(ctx)
    mqtt = ctx.config.mqtt
    return web.json_response({
        "appliance_id": record.appliance_id,
        "meta": enrollment.meta_json(record.meta),
        "mqtt": {"host": ctx.config.broker.public_host or mqtt.host, "port": ctx.config.broker.public_port or mqtt.port,
                 "username": record.appliance_id, "password": password, "tls": mqtt.tls},
        "token_keys": ctx.keys.to_json(),
        "signing_keys": {ctx.signer.key_id: ctx.signer.public_key_b64()},
        "control_api": ctx.api_url,
    }, status=201)


# -- appliances ----------------------------------------------------------------------------------------
def appliance_json(ctx: ControlContext, aid: str, record: ApplianceRecord | None) -> dict[str, Any]:
    now = time.time()
    live = ctx.fleet.get(aid)
    state = live.effective_state(now, ctx.fleet.ttl_s) if live else "unknown"
    if record is not None and record.draining and state == "online":
        state = "draining"
    out: dict[str, Any] = {
        "id": aid, "enrolled": record is not None, "state": state,
        "http_url": live.http_url if live else "", "software": live.software if live else "",
        "last_seen_s_ago": round(now - live.last_seen, 1) if live and live.last_seen else None,
        "load": live.load if live else None, "draining": bool(record.draining) if record else False,
    }
    if record is not None:
        out["meta"] = enrollment.meta_json(record.meta)
        out["mqtt"] = credentials.credentials_json(record)
        out["titles_complete"] = sorted(ctx.registry.complete_titles(aid))
    return out


async def list_appliances(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    ids = sorted(set(ctx.registry.appliances) | {a.id for a in ctx.fleet.snapshot()})
    return web.json_response({"appliances": [appliance_json(ctx, a, ctx.registry.appliances.get(a)) for a in ids]})


def _known(ctx: ControlContext, aid: str) -> ApplianceRecord | None:
    record = ctx.registry.appliances.get(aid)
    if record is None and ctx.fleet.get(aid) is None:
        from shared.errors import NotFound

        raise NotFound(f"no appliance {aid!r}")
    return record


async def show_appliance(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    aid = check_id(request.match_info["id"], "appliance id")
    return web.json_response(appliance_json(ctx, aid, _known(ctx, aid)))


async def update_appliance(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    aid = check_id(request.match_info["id"], "appliance id")
    current = await ctx.store.get_appliance(aid)
    meta = enrollment.meta_from_json(await _body(request), current.meta)
    record = await ctx.store.update_appliance(aid, meta, actor=actor(request))
    ctx.registry.put(record)
    return web.json_response(appliance_json(ctx, aid, record))


async def remove_appliance(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    aid = check_id(request.match_info["id"], "appliance id")
    await ctx.store.remove_appliance(aid, actor=actor(request))
    ctx.registry.drop(aid)
    await sync_broker_files(ctx)
    return web.json_response({"id": aid, "removed": True})


async def ping_appliance(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    aid = check_id(request.match_info["id"], "appliance id")
    _known(ctx, aid)
    msg_id = await _command(ctx, aid, Ping("operator ping"))
    await ctx.store.record_audit(actor(request), "appliance.ping", aid, {"command_id": msg_id})
    return web.json_response({"command_id": msg_id}, status=202)


async def _command(ctx: ControlContext, aid: str, body: Any) -> str:
    """Through the on-disk outbox (a broker outage delays the command, never loses it)."""
    if ctx.commands is not None:
        return await ctx.commands.send(aid, body)
    return await ctx.session.publish(topics.appliance_commands(aid), body)


async def drain_appliance(request: web.Request) -> web.Response:
    """Steering drops a drained appliance at once (the store says so); the appliance is told too."""
    ctx = request.app[CTX]
    aid = check_id(request.match_info["id"], "appliance id")
    draining = request.path.endswith("/drain")
    record = _known(ctx, aid)
    if record is not None:
        ctx.registry.put(await ctx.store.set_draining(aid, draining, actor=actor(request)))
    msg_id = await _command(ctx, aid, SetDraining(draining))
    if record is None:
        await ctx.store.record_audit(actor(request), "appliance.drain" if draining else "appliance.undrain", aid,
                                     {"command_id": msg_id, "enrolled": False})
    return web.json_response({"command_id": msg_id, "draining": draining}, status=202)


async def rotate_credentials(request: web.Request) -> web.Response:
    """Give the appliance a new broker login without taking it offline (see :mod:`control.credentials`)."""
    ctx = request.app[CTX]
    aid = check_id(request.match_info["id"], "appliance id")
    doc = await _body(request) if request.can_read_body else {}
    force = doc.get("force", False)
    if not isinstance(force, bool) or set(doc) - {"force"}:
        raise InvalidInput("the body may only hold force (true or false)")
    out = await credentials.start_rotation(ctx, aid, actor=actor(request), force=force)
    return web.json_response(out, status=202)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/tokens", list_tokens)
    r.add_post("/v1/tokens", create_token)
    r.add_delete("/v1/tokens/{name}", revoke_token)
    r.add_get("/v1/audit", audit)
    r.add_post("/v1/enrollments", create_enrollment)
    r.add_post("/v1/enroll", redeem)
    r.add_get("/v1/appliances", list_appliances)
    r.add_get("/v1/appliances/{id}", show_appliance)
    r.add_patch("/v1/appliances/{id}", update_appliance)
    r.add_delete("/v1/appliances/{id}", remove_appliance)
    r.add_post("/v1/appliances/{id}/ping", ping_appliance)
    r.add_post("/v1/appliances/{id}/drain", drain_appliance)
    r.add_post("/v1/appliances/{id}/undrain", drain_appliance)
    r.add_post("/v1/appliances/{id}/rotate-credentials", rotate_credentials)
