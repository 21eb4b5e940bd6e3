"""``nearcast model eval --policy``: logged artwork choices exported from the event log, judged off-policy."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from control.app import CTX
from control.policy_eval import DEVICES, GENRES
from edge.models import load_model
from nearcast.cli import cli
from shared import bundle
from shared.bandits import ContextEncoder
from shared.signing import parse_public_keys

from .conftest import Harness
from .test_cli_ops import _run
from .test_recs_api import event, publish

#: Chance that a shown tile is played, by artwork variant: candidate_02 is the better still.
TRUE_RATE = {"candidate_01": 0.10, "candidate_02": 0.30}


async def test_policies_are_estimated_from_exported_logs(control: Harness, tmp_path: Path) -> None:
    await publish(control, 4)
    rng = random.Random(3)
    now = time.time()
    batch: list[dict[str, Any]] = []
    for p in range(300):
        profile = f"v{p:03d}"
        batch.append(event(profile, "complete", f"t0{p % 4}", now - 3600, len(batch)))  # gives affinities
        for k in range(4):
            art = rng.choice(sorted(TRUE_RATE))  # the serving policy: uniform over two variants
            imp = f"pg{p}-{k}"
            batch.append(event(profile, "impression", "t01", now - 600 + k, len(batch), row="top-picks", position=k,
                               artwork=art, propensity=0.5, impression_id=imp))
            if rng.random() < TRUE_RATE[art]:
                batch.append(event(profile, "play_start", "t01", now - 590 + k, len(batch), impression_id=imp))
    for start in range(0, len(batch), 500):
        status, body = await control.call("POST", "/v1/events", {"events": batch[start:start + 500]}, token=None)
        assert status == 200 and not body["rejected"], body

    out = tmp_path / "logs"
    res = await _run(control, "events", "export", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert (out / "choices.csv").read_text().count("\n") == 1 + 1200

    def evaluate(policy: str) -> dict[str, Any]:
        res = CliRunner().invoke(cli, ["model", "eval", "--policy", policy, "--logs", str(out), "--json"])
        assert res.exit_code == 0, res.output
        return dict(json.loads(res.output))

    uniform = evaluate("uniform")
    ips = next(e for e in uniform["estimates"] if e["estimator"] == "ips")
    assert abs(ips["value"] - uniform["logged_value"]) < 1e-9  # uniform target = uniform logging
    first = evaluate("first")  # always candidate_01, whose true value is 0.10
    for e in first["estimates"]:
        assert e["low"] - 0.03 <= TRUE_RATE["candidate_01"] <= e["high"] + 0.03, e
    learned = evaluate("linucb")  # fitted on the first half: it should prefer candidate_02
    dr = next(e for e in learned["estimates"] if e["estimator"] == "dr")
    assert learned["events"] == 600 and dr["value"] > first["estimates"][0]["value"]

    table = CliRunner().invoke(cli, ["model", "eval", "--policy", "uniform", "--logs", str(out)])
    assert table.exit_code == 0 and "snips" in table.output and "95% low" in table.output
    for bad_args, reason in [(["--policy", "uniform"], "--policy needs --logs"),
                             (["--policy", "uniform", "--logs", str(tmp_path)], "choices.csv not found"),
                             ([], "give --data")]:
        res = CliRunner().invoke(cli, ["model", "eval", *bad_args])
        assert res.exit_code != 0 and reason in res.output, (bad_args, res.output)
    (out / "plays.csv").write_text("who,what\n1,2\n")
    res = CliRunner().invoke(cli, ["model", "eval", "--policy", "uniform", "--logs", str(out)])
    assert res.exit_code == 1 and "header must be" in res.output


async def test_the_edge_model_ships_the_artwork_bandit_fitted_on_the_logs(control: Harness, tmp_path: Path) -> None:
    await publish(control, 2)
    rng = random.Random(4)
    now = time.time()
    batch: list[dict[str, Any]] = []
    for k in range(400):
        art = rng.choice(sorted(TRUE_RATE))
        imp = f"pg{k}"
        batch.append(event(f"v{k % 50}", "impression", "t01", now - 600, len(batch), row="top-picks", position=0,
                           artwork=art, propensity=0.5, impression_id=imp))
        if rng.random() < TRUE_RATE[art] * 2:
            batch.append(event(f"v{k % 50}", "play_start", "t01", now - 590, len(batch), impression_id=imp))
    for start in range(0, len(batch), 500):
        status, body = await control.call("POST", "/v1/events", {"events": batch[start:start + 500]}, token=None)
        assert status == 200 and not body["rejected"], body
    status, built = await control.call("POST", "/v1/models", {"version": "with-bandit", "pages": 100})
    assert status == 201, built
    assert "artwork bandit fitted on 400 logged choices" in built["metadata"]["notes"]

    ctx = control.app[CTX]
    keys = parse_public_keys({ctx.signer.key_id: ctx.signer.public_key_b64()})
    assert ctx.bundles is not None
    opened = bundle.open_bundle(ctx.bundles.path("with-bandit"), ctx.bundles.get("with-bandit").descriptor, keys,
                                tmp_path / "edge" / "with-bandit")
    model = load_model(opened.path, "with-bandit")  # the edge's own loader
    assert model.bandit is not None and model.bandit.arms == sorted(TRUE_RATE)
    x = ContextEncoder(list(GENRES), list(DEVICES)).encode({}, "web", 20.0)
    probs = model.bandit.probabilities(x, sorted(TRUE_RATE))
    assert probs[1] > probs[0]  # it learned that candidate_02 gets played more
