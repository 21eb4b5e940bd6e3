"""MQTT handlers: appliance status, telemetry and acks, each validated before it touches any state.

A handler raises :class:`~shared.errors.InvalidInput` for anything wrong (a sender that is not the
topic's appliance, a body of the wrong type, out-of-range values); the MQTT session counts and logs
it and the loop carries on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from shared import topics
from shared.envelope import Envelope
from shared.errors import InvalidInput
from shared.ids import is_valid_id
from shared.messages import Ack, ApplianceStatus, Telemetry

from . import credentials
from .context import ControlContext
from .store import Holding

log = logging.getLogger(__name__)

MqttHandler = Callable[[Envelope[Any], str], Awaitable[None]]
MAX_HELD = 100_000


def _sender_is_topic_owner(env: Envelope[Any], topic: str) -> str:
    aid = topics.parse(topic).appliance_id
    if env.sender != aid:
        raise InvalidInput(f"{env.type} for {aid} sent by {env.sender}")
    return aid


def status_handler(ctx: ControlContext) -> MqttHandler:
    async def handle(env: Envelope[Any], topic: str) -> None:
        aid = _sender_is_topic_owner(env, topic)
        if not isinstance(env.body, ApplianceStatus):
            raise InvalidInput(f"{env.type} on a status topic")
        ctx.fleet.on_status(aid, env.body, env.ts)
        log.info("appliance %s is %s", aid, env.body.state)

    return handle


def telemetry_handler(ctx: ControlContext) -> MqttHandler:
    async def handle(env: Envelope[Any], topic: str) -> None:
        aid = _sender_is_topic_owner(env, topic)
        if not isinstance(env.body, Telemetry):
            raise InvalidInput(f"{env.type} on a telemetry topic")
        row = ctx.ingest.submit(aid, env.body, time.time(), env.id)
        if row is None:
            return  # a redelivery (the appliance's spool resent it): already counted once
        ctx.fleet.on_telemetry(aid, env.body)
        if ctx.deploy is not None:
            ctx.deploy.on_telemetry(row)

    return handle


def _from_file_sets(raw: object, now: float, appliance_id: str) -> list[Holding]:
    """The edge's progress form: ``{"<title>/<version>": {"state": ..., "bytes": n, "size": n}}``."""
    if not isinstance(raw, dict) or len(raw) > MAX_HELD:
        raise InvalidInput("fill ack: file_sets must be an object")
    out = []
    for key, prog in raw.items():
        title_id, _, version = str(key).partition("/")
        nbytes = prog.get("bytes", 0) if isinstance(prog, dict) else None
        if not (is_valid_id(title_id) and is_valid_id(version) and isinstance(prog, dict)
                and isinstance(nbytes, int) and not isinstance(nbytes, bool) and nbytes >= 0):
            raise InvalidInput("fill ack: file_sets entries are <title>/<version>: {state, bytes}")
        out.append(Holding(appliance_id, title_id, version, prog.get("state") == "done", nbytes, now))
    return out


def parse_held(detail: dict[str, Any], now: float, appliance_id: str) -> list[Holding] | None:
    """What a fill ack says the appliance holds; None when it says nothing about holdings.

    Two forms: ``held: [{title_id, version, complete, bytes}]`` (every set on disk) or the fill
    agent's ``file_sets`` progress map (the sets of the acked plan).
    """
    raw = detail.get("held")
    if raw is None:
        if "file_sets" in detail:
            return _from_file_sets(detail["file_sets"], now, appliance_id)
        return None
    if not isinstance(raw, list) or len(raw) > MAX_HELD:
        raise InvalidInput("fill ack: held must be a list")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise InvalidInput("fill ack: every held entry must be an object")
        tid, version, complete = item.get("title_id"), item.get("version"), item.get("complete", False)
        nbytes = item.get("bytes", 0)
        if not (is_valid_id(tid) and is_valid_id(version) and isinstance(complete, bool)
                and isinstance(nbytes, int) and not isinstance(nbytes, bool) and nbytes >= 0):
            raise InvalidInput("fill ack: held entries need title_id, version, complete (bool), bytes (int >= 0)")
        out.append(Holding(appliance_id, str(tid), str(version), complete, nbytes, now))
    return out


def ack_handler(ctx: ControlContext) -> MqttHandler:
    async def handle(env: Envelope[Any], topic: str) -> None:
        aid = _sender_is_topic_owner(env, topic)
        body = env.body
        if not isinstance(body, Ack):
            raise InvalidInput(f"{env.type} on an acks topic")
        if body.command_type == credentials.ROTATE_TYPE:
            await credentials.on_ack(ctx, aid, body)
            return
        if body.command_type == "desired.model":
            if ctx.deploy is not None:
                ctx.deploy.on_ack(aid, body)
            return
        if body.command_type != "desired.fill":
            log.info("ack from %s: %s %s %s", aid, body.command_type, body.status, body.reason)
            return
        now = time.time()
        held = parse_held(body.detail, now, aid)
        if held is not None and aid in ctx.registry.appliances:
            await ctx.store.replace_holdings(aid, held)
            ctx.registry.set_holdings(aid, held)
        generation = body.detail.get("generation")
        if isinstance(generation, int) and not isinstance(generation, bool):
            progress = body.progress if body.progress is not None and 0 <= body.progress <= 1 else None
            summary = {k: v for k, v in body.detail.items() if k not in ("held", "file_sets")}
            if held is not None:
                summary["complete"] = sum(1 for h in held if h.complete)
                summary["filling"] = sum(1 for h in held if not h.complete)
            await ctx.store.record_fill_ack(aid, generation, body.status, progress, summary, now)

    return handle
