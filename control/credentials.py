"""Broker credentials: the generated passwd/acl files, and rotating an appliance's login without downtime.

Mosquitto keeps one hash per user and drops a connected client whose login a reload invalidates, so a
rotation moves the appliance to a *new user name* (``<id>@<n>``, see :mod:`shared.mqtt_auth`):

1. the control plane adds the new user (random password, only its hash kept) next to the current one,
   writes the files and reloads the broker: both logins work;
2. it sends the appliance the new login on the appliance's own commands topic (only that appliance may
   read it; use TLS to the broker so it never crosses a network in clear);
3. the appliance writes it atomically to its credentials file, reconnects with it and acks ``done``
   naming the new user, over the new connection;
4. on that ack the control plane makes the new user current, drops the old one and reloads the broker;
   Mosquitto disconnects anything still logged in with the old password, and refuses it from then on.

The appliance keeps serving throughout; its MQTT session is down only for the one reconnect (telemetry
waits in its spool).  If the appliance never acks, both logins stay valid: nothing breaks, and the
rotation can be run again with ``force``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from shared import topics
from shared.errors import Conflict, NearcastError, NotFound
from shared.messages import Ack, RotateCredentials
from shared.mqtt import NotConnected
from shared.mqtt_auth import hash_password, mqtt_username, new_password, split_username

from . import mosquitto
from .context import ControlContext
from .store import ApplianceRecord

log = logging.getLogger(__name__)

ROTATE_TYPE = "command.rotate_credentials"


def broker_entries(ctx: ControlContext) -> dict[str, str]:
    entries: dict[str, str] = {}
    for record in ctx.registry.appliances.values():
        entries.update(record.broker_users())
    password = ctx.config.mqtt.resolve_password()
    if password:
        entries[ctx.config.broker.control_username] = hash_password(password)
    return entries


async def sync_broker_files(ctx: ControlContext) -> None:
    """Write passwd/acl from the registry and make the broker re-read them (``broker.reload``).

    Serialised: two enrollments at once must not leave the older snapshot on disk.  A reload that fails
    is logged, not raised: the registry change stands, and the next reload (or SIGHUP) picks it up.
    """
    async with ctx.broker_lock:
        entries = broker_entries(ctx)
        control_user = ctx.config.broker.control_username
        await asyncio.to_thread(mosquitto.write_broker_files, ctx.config.broker_files_dir, entries, control_user)
        try:
            await mosquitto.reload_broker(ctx.config.broker.reload)
        except NearcastError as exc:
            log.error("the MQTT broker was not reloaded: %s", exc)


def credentials_json(record: ApplianceRecord) -> dict[str, Any]:
    return {"user": record.mqtt_username, "rotating_to": record.mqtt_next_user or None}


async def start_rotation(ctx: ControlContext, appliance_id: str, *, actor: str, force: bool = False
                         ) -> dict[str, Any]:
    """Steps 1 and 2: add the next login, reload, send it to the appliance.  Returns what the API answers."""
    record = ctx.registry.appliances.get(appliance_id)
    if record is None:
        raise NotFound(f"no enrolled appliance {appliance_id!r}")
    if record.mqtt_next_user and not force:
        raise Conflict(f"a rotation to {record.mqtt_next_user!r} is under way; it completes when the appliance "
                       "acknowledges it (pass force to start over)")
    generation = max(split_username(record.mqtt_username)[1], split_username(record.mqtt_next_user)[1]
                     if record.mqtt_next_user else 0) + 1
    username = mqtt_username(appliance_id, generation)
    password = new_password()
    record = await ctx.store.begin_mqtt_rotation(appliance_id, username, hash_password(password), actor=actor,
                                                 detail={"from_user": record.mqtt_username, "force": force})
    ctx.registry.put(record)
    await sync_broker_files(ctx)
    try:
        command_id = await ctx.session.publish(topics.appliance_commands(appliance_id),
                                               RotateCredentials(username, password))
    except NotConnected as exc:
        # Never sent (the password exists nowhere else now): starting over with force is safe.
        raise NotConnected(f"{exc}; the rotation to {username!r} is pending but was not sent to the appliance: "
                           "run it again with force once the broker is reachable") from None
    await ctx.store.record_audit(actor, "appliance.mqtt_rotate_sent", appliance_id,
                                 {"command_id": command_id, "next_user": username})
    log.info("credential rotation for %s: %s -> %s (command %s)", appliance_id, record.mqtt_username, username,
             command_id)
    return {"id": appliance_id, "command_id": command_id, "mqtt": credentials_json(record)}


async def on_ack(ctx: ControlContext, appliance_id: str, ack: Ack) -> None:
    """Step 4, on the appliance's ``done``: the new user becomes current and the old one is revoked."""
    user = ack.detail.get("user")
    if ack.status != "done" or not isinstance(user, str):
        log.warning("credential rotation for %s not completed: %s %s", appliance_id, ack.status, ack.reason)
        return
    record = await ctx.store.finish_mqtt_rotation(appliance_id, user, actor=f"appliance:{appliance_id}")
    if record is None:
        log.info("credential rotation ack from %s for %r: no such rotation pending (a redelivery?)",
                 appliance_id, user)
        return
    ctx.registry.put(record)
    await sync_broker_files(ctx)
    log.info("credential rotation for %s complete: now %s, the old login is revoked", appliance_id, user)
