"""A/B experiments on the rows through the real control API: assignment, exposure, report, SRM, CLI."""

from __future__ import annotations

import random
import time
from typing import Any

from control import ab
from control.app import CTX
from control.recs_service import RecsService

from .conftest import Harness
from .test_cli_ops import _run
from .test_recs_api import event, publish


async def test_experiment_assigns_logs_exposure_and_reports(control: Harness) -> None:
    await publish(control, 8)
    for bad, reason in [({"id": "x", "cells": [{"name": "a"}]}, "2-8 cells"),
                        ({"id": "x", "cells": [{"name": "a"}, {"name": "a"}]}, "unique"),
                        ({"id": "x", "cells": [{"name": "a"}, {"name": "b", "policy": "random"}]}, "policy"),
                        ({"id": "x", "cells": [{"name": "a"}, {"name": "b", "model_version": "r1"}]}, "trained"),
                        ({"id": "x", "cells": [{"name": "a", "weight": -1}, {"name": "b"}]}, "weight"),
                        ({"id": "x", "cells": [{"name": "a"}, {"name": "b"}], "control": "c"}, "control"),
                        ({"id": "x", "cells": [{"name": "a"}, {"name": "b"}], "why": 1}, "unknown")]:
        status, body = await control.call("POST", "/v1/experiments", bad)
        assert status == 400 and reason in body["error"], (bad, body)
    status, _ = await control.call("POST", "/v1/experiments", {"id": "e1", "cells": [{"name": "a"}, {"name": "b"}]},
                                   token=control.reader)
    assert status == 403
    definition = {"id": "rows-1", "cells": [{"name": "personal", "policy": "model"},
                                            {"name": "trending", "policy": "trending"}]}
    status, created = await control.call("POST", "/v1/experiments", definition)
    assert status == 201 and "salt" not in created
    assert (await control.call("POST", "/v1/experiments", definition))[0] == 409  # ids are never reused

    ctx = control.app[CTX]
    stored = (await ctx.store.list_experiments())[0]
    exp = ab.experiment(stored)
    profiles = [f"p{i:03d}" for i in range(200)]
    cells: dict[str, str] = {}
    for p in profiles:
        status, doc = await control.call("GET", f"/v1/profiles/{p}/home", token=None)
        assert status == 200 and doc["experiment"]["id"] == "rows-1"
        cells[p] = doc["experiment"]["cell"]
        assert cells[p] == exp.assign(p).name
    await control.call("GET", f"/v1/profiles/{profiles[0]}/home", token=None)  # a second page: no new exposure
    assert len(await ctx.store.exposures("rows-1")) == 200

    # the same assignment after a restart (the salt lives in the store)
    again = RecsService(ctx.store, ctx.config.recs, ctx.config.recs_dir)
    await again.start()
    assert all(again.experiments[0][0].assign(p).name == cells[p] for p in profiles)
    await again.stop()

    # outcomes: every profile sees 10 tiles; "personal" plays 3 on average, "trending" 1 (a planted effect)
    rng = random.Random(5)
    now = time.time() + 1
    batch: list[dict[str, Any]] = []
    for p in profiles:
        for i in range(10):
            batch.append(event(p, "impression", "t01", now, len(batch), row="top-picks", position=i, propensity=1.0))
        plays = rng.choice([2, 3, 4]) if cells[p] == "personal" else rng.choice([0, 1, 2])
        for k in range(plays):
            batch.append(event(p, "play_start", f"t0{k}", now + 1, len(batch)))
            batch.append(event(p, "progress", f"t0{k}", now + 2, len(batch), position_s=30.0, duration_s=60.0))
    for start in range(0, len(batch), 500):
        status, body = await control.call("POST", "/v1/events", {"events": batch[start:start + 500]}, token=None)
        assert status == 200, body
    status, rep = await control.call("GET", "/v1/experiments/rows-1/report", token=control.reader)
    assert status == 200, rep
    assert not rep["srm"]["flagged"] and sum(rep["srm"]["observed"].values()) == 200
    play_rate = next(c for c in rep["comparisons"] if c["metric"] == "play_rate")
    assert play_rate["cell"] == "trending" and play_rate["significant"] and play_rate["diff"] < -0.1, play_rate
    assert abs(rep["cells"]["personal"]["play_rate"]["value"] - 0.3) < 0.05

    # an injected 60/40 split (1000 exposures) is flagged
    seen = rep["srm"]["observed"]
    extra = [("rows-1", f"ghost-{cell}-{i}", cell, now) for cell, want in (("personal", 600), ("trending", 400))
             for i in range(want - seen[cell])]
    await ctx.store.record_exposures(extra)
    status, rep = await control.call("GET", "/v1/experiments/rows-1/report")
    assert rep["srm"]["flagged"], rep["srm"]

    # the CLI shows it, then stops it
    res = await _run(control, "experiment", "report", "rows-1")
    assert res.exit_code == 0 and "MISMATCH" in res.output and "play_rate" in res.output
    res = await _run(control, "experiment", "ls")
    assert res.exit_code == 0 and "rows-1" in res.output and "trending:trending" in res.output
    res = await _run(control, "experiment", "create", "cli-1", "--cell", "a=1", "--cell", "b=1,policy=bogus")
    assert res.exit_code == 1 and "policy must be one of" in res.output
    res = await _run(control, "experiment", "stop", "rows-1")
    assert res.exit_code == 0 and res.output.strip() == "rows-1: stopped"
    assert (await control.call("POST", "/v1/experiments/rows-1/stop"))[0] == 409
    assert (await control.call("POST", "/v1/experiments/none/stop"))[0] == 404
    status, doc = await control.call("GET", f"/v1/profiles/{profiles[1]}/home", token=None)
    assert "experiment" not in doc
    assert (await control.call("GET", "/v1/experiments/nope/report"))[0] == 404
