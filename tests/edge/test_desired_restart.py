"""Desired state across a restart: an older generation the broker still holds is not applied again.

Edges keep a persistent MQTT session, so the broker queues desired-state messages published while an
appliance is away, and redelivers one it sent but never saw acknowledged (the appliance was killed).
After a restart those copies arrive before (or beside) the retained latest generation.  Applying an
older fill plan again would resume and complete an older version of a title, and the catalog serves
the most recently completed version: the appliance would serve a version it had already replaced.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp

from shared.messages import REGISTRY, DesiredFill, FileSetRef, FillSource
from tests.edge.conftest import make_config, start_edge


def _ref(origin: Any, title: str, version: str, files: dict[str, bytes]) -> FileSetRef:
    return FileSetRef(title, version, f"{origin.url}/manifests/{title}/{version}.json",
                      sum(len(b) for b in files.values()), [FillSource(f"{origin.source('good')}/{title}/{version}",
                                                                       "origin")])


async def test_an_older_generation_redelivered_after_a_restart_is_ignored(
        tmp_path: Path, keys: Any, origin: Any, file_set: Any, watch: Any) -> None:
    v1 = {f"hls/seg_{i}.m4s": os.urandom(60_000) for i in range(6)}
    v2 = {f"hls/seg_{i}.m4s": os.urandom(1_000) for i in range(6)}
    file_set(origin.root, keys.signer, "ta", "v1", v1)
    file_set(origin.root, keys.signer, "ta", "v2", v2)
    config = make_config(tmp_path, keys, fill={"concurrency": 1})
    aid = config.appliance.id
    topic = f"nearcast/v1/appliances/{aid}/desired/fill"
    gen1 = REGISTRY.encode(DesiredFill(1, [_ref(origin, "ta", "v1", v1)], rate_limit_bps=800_000),
                           sender="control", msg_id="fill-g1")
    gen2 = REGISTRY.encode(DesiredFill(2, [_ref(origin, "ta", "v2", v2)]), sender="control", msg_id="fill-g2")
    w = watch(aid)

    def acks(env_id: str, status: str) -> int:
        return sum(1 for a in w.bodies("/acks") if a.command_id == env_id and a.status == status)

    async def fetch(edge: Any) -> tuple[int, bytes]:
        url = edge.content_url(edge.token("ta"), "ta", "hls/seg_0.m4s")
        async with aiohttp.ClientSession() as s, s.get(url, allow_redirects=False) as r:
            return r.status, await r.read()

    edge, runner = await start_edge(config, keys)
    try:
        await w.wait(edge.ctx.agent.session.connected.is_set)
        w.publish(topic, gen1, retain=True)
        await w.wait(lambda: acks("fill-g1", "accepted") == 1)
        for _ in range(400):  # v1 is part filled: some files committed, not all
            files = await edge.ctx.store.files(("ta", "v1"))
            if any(state == "complete" for _, _, state in files.values()):
                break
            await asyncio.sleep(0.025)
        w.publish(topic, gen2, retain=True)  # the plan replaces v1 by v2 before v1 is complete
        await w.wait(lambda: acks("fill-g2", "done") == 1)
        assert await fetch(edge) == (200, v2["hls/seg_0.m4s"])
        assert (await edge.ctx.store.get_set(("ta", "v1"))).state == "filling"  # type: ignore[union-attr]
    finally:
        await runner.cleanup()

    # While it is away, the broker holds a copy of generation 1 for its session (as for a publication
    # it never acknowledged before a kill); the retained message is generation 2.
    w.publish(topic, gen1, retain=False)
    edge, runner = await start_edge(config, keys)
    try:
        await w.wait(lambda: acks("fill-g2", "accepted") == 2)  # the retained latest, applied again
        await asyncio.sleep(0.5)
        assert acks("fill-g1", "accepted") == 1, "generation 1 was applied again after the restart"
        assert (await edge.ctx.store.get_set(("ta", "v1"))).state == "filling"  # type: ignore[union-attr]
        assert await fetch(edge) == (200, v2["hls/seg_0.m4s"])
    finally:
        await runner.cleanup()
