"""``bench/soak.py``: the verdict maths on recorded series, the sampler on real processes, and one short
run over the real demo topology (daemons only, no sample titles: homepages and events).

The real soak (10 minutes, titles played) is a documented command: ``bench/README.md``.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.bench.conftest import load_bench


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    return load_bench("soak")


def _series(soak: ModuleType, rss: list[float], fds: list[int], *, step: float = 10.0) -> list[Any]:
    return [soak.Sample(i * step, {"edge-a": soak.ProcSample(pid=1, rss_bytes=int(r), fds=f, threads=4, tasks=12)})
            for i, (r, f) in enumerate(zip(rss, fds, strict=True))]


def test_quarter_medians_pass_a_flat_run_and_fail_a_growing_one(soak: ModuleType) -> None:
    mb = 2**20
    # 60 samples, 10 s apart: noisy but flat around 100 MB / 30 fds -> PASS
    flat = _series(soak, [100 * mb + (i % 5) * mb for i in range(60)], [30 + (i % 3) for i in range(60)])
    entry = soak.summarize(flat, 60.0, 10.0)["edge-a"]
    assert entry["verdict"] == "PASS"
    rss = entry["figures"]["rss_bytes"]
    assert rss["n"] == 54 // 4  # measured window: t >= 60 s, i.e. samples 6..59
    assert abs(rss["change_pct"]) < 5
    assert entry["figures"]["tasks"]["change_pct"] == 0 and "pass" not in entry["figures"]["tasks"]
    # RSS climbing 0.5 % per sample (a leak): the last quarter is far above the first -> FAIL, slope > 0
    leak = _series(soak, [100 * mb * (1 + 0.005 * i) for i in range(60)], [30] * 60)
    entry = soak.summarize(leak, 60.0, 10.0)["edge-a"]
    assert entry["verdict"] == "FAIL"
    assert not entry["figures"]["rss_bytes"]["pass"] and entry["figures"]["fds"]["pass"]
    assert entry["figures"]["rss_bytes"]["change_pct"] > 10
    assert entry["figures"]["rss_bytes"]["slope_per_hour"] == pytest.approx(100 * mb * 0.005 * 360, rel=1e-6)
    # fds halving is not flat either
    entry = soak.summarize(_series(soak, [100 * mb] * 20, [40] * 10 + [20] * 10), 0.0, 10.0)["edge-a"]
    assert entry["verdict"] == "FAIL" and entry["figures"]["fds"]["change_pct"] == -50


def test_warm_up_is_left_out_and_short_or_vanished_processes_get_no_pass(soak: ModuleType) -> None:
    mb = 2**20
    # a jump during the first minute (caches filling), flat after: PASS with the warm-up excluded,
    # FAIL without
    rss = [60 * mb] * 6 + [100 * mb] * 34
    samples = _series(soak, rss, [30] * 40)
    assert soak.summarize(samples, 60.0, 10.0)["edge-a"]["verdict"] == "PASS"
    assert soak.summarize(samples, 0.0, 10.0)["edge-a"]["verdict"] == "FAIL"
    assert soak.effective_warmup(60.0, 600.0) == 60.0 and soak.effective_warmup(60.0, 60.0) == 15.0
    # under 4 measured samples: no verdict
    assert soak.summarize(_series(soak, [mb] * 3, [3] * 3), 0.0, 10.0)["edge-a"]["verdict"] == "n/a"
    # present at the start, missing at the end: gone (report() counts it as a death)
    gone = _series(soak, [mb] * 8, [3] * 8)
    gone[-1].procs.clear()
    assert soak.summarize(gone, 0.0, 10.0)["edge-a"]["verdict"] == "gone"
    assert soak.quarter_change([0, 0, 0, 0]).change_pct == 0.0
    assert soak.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0 and soak.percentile([1.0, 2.0, 3.0, 4.0], 99) == 4.0


LEAKER = textwrap.dedent("""
    import subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child.stdout.readline()  # started: from here on it holds still
    held = []
    for line in sys.stdin:
        held += [open("/dev/null") for _ in range(int(line))]
        print("ok", flush=True)
    child.stdin.close()
    child.wait()
