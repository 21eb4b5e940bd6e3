"""Run an edge whose clock is off from the control plane's; URL tokens must hold within the leeway.

Real processes: a private Mosquitto, an HTTP origin, a control plane (whose token keys the edge
shares, as enrollment gives them) and one edge started under ``libfaketime`` (Debian package
``faketime``; without it the scenario reports ``skipped``) with its wall clock shifted by a random
offset within twice ``security.token_leeway_s``, a new offset each trial (the edge restarts).

Each trial checks, with the edge's ``Date`` header confirming the shift took effect:

* tokens signed with the control plane's keys (``shared.tokens.sign``, as ``/v1/play`` signs them)
  whose expiry is ``now + ttl`` on the control plane's clock: accepted (200 with the right bytes) when
  the edge's clock is less than the leeway past it, refused with 403 (never a 5xx) when it is more (half
  each, from 2 s to one leeway either side of the boundary);
* a token with the usual lifetime (``play_token_ttl_s``) is accepted whatever the skew;
* the control plane sees the edge ``online`` after each restart (its status carries the edge's clock).
"""

from __future__ import annotations

import glob
import json
import random
import time
from email.utils import parsedate_to_datetime
from http.client import HTTPException
from pathlib import Path
from typing import Any

from shared import tokens
from shared.messages import DesiredFill, FileSetRef, FillSource
from tests.edge.conftest import build_file_set
from tests.faults.harness import Edge, Stack, Watcher, http_get, make_keys, publish_desired, sha256, until
from tests.faults.scenario import Scenario, ScenarioResult

NAME = "clock_skew"
LEEWAY_S = 30.0
MARGIN_S = 2.0
TOKENS_PER_TRIAL = 8
PLAY_TTL_S = 6 * 3600.0


def faketime_library() -> str | None:
    for pattern in ("/usr/lib/*/faketime/libfaketimeMT.so.1", "/usr/lib/faketime/libfaketimeMT.so.1",
                    "/usr/lib64/faketime/libfaketimeMT.so.1"):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def edge_skew(edge: Edge) -> float:
    """The edge's clock minus ours, from its Date header (1 s resolution)."""
    resp = http_get(f"{edge.url}/healthz")
    return parsedate_to_datetime(resp.headers["date"]).timestamp() - time.time()


def filled(watcher: Watcher) -> bool:
    return any(a.command_id == "skew-fill-1" and a.status == "done" for a in watcher.bodies("/acks"))


