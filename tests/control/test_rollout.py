"""Wave rollout state machine: scripted fleets in, desired versions and events out (no sockets, no sleeps)."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.rollout import Deployment, Gates, HealthSample, RolloutError, wave_size
from shared.errors import Conflict, InvalidInput


@dataclass
class Fleet:
    """Simulated appliances: online ones adopt their desired version each step and report health."""

    ids: list[str]
    running: dict[str, str | None] = field(default_factory=dict)
    offline: set[str] = field(default_factory=set)
    broken: set[str] = field(default_factory=set)  # refuse to load the new version
    error_rate: dict[str | None, float] = field(default_factory=dict)
    p99: dict[str | None, float] = field(default_factory=dict)
    max_on_new: int = 0

    def step(self, dep: Deployment, now: float, requests: int = 100) -> list[str]:
        kinds: list[str] = []
        desired = dep.desired()
        for a in self.ids:
            if a in self.offline:
                continue
            want = desired.get(a, self.running.get(a))
            if want != self.running.get(a):
                if want == dep.version and a in self.broken:
                    kinds += [e.kind for e in dep.ack(a, self.running.get(a), now, failure="sha256 mismatch")]
                    continue
                self.running[a] = want
            kinds += [e.kind for e in dep.ack(a, self.running.get(a), now)]
        for a in self.ids:
            if a in self.offline:
                continue
            v = self.running.get(a)
            errors = round(requests * self.error_rate.get(v, 0.0))
            kinds += [e.kind for e in dep.observe(HealthSample(a, v, now, requests, errors, 0, self.p99.get(v, 5.0)))]
        kinds += [e.kind for e in dep.tick(now)]
        on_new = sum(1 for a in self.ids if self.running.get(a) == dep.version and a not in self.offline)
        self.max_on_new = max(self.max_on_new, on_new)
        return kinds


def fleet(n: int) -> Fleet:
    ids = [f"app-{i:02d}" for i in range(n)]
    return Fleet(ids, dict.fromkeys(ids, "v1"))


def run(dep: Deployment, f: Fleet, until: float = 2000.0, dt: float = 10.0) -> list[str]:
    kinds: list[str] = []
    t = 0.0
    while t < until and dep.phase == "baking":
        t += dt
        kinds += f.step(dep, t)
    return kinds


GATES = Gates(min_requests=100)


def test_healthy_deploy_goes_wave_by_wave_to_everyone() -> None:
    f = fleet(20)
    dep = Deployment("d1", "v2", "v1", f.ids, waves=[5, 25, 100], bake_s=60, gates=GATES)
    assert sum(v == "v2" for v in dep.desired().values()) == 1
    kinds = run(dep, f)
    assert dep.phase == "completed"
    assert [k for k in kinds if k != "acked"] == ["baked", "started", "baked", "started", "baked", "completed"]
    assert [len(w.members) for w in dep.started] == [1, 5, 20]
    assert set(dep.desired().values()) == {"v2"} and dep.converged()
    bakes = [e.at for e in dep.history if e.kind in ("started", "baked")]
    assert all(b - a >= 60 for a, b in zip(bakes[::2], bakes[1::2], strict=True)), "every wave bakes its full time"


def test_error_breach_rolls_the_canary_back_and_never_spreads() -> None:
    f = fleet(20)
    f.error_rate["v2"] = 0.05
    dep = Deployment("d2", "v2", "v1", f.ids, bake_s=60, gates=GATES)
    run(dep, f)
    assert dep.phase == "rolled_back" and "error rate" in dep.reason
    assert f.max_on_new == 1
    assert set(dep.desired().values()) == {"v1"}
    f.step(dep, 3000)
    assert dep.converged() and set(f.running.values()) == {"v1"}
    assert [e.kind for e in dep.history][-2:] == ["breached", "rolled_back"]


def test_breach_in_a_later_wave_rolls_back_every_appliance() -> None:
    f = fleet(20)
    dep = Deployment("d3", "v2", "v1", f.ids, bake_s=60, gates=GATES)
    t = 0.0
    while dep.current.index < 1:
        t += 10
        f.step(dep, t)
    f.p99["v2"] = 50.0  # the second wave's model is slow (10x the baseline)
    while dep.phase == "baking":
        t += 10
        f.step(dep, t)
    assert dep.phase == "rolled_back" and "p99" in dep.reason
    assert f.max_on_new <= 5
    f.step(dep, t + 10)
    assert all(v == "v1" for v in f.running.values())


def test_nan_scores_count_as_errors_and_breach_early() -> None:
    """A model scoring NaN makes every re-rank fall back to errors: breached before the bake ends."""
    f = fleet(10)
    f.error_rate["v2"] = 1.0
    dep = Deployment("d4", "v2", "v1", f.ids, bake_s=600, gates=GATES)
    run(dep, f)
    breach = next(e for e in dep.history if e.kind == "breached")
    assert breach.at < 600


def test_load_failure_on_a_member_rolls_back_at_once() -> None:
    f = fleet(20)
    dep = Deployment("d5", "v2", "v1", f.ids, bake_s=60, gates=GATES)
    f.broken = set(dep.current.members)
    run(dep, f)
    assert dep.phase == "rolled_back" and "sha256 mismatch" in dep.reason
    assert dep.history[-1].at == 10
    assert next(s for s in dep.status() if s.appliance_id in f.broken).failure == "sha256 mismatch"


def test_offline_appliance_converges_when_it_returns() -> None:
    f = fleet(20)
    dep = Deployment("d6", "v2", "v1", f.ids, bake_s=60, gates=GATES)
    late = next(a for a in f.ids if a not in dep.current.members)
    f.offline.add(late)
    dep.set_online(late, False)
    run(dep, f)
    assert dep.phase == "completed" and f.running[late] == "v1"
    assert dep.converged(), "offline appliances do not block convergence"
    f.offline.discard(late)
    f.step(dep, 5000)  # it reads its retained desired state
    assert f.running[late] == "v2" and dep.converged()
    row = next(s for s in dep.status() if s.appliance_id == late)
    assert (row.desired, row.reported, row.online) == ("v2", "v2", True)


def test_known_offline_appliances_are_not_picked_as_canaries() -> None:
    f = fleet(20)
    first = Deployment("d15", "v2", "v1", f.ids).current.members
    dep = Deployment("d15", "v2", "v1", f.ids, bake_s=60, gates=GATES, offline=first)
    assert dep.current.members.isdisjoint(first) and len(dep.current.members) == 1
    f.offline = set(first)
    run(dep, f)
    assert dep.phase == "completed"


def test_silent_online_member_times_out() -> None:
    f = fleet(10)
    dep = Deployment("d7", "v2", "v1", f.ids, bake_s=60, gates=Gates(min_requests=100, ack_timeout_s=120))
    f.offline = set(dep.current.members)  # they drop off without the control plane noticing
    run(dep, f)
    assert dep.phase == "rolled_back" and "did not report v2" in dep.reason
    assert dep.history[-1].at == 130


def test_wave_without_traffic_waits_then_gives_up() -> None:
    f = fleet(4)
    dep = Deployment("d8", "v2", "v1", f.ids, bake_s=60, gates=Gates(min_requests=10_000, max_wait_s=600))
    run(dep, f, until=5000)
    assert dep.phase == "rolled_back" and "only" in dep.reason
    assert 600 < dep.history[-1].at <= 620


def test_last_wave_uses_the_baseline_from_earlier_waves() -> None:
    f = fleet(20)
    dep = Deployment("d9", "v2", "v1", f.ids, bake_s=60, gates=GATES)
    t = 0.0
    while dep.current.index < 2:
        t += 10
        f.step(dep, t)
    f.p99["v2"] = 40.0
    while dep.phase == "baking":
        t += 10
        f.step(dep, t)
    assert dep.phase == "rolled_back" and "baseline 5.0 ms" in dep.reason


def test_operator_rollback_after_completion_and_first_deploy_without_previous() -> None:
    f = fleet(5)
    dep = Deployment("d10", "v2", "v1", f.ids, bake_s=0, gates=GATES)
    run(dep, f)
    assert dep.phase == "completed"
    events = dep.rollback(9999)
    assert [e.kind for e in events] == ["rolled_back"] and set(dep.desired().values()) == {"v1"}
    assert dep.rollback(10000) == []
    first = Deployment("d11", "v1", None, f.ids)
    first.rollback(1)
    assert set(first.desired().values()) == {None}


def test_appliance_joining_mid_deploy_stays_put_until_counted() -> None:
    f = fleet(20)
    dep = Deployment("d12", "v2", "v1", f.ids, bake_s=60, gates=GATES)
    members = dep.current.members
    dep.set_appliances([*f.ids, "app-new"])
    assert dep.current.members == members and dep.desired()["app-new"] == "v1"
    f.ids.append("app-new")
    f.running["app-new"] = "v1"
    run(dep, f)
    assert dep.phase == "completed" and f.running["app-new"] == "v2"


def test_membership_is_deterministic_and_differs_by_deployment() -> None:
    ids = [f"app-{i}" for i in range(200)]
    a = Deployment("dep-a", "v2", "v1", ids).current.members
    assert Deployment("dep-a", "v2", "v1", list(reversed(ids))).current.members == a
    others = {Deployment(f"dep-{k}", "v2", "v1", ids).current.members for k in range(5)}
    assert len(others) > 1


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"waves": [50, 25, 100]}, RolloutError),
    ({"waves": [5, 25]}, RolloutError),
    ({"waves": []}, RolloutError),
    ({"waves": [0, 100]}, RolloutError),
    ({"waves": [float("nan"), 100]}, RolloutError),
    ({"bake_s": -1}, RolloutError),
    ({"bake_s": math.inf}, RolloutError),
    ({"appliances": ["a", "a"]}, RolloutError),
    ({"appliances": []}, RolloutError),
    ({"appliances": ["a/+/#"]}, InvalidInput),
    ({"version": "v1"}, Conflict),
    ({"version": "../v2"}, InvalidInput),
    ({"gates": None, "waves": [100], "deployment_id": "x" * 100}, InvalidInput),
])
def test_bad_declarations_are_refused(kwargs: dict[str, object], error: type[Exception]) -> None:
    args: dict[str, object] = {"deployment_id": "d", "version": "v2", "previous": "v1", "appliances": ["a", "b"]}
    args.update(kwargs)
    with pytest.raises(error):
        Deployment(**args)  # type: ignore[arg-type]


def test_bad_gates_and_samples_are_refused() -> None:
    with pytest.raises(RolloutError):
        Gates(max_p99_ratio=0.5)
    with pytest.raises(RolloutError):
        Gates(max_error_increase=float("nan"))
    with pytest.raises(RolloutError):
        Gates(min_requests=0)
    with pytest.raises(RolloutError):
        HealthSample("a", "v2", 0, requests=5, errors=6)
    with pytest.raises(RolloutError):
        HealthSample("a", "v2", 0, requests=5, p99_ms=float("nan"))
    with pytest.raises(RolloutError):
        HealthSample("a", "v2", 0, requests=-1)


def test_wave_size_rounds_down_but_keeps_a_canary() -> None:
    assert [wave_size(5, n) for n in (1, 10, 20, 30, 100)] == [1, 1, 1, 1, 5]
    assert wave_size(100, 7) == 7 and wave_size(50, 0) == 0


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40),
       cuts=st.lists(st.floats(1, 99), max_size=3, unique=True),
       bad_wave=st.one_of(st.none(), st.integers(0, 3)),
       offline=st.sets(st.integers(0, 39), max_size=5),
       dep_id=st.text("abcdef0123", min_size=1, max_size=6))
def test_invariants_hold_for_any_fleet(n: int, cuts: list[float], bad_wave: int | None, offline: set[int],
                                       dep_id: str) -> None:
    waves = [*sorted(cuts), 100.0]
    f = fleet(n)
    f.offline = {f.ids[i] for i in offline if i < n}
    dep = Deployment(dep_id, "v2", "v1", f.ids, waves=waves, bake_s=30,
                     gates=Gates(min_requests=50, ack_timeout_s=60, max_wait_s=400), offline=f.offline)
    t = 0.0
    while dep.phase == "baking" and t < 5000:
        if bad_wave is not None and dep.current.index == bad_wave:
            f.error_rate["v2"] = 0.5
        t += 10
        f.step(dep, t)
        on_new = sum(v == "v2" for v in dep.desired().values())
        if dep.phase == "baking":
            share = dep.waves[dep.current.index]
            assert on_new <= wave_size(share, n), "more appliances on the new version than the wave allows"
    # Waves are monotone supersets.
    for w1, w2 in zip(dep.started, dep.started[1:], strict=False):
        assert w1.members <= w2.members
    assert f.max_on_new <= (wave_size(dep.waves[bad_wave], n) if bad_wave is not None and bad_wave < len(waves)
                            and dep.phase == "rolled_back" else n)
    if dep.phase == "rolled_back":
        assert set(dep.desired().values()) == {"v1"}
        f.step(dep, t + 10)
        assert all(f.running[a] == "v1" for a in f.ids if a not in f.offline)
    else:
        assert dep.phase == "completed"
        if bad_wave is None or bad_wave >= len(waves):
            assert set(dep.desired().values()) == {"v2"}
    # Returning appliances converge to whatever the outcome is.
    f.offline.clear()
    f.step(dep, t + 20)
    assert dep.converged()


def test_snapshot_restores_mid_deployment_and_continues_identically() -> None:
    f = fleet(20)
    dep = Deployment("d13", "v2", "v1", f.ids, bake_s=60, gates=GATES)
    t = 0.0
    while dep.current.index < 1:
        t += 10
        f.step(dep, t)
    snap = json.loads(json.dumps(dep.snapshot()))  # through real JSON, as the store keeps it
    restored = Deployment.restore(snap)
    assert restored.desired() == dep.desired() and restored.history == dep.history
    f2 = copy.deepcopy(f)
    while dep.phase == "baking":
        t += 10
        f.step(dep, t)
        f2.step(restored, t)
    assert restored.phase == dep.phase == "completed"
    assert restored.history == dep.history and restored.status() == dep.status()


def test_malformed_snapshots_are_refused() -> None:
    dep = Deployment("d14", "v2", "v1", [f"a{i}" for i in range(10)], gates=GATES)
    good = dep.snapshot()
    started = good["started"]
    assert isinstance(started, list)
    bad_cases: list[object] = [
        None, [], {**good, "format": 2}, {**good, "started": []}, {**good, "phase": "exploded"},
        {**good, "waves": [50, 10, 100]}, {**good, "fleet": ["../x"]}, {**good, "extra": 1},
        {**good, "gates": {**good["gates"], "max_p99_ratio": 0.1}},  # type: ignore[dict-item]
        {**good, "started": [{**started[0], "index": 3}]},
        {**good, "started": [{**started[0], "percent": 50.0}]},
    ]
    for bad in bad_cases:
        with pytest.raises(InvalidInput):
            Deployment.restore(bad)