""")


def test_sampler_reads_a_real_process_tree_and_flags_a_real_fd_leak(soak: ModuleType) -> None:
    """A parent that opens 5 more files between samples (on command, so no timing), and its child that
    holds still: the parent FAILs on fds, the child PASSes."""
    proc = subprocess.Popen([sys.executable, "-c", LEAKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        cache: dict[int, Any] = {}
        samples = []
        for k in range(8):
            proc.stdin.write("5\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "ok"
            tree = soak.read_tree(proc.pid, "", cache)
            samples.append(soak.Sample(float(k), {p.name: s for p, s in tree}))
        names = set(samples[-1].procs)
        assert "demo+broker" in names  # the root of the tree is named as the demo
        children = names - {"demo+broker"}
        assert len(children) == 1 and next(iter(children)).startswith("python")
        root = [s.procs["demo+broker"] for s in samples]
        assert [r.fds - root[0].fds for r in root] == [5 * k for k in range(8)]
        assert all(r.rss_bytes > 0 and r.threads >= 1 and r.tasks is None for r in root)
        summary = soak.summarize(samples, 0.0, 10.0)
        assert summary["demo+broker"]["verdict"] == "FAIL"
        assert not summary["demo+broker"]["figures"]["fds"]["pass"]
        assert summary[next(iter(children))]["verdict"] == "PASS"
    finally:
        proc.stdin.close()
        proc.wait(10)
        proc.stdout.close()


def test_short_soak_over_the_demo_samples_every_process_and_both_daemons_metrics(
        soak: ModuleType, tmp_path: Path) -> None:
    """``nearcast demo --no-titles`` (broker, control, two edges), four viewers loading homepages and
    posting events for ~9 s, sampled every 1.5 s."""
    out = io.StringIO()
    opts = soak.Options(minutes=0.15, interval_s=1.5, warmup_s=0.0, clients=4, titles=False)
    result = soak.soak(tmp_path / "state", opts, out)
    assert result["demo_exit"] == 0, result["demo_output"]
    assert not result["died"]
    samples = result["samples"]
    assert [s["phase"] for s in samples] == ["idle-before"] + ["load"] * (len(samples) - 2) + ["idle-after"]
    assert len(samples) >= 6
    for s in samples:
        assert {"demo+broker", "control", "edge-a", "edge-b"} <= set(s["procs"])
        for name, p in s["procs"].items():
            assert p["rss_bytes"] > 0 and p["fds"] > 0 and p["threads"] >= 1, (name, p)
        for name in ("control", "edge-a", "edge-b"):
            p = s["procs"][name]
            assert p["tasks"] is not None and p["tasks"] > 0, (name, p)
            assert p["metric_fds"] is not None and p["metric_rss_bytes"] is not None, (name, p)
            if s["phase"] != "load":
                # idle: the daemon's own /metrics, scraped just after the /proc read, agrees with it (its
                # fd count includes the scrape's connection)
                assert 0 <= p["metric_fds"] - p["fds"] <= 2, (name, p)
                assert abs(p["metric_rss_bytes"] - p["rss_bytes"]) <= 0.1 * p["rss_bytes"], (name, p)
    assert set(result["idle"]) == {"demo+broker", "control", "edge-a", "edge-b"}
    clients = result["clients"]
    assert clients["errors"] == 0, clients["recent_errors"]
    for kind in ("edges", "home", "events"):
        assert clients["kinds"][kind]["requests"] > 0, kind
    assert set(result["processes"]) >= {"demo+broker", "control", "edge-a", "edge-b"}
    assert all(e["verdict"] in ("PASS", "FAIL") for e in result["processes"].values())
    text = io.StringIO()
    soak.report(result, text)
    assert "measured window" in text.getvalue() and "edge-b" in text.getvalue()
    assert "rss_MB" in out.getvalue()
