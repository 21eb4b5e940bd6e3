"""``catalog``, ``events`` and ``recs`` commands against a real control API."""

from __future__ import annotations

import json
import time
from pathlib import Path

from control.recs.cli import load_data_dir

from .conftest import Harness, make_origin_title
from .test_cli_ops import _run


async def test_catalog_events_and_rows_from_the_command_line(control: Harness, tmp_path: Path) -> None:
    async def ok(*args: str) -> str:
        res = await _run(control, *args)
        assert res.exit_code == 0, f"{args}: {res.output}"
        return res.output

    for i, genre in enumerate(("drama", "comedy", "drama")):
        make_origin_title(control.state, f"t{i}", genres=(genre,))
        await ok("title", "register", f"t{i}")
    cat = tmp_path / "catalog.csv"
    cat.write_text('item,title,genres,tags,cast,year,description\nt0,Rain,Drama|Noir,wet|city,A. B.|C. D.,1999,"Rain, '
                   'mostly."\nt1,Laughs,Comedy,,,2001,\n')
    assert (await ok("catalog", "load", str(cat))).strip() == "2 title(s) sent, 2 changed"
    shown = json.loads(await ok("catalog", "show", "t0", "--json"))
    assert shown["cast"] == ["A. B.", "C. D."] and shown["year"] == 1999 and shown["description"] == "Rain, mostly."
    assert "Laughs" in await ok("catalog", "ls")
    bad = tmp_path / "bad.csv"
    bad.write_text("item,title,genres,year\nt0,X,Drama,nineteen\n")
    res = await _run(control, "catalog", "load", str(bad))
    assert res.exit_code == 1 and "bad.csv:2" in res.output and res.output.count("\n") == 1

    now = time.time()
    lines = [{"event_id": "e1", "type": "complete", "profile_id": "p1", "title_id": "t0", "ts": now - 60},
             {"event_id": "e2", "type": "progress", "profile_id": "p1", "title_id": "t1", "ts": now - 30,
              "position_s": 40, "duration_s": 100},
             {"event_id": "e3", "type": "thumbs", "profile_id": "p1", "title_id": "t1", "ts": now, "value": "?"}]
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(d) for d in lines) + "\n")
    out = await ok("events", "post", str(events))
    assert out.startswith("2 accepted, 0 already known, 1 rejected") and "line 3: value must be" in out
    assert (await ok("events", "post", str(events), "--json")).count('"duplicates": 2') == 1
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("{nope\n")
    res = await _run(control, "events", "post", str(garbage))
    assert res.exit_code == 1 and "JSON lines" in res.output

    rows = await ok("recs", "home", "p1")
    assert rows.splitlines()[0].startswith("Continue Watching") and "t1" in rows.splitlines()[0]
    assert "Because you watched Rain" in rows and "t2" in rows  # the other drama
    assert "model:  none" in await ok("recs", "status")

    export = tmp_path / "export"
    assert "wrote 2 interaction(s)" in await ok("events", "export", "--out", str(export))
    interactions, catalog = load_data_dir(export)
    assert len(interactions) == 2 and catalog.titles["t0"].year == 1999
    res = await _run(control, "recs", "train", "--json")
    assert res.exit_code == 1 and "too little data to train" in res.output