def run(trials: int, seed: int, workdir: Path) -> ScenarioResult:
    started = time.monotonic()
    rng = random.Random(seed)
    result = ScenarioResult(NAME, trials)
    fail = result.failures
    lib = faketime_library()
    if lib is None:
        result.trials = 0
        result.detail = {"skipped": "libfaketime is not installed (Debian package faketime; scripts/setup-system.sh)"}
        return result
    detail: dict[str, Any] = {"skews": [], "accepted": 0, "refused": 0, "wrong_answers": 0, "server_errors": 0}
    with Stack(workdir) as stack:
        broker = stack.broker()
        keys = make_keys(workdir / "keys")
        root = workdir / "origin"
        origin = stack.origin(root)
        control = stack.control("control", broker.port, {"fill": {"interval_s": 0}})
        token_file = control.state_dir / "token-keys.json"
        edge = stack.edge("edge-skew", broker.port, keys, {
            "security": {"token_keys_file": token_file, "token_leeway_s": LEEWAY_S}})
        watcher = stack.watcher(broker.port, f"nearcast/v1/appliances/{edge.name}/acks")
        files = {"hls/master.m3u8": b"#EXTM3U\n#skew\n", "hls/seg_0.m4s": rng.randbytes(80_000)}
        build_file_set(root, keys.signer, "tk", "v1", files)
        control_keys = tokens.TokenKeys.generate()
        control_keys.save(token_file)  # the control plane's keys, as it would create them; the edge shares them
        try:
            control.spawn()
            ref = FileSetRef("tk", "v1", f"{origin.url}/manifests/tk/v1.json", sum(len(b) for b in files.values()),
                             [FillSource(f"{origin.url}/good/tk/v1", "origin")])
            publish_desired(watcher, edge.name, "fill", DesiredFill(1, [ref]), "skew-fill-1")  # retained
            control.wait_healthy()
            for trial in range(trials):
                where = f"trial {trial}"
                side = 1 if trial % 2 == 0 else -1  # ahead and behind in turn, by up to twice the leeway
                skew = side * rng.uniform(0, 2 * LEEWAY_S)
                detail["skews"].append(round(skew, 1))
                edge.env = {"LD_PRELOAD": lib, "FAKETIME": f"{skew:+.3f}", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                            "FAKETIME_NO_CACHE": "1"}
                edge.start()
                seen = edge_skew(edge)
                if abs(seen - skew) > 1.5:
                    fail.append(f"{where}: the edge's clock is {seen:+.1f} s off, not {skew:+.1f} s: "
                                "faketime did not take")
                until(lambda: control.appliance_state(edge.name) == "online", 30,
                      f"{where}: the control plane to see the edge (clock {skew:+.1f} s) online")
                until(lambda: filled(watcher), 60,  # in the first trial (a skewed clock fills too)
                      f"the fill; edge log:\n{edge.log()}")
                # Expiries on either side of what the edge must still accept: its clock will be `late`
                # seconds past a token's expiry, accepted up to the leeway (MARGIN_S either side of that
                # edge is left out: request timing and whole-second expiries would decide it).
                cases: list[tuple[float, bool]] = [(PLAY_TTL_S, True)]
                for i in range(TOKENS_PER_TRIAL):
                    accept = i % 2 == 0
                    late = LEEWAY_S + (-1 if accept else 1) * rng.uniform(MARGIN_S, LEEWAY_S)
                    cases.append((skew - late, accept))
                for ttl, accept in cases:
                    token = tokens.sign(control_keys, path_prefix="tk/", client_prefix="127.0.0.0/8", ttl_s=ttl)
                    try:
                        resp = http_get(edge.content_url(token, "tk", "hls/seg_0.m4s"))
                    except (OSError, HTTPException) as exc:
                        fail.append(f"{where}: request failed: {exc}")
                        continue
                    what = f"{where}: token ttl {ttl:+.1f} s with the edge {skew:+.1f} s off"
                    if resp.status >= 500:
                        detail["server_errors"] += 1
                        fail.append(f"{what}: HTTP {resp.status}")
                    elif accept:
                        if resp.status == 200 and sha256(resp.body) == sha256(files["hls/seg_0.m4s"]):
                            detail["accepted"] += 1
                        else:
                            detail["wrong_answers"] += 1
                            fail.append(f"{what}: should be accepted, got HTTP {resp.status} {resp.body[:120]!r}")
                    elif resp.status == 403 and "expired" in json.loads(resp.body).get("error", ""):
                        detail["refused"] += 1
                    else:
                        detail["wrong_answers"] += 1
                        fail.append(f"{what}: should be refused as expired, got HTTP {resp.status}")
                if edge.stop() != 0:
                    fail.append(f"{where}: the edge did not exit cleanly on SIGTERM")
            if control.stop() != 0:
                fail.append("the control plane did not exit cleanly on SIGTERM")
        except AssertionError as exc:
            fail.append(f"{str(exc)[:3000]}\nedge log:\n{edge.log(2000)}\ncontrol log:\n{control.log(2000)}")
    result.detail = detail
    result.seconds = time.monotonic() - started
    return result


SCENARIO = Scenario(
    name=NAME,
    description="an edge's clock off by up to twice the token leeway (libfaketime): tokens within the leeway "
                "accepted, beyond it refused with 403, never a 5xx; the control plane still sees the edge",
    run=run,
    fast_trials=2,
    full_trials=12,
)
