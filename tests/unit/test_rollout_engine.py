"""The rollout engine over a fake HostOps: every failure path of the batch loop and the per-host state
machine, in memory (no SSH, no Docker, no waiting). The same paths run for real, slowly, in
tests/integration/test_rollout.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fleet.commands import release as rc
from fleet.errors import FleetError
from fleet.release import hoststeps as ht
from fleet.rollout import InPlace, Plan, Release, Report, make_plan, new_rollout_id, staged_targets
from fleet.rollout.journal import Journal, read
from fleet.rollout.pacing import Timings
from fleet.ssh.runner import HostResult

NOBEAT = ("worker_beat",)
OLD = Release("a" * 16, "1.0.0", NOBEAT)
NEW = Release("b" * 16, "1.1.0", NOBEAT)
BAD = Release("c" * 16, "1.2.0-broken", NOBEAT)
OLDER = Release("d" * 16, "0.9.0", NOBEAT)
KNOWN = {r.id: r for r in (OLD, NEW, BAD, OLDER)}
FAST = Timings(drain_wait=0.0, min_ready=0.0, health_timeout=0.3)


class Gone(OSError):
    """The connection to a host broke."""


@dataclass
class Sim:
    """One fake host: the `current` link, what runs (`running`), the drain flag, staged releases."""

    current: str | None
    previous: str | None = None
    drained: bool = False
    running: str | None = None
    staged: set[str] = field(default_factory=set)
    beat: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    reachable: bool = True

    def __post_init__(self) -> None:
        if self.running is None:
            self.running = self.current
        self.staged |= {r for r in (self.current, self.previous) if r}


@dataclass(frozen=True)
class FakeHost:
    name: str


@dataclass(frozen=True)
class FakeBundle:
    release_id: str


class FakeOps:
    """HostOps in memory. `fail[(host, op)]` raises once; `hooks[(host, op)]` runs before the op."""

    def __init__(self, sims: Mapping[str, Sim], broken: Sequence[str] = (BAD.id,)) -> None:
        self.sims = dict(sims)
        self.broken = set(broken)
        self.calls: list[tuple[str, str]] = []
        self.fail: dict[tuple[str, str], BaseException] = {}
        self.hooks: dict[tuple[str, str], Callable[[], None]] = {}
        self.beat_max = sum(s.beat for s in self.sims.values())

    def _op(self, name: str, op: str) -> Sim:
        self.calls.append((name, op))
        if (hook := self.hooks.get((name, op))) is not None:
            hook()
        if (exc := self.fail.pop((name, op), None)) is not None:
            raise exc
        sim = self.sims[name]
        if not sim.reachable:
            raise Gone(f"{name}: connection refused")
        return sim

    def did(self, op: str) -> list[str]:
        return [h for h, o in self.calls if o == op]

    # ------------------------------------------------------------------ fan-out
    def names(self) -> list[str]:
        return list(self.sims)

    def host(self, name: str) -> Any:
        return FakeHost(name)

    def each(self, names: Sequence[str], fn: Callable[[str], HostResult]) -> list[HostResult]:
        out = []
        for name in names:
            try:
                out.append(fn(name))
            except Gone as exc:
                out.append(HostResult(name, "unreachable", error=str(exc)))
            except FleetError as exc:
                out.append(HostResult(name, "failed", error=exc.render()))
        return out

    def unreachable(self, exc: BaseException) -> bool:
        return isinstance(exc, Gone)

    # ------------------------------------------------------------------ one host
    def layout(self, name: str) -> rc.Layout:
        return rc.Layout(rc.DEFAULT_ROOT, rc.DEFAULT_PROJECT)

    def read_state(self, name: str) -> rc.HostState:
        sim = self._op(name, "read_state")
        rel = KNOWN.get(sim.current or "")
        record = {"version": rel.version, "disabled_services": list(rel.disabled)} if rel else None
        last = sim.history[-1] if sim.history else None
        return rc.HostState(True, sim.current, sim.previous, sim.drained, record, last)

    def stage(self, name: str, bundle: Any) -> None:
        self._op(name, "stage").staged.add(bundle.release_id)

    def release_present(self, name: str, rid: str) -> bool:
        return rid in self._op(name, "release_present").staged

    def compose_check(self, name: str, rid: str) -> None:
        self._op(name, "compose_check")

    def pull(self, name: str, rid: str) -> None:
        self._op(name, "pull")

    def switch_when_idle(self, name: str, rid: str) -> None:
        self.switch(name, rid)

    def switch(self, name: str, rid: str) -> None:
        sim = self._op(name, "switch")
        if sim.current != rid:
            sim.previous, sim.current = sim.current, rid

    def up(self, name: str, rid: str, disabled: Sequence[str], timeout: float) -> None:
        sim = self._op(name, "up")
        sim.running = rid
        sim.beat = "worker_beat" not in disabled
        self.beat_max = max(self.beat_max, sum(s.beat for s in self.sims.values()))

    def drain(self, name: str) -> None:
        self._op(name, "drain").drained = True

    def undrain(self, name: str) -> None:
        self._op(name, "undrain").drained = False

    def config_hashes(self, name: str, rid: str) -> dict[str, str]:
        self._op(name, "config_hashes")
        return {"api": rid}

    def _health(self, sim: Sim) -> tuple[int, str | None]:
        if sim.running in self.broken:
            return 502, None
        if sim.drained:
            return 503, None
        rel = KNOWN.get(sim.running or "")
        return 200, rel.version if rel else None

    def check(
        self,
        name: str,
        version: str,
        rid: str,
        *,
        expect_drained: bool = False,
        hashes: Mapping[str, str] | None = None,
    ) -> ht.Verdict:
        sim = self._op(name, "check")
        health = "unhealthy" if sim.running in self.broken else "healthy"
        services = [rc.ServiceState("api", "api-1", "running", health, "api", sim.running, 0, sim.running)]
        code, seen = self._health(sim)
        problems = [] if sim.running == rid else [f"runs {sim.running}"]
        if health != "healthy":
            problems.append("api: unhealthy")
        if expect_drained and code != 503:
            problems.append(f"/health answered {code}")
        if not expect_drained and (code, seen) != (200, version):
            problems.append(f"/health answered {code} {seen}")
        return ht.Verdict(not problems, problems, code, seen, services)

    def probe(self, name: str) -> tuple[int, str | None]:
        return self._health(self._op(name, "probe"))

    def undrain_and_probe(self, name: str) -> tuple[int, str | None]:
        self.undrain(name)
        return self.probe(name)

    def record(self, name: str, entry: Mapping[str, Any]) -> None:
        self._op(name, "record").history.append(dict(entry))

    def releases(self, name: str) -> list[rc.ReleaseDir]:
        sim = self._op(name, "releases")
        rels = sorted(sim.staged, key=lambda r: KNOWN[r].version, reverse=True)
        return [rc.ReleaseDir(r, 0, KNOWN[r].version) for r in rels]

    def release_record(self, name: str, rid: str) -> str:
        self._op(name, "release_record")
        rel = KNOWN[rid]
        return json.dumps({"version": rel.version, "disabled_services": list(rel.disabled)})

    def set_previous(self, name: str, rid: str | None) -> None:
        self._op(name, "set_previous").previous = rid

    def beat_running(self, name: str) -> bool:
        return self._op(name, "beat_running").beat

    def beat_stop(self, name: str) -> None:
        self._op(name, "beat_stop").beat = False

    def beat_start(self, name: str, rid: str) -> None:
        self._op(name, "beat_start").beat = True


class FakeLB:
    """No load balancer to ask (as with `lb: none`): the engine probes /health itself."""

    def wait_out(self, host: Any, timeout: float) -> None: ...
    def wait_in(self, host: Any, timeout: float) -> None: ...
    def look(self, host: Any) -> None:
        return None


class FakeMarks:
    def __init__(self) -> None:
        self.labels: dict[str, str | None] = {}
        self.lock = threading.Lock()

    def set(self, host: Any, rollout_id: str | None) -> bool:
        with self.lock:
            self.labels[host.name] = rollout_id
        return True


# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal fsyncs every event: durable, but slow on a busy disk, and not what is tested here."""
    monkeypatch.setattr("fleet.rollout.journal.os.fsync", lambda fd: None)


def fleet(n: int = 3, **sim: Any) -> dict[str, Sim]:
    return {f"h{i}": Sim(current=OLD.id, previous=OLDER.id, **sim) for i in range(1, n + 1)}


def plan_for(
    sims: Mapping[str, Sim],
    targets: Mapping[str, Release] | Release = NEW,
    *,
    action: str = "rollout",
    canary: int = 1,
    batch: str = "1",
    max_failures: str = "0",
    on_failure: str = "rollback",
    beat_host: str | None = None,
) -> Plan:
    per_host = targets if isinstance(targets, Mapping) else {h: targets for h in sims}
    return make_plan(
        rollout_id=new_rollout_id(action),
        action=action,
        inventory="test",
        label="x",
        order=list(sims),
        sources={h: KNOWN.get(s.current or "") for h, s in sims.items()},
        targets=per_host,
        drained={h: s.drained for h, s in sims.items()},
        previous={h: s.previous for h, s in sims.items()},
        canary=canary,
        batch=batch,
        max_failures=max_failures,
        on_failure=on_failure,
        timings=FAST,
        operator="tester",
        beat_host=beat_host,
    )


@dataclass
class Ran:
    report: Report
    ops: FakeOps
    marks: FakeMarks
    events: list[dict[str, Any]]

    def result(self, host: str) -> str:
        return next(h.result for h in self.report.hosts if h.host == host)

    def outcome(self, host: str) -> Any:
        return next(h for h in self.report.hosts if h.host == host)


def run(
    tmp_path: Path,
    ops: FakeOps,
    plan: Plan,
    *,
    stop: threading.Event | None = None,
    touched: Sequence[str] = (),
    resumed: bool = False,
    upload: bool = True,
    **kw: Any,
) -> Ran:
    """Run `plan` on `ops`; `upload`: with the rendered bundles (`fab rollout --version`), else with
    what is staged on the hosts (`--release`, `fab rollback`)."""
    bundles = {h: FakeBundle(j.target.id) for h, j in plan.jobs.items()} if upload else None
    journal = Journal.create(tmp_path, plan.rollout_id)
    marks = FakeMarks()
    engine = InPlace(
        ops,
        plan,
        journal=journal,
        lb=lambda host: FakeLB(),  # type: ignore[arg-type,return-value]
        marks=marks,  # type: ignore[arg-type]
        bundles=bundles,  # type: ignore[arg-type]
        stop=stop,
        touched=touched,
        resumed=resumed,
    )
    report = engine.run(**kw)
    return Ran(report, ops, marks, read(journal.path))


def assert_none_drained(ops: FakeOps) -> None:
    assert [h for h, s in ops.sims.items() if s.drained] == []


# --------------------------------------------------------------------------- the happy path


def test_rollout_updates_every_host_batch_by_batch_and_unmarks(tmp_path: Path) -> None:
    ops = FakeOps(fleet(3))
    ran = run(tmp_path, ops, plan_for(ops.sims))
    assert ran.report.outcome == "succeeded" and ran.report.exit_code == 0
    assert {h: s.current for h, s in ops.sims.items()} == dict.fromkeys(ops.sims, NEW.id)
    assert {h: s.previous for h, s in ops.sims.items()} == dict.fromkeys(ops.sims, OLD.id)
    assert ops.did("switch") == ["h1", "h2", "h3"]
    assert all(s.history[-1]["result"] == "ok" for s in ops.sims.values())
    assert ran.marks.labels == dict.fromkeys(ops.sims)  # every rollout label removed again
    assert_none_drained(ops)


# --------------------------------------------------------------------------- failure paths


def test_canary_fails_bounce_back_to_source_then_budget_rolls_back(tmp_path: Path) -> None:
    ops = FakeOps(fleet(3))
    ran = run(tmp_path, ops, plan_for(ops.sims, BAD))
    assert ran.result("h1") == "rolled-back"
    assert ops.sims["h1"].current == OLD.id and ops.sims["h1"].running == OLD.id
    assert ops.sims["h1"].previous == OLDER.id  # the `previous` link restored too
    assert [e["result"] for e in ops.sims["h1"].history] == ["failed", "ok"]
    assert ran.report.outcome == "rolled-back" and ran.report.exit_code == 3
    assert ran.result("h2") == ran.result("h3") == "not-started"
    assert ops.did("switch") == ["h1", "h1"]  # forward, then back: no other host touched
    assert_none_drained(ops)


def test_budget_exceeded_fleet_rollback_newest_batch_first(tmp_path: Path) -> None:
    ops = FakeOps(fleet(4))
    ops.fail[("h3", "up")] = ht.StepError("h3", "up", "compose up failed")
    ran = run(tmp_path, ops, plan_for(ops.sims))
    assert ran.report.outcome == "rolled-back" and ran.report.failures == 1
    assert ran.result("h3") == "rolled-back"  # bounced itself
    assert ran.result("h1") == ran.result("h2") == "reverted"
    assert ran.result("h4") == "not-started"
    switches = ops.did("switch")
    assert switches[-2:] == ["h2", "h1"]  # batch 1 undone before batch 0
    assert {h: s.current for h, s in ops.sims.items()} == dict.fromkeys(ops.sims, OLD.id)
    assert all(s.previous == OLDER.id for s in ops.sims.values())
    rollback = [e for e in ran.events if e["event"] == "fleet-rollback"]
    assert rollback[0]["hosts"] == ["h2", "h1"] and rollback[-1]["status"] == "done"
    assert_none_drained(ops)


def test_budget_allows_one_failure_and_rollout_goes_on(tmp_path: Path) -> None:
    ops = FakeOps(fleet(3))
    ops.fail[("h2", "up")] = ht.StepError("h2", "up", "compose up failed")
    ran = run(tmp_path, ops, plan_for(ops.sims, max_failures="1"))
    assert [ran.result(h) for h in ("h1", "h2", "h3")] == ["updated", "rolled-back", "updated"]
    assert ran.report.outcome == "failed" and ran.report.resume_command is not None


def test_on_failure_pause_stops_after_the_batch_and_is_resumable(tmp_path: Path) -> None:
    ops = FakeOps(fleet(3))
    ops.fail[("h2", "up")] = ht.StepError("h2", "up", "compose up failed")
    ran = run(tmp_path, ops, plan_for(ops.sims, on_failure="pause"))
    assert ran.report.outcome == "paused" and ran.report.exit_code == 4
    assert [ran.result(h) for h in ("h1", "h2", "h3")] == ["updated", "rolled-back", "not-started"]
    assert ops.sims["h1"].current == NEW.id  # no fleet rollback
    assert ran.report.resume_command and "--resume" in ran.report.resume_command
    assert any("paused" in p for p in ran.report.problems)


def test_on_failure_continue_runs_every_batch_past_the_budget(tmp_path: Path) -> None:
    ops = FakeOps(fleet(3))
    ops.fail[("h1", "up")] = ht.StepError("h1", "up", "compose up failed")
    ops.fail[("h2", "up")] = ht.StepError("h2", "up", "compose up failed")
    ran = run(tmp_path, ops, plan_for(ops.sims, on_failure="continue"))
    assert [ran.result(h) for h in ("h1", "h2", "h3")] == ["rolled-back", "rolled-back", "updated"]
    assert ran.report.outcome == "failed" and ran.report.failures == 2


def test_failure_before_switch_is_undrained_and_not_bounced(tmp_path: Path) -> None:
    ops = FakeOps(fleet(2))
    ops.fail[("h1", "switch")] = ht.StepError("h1", "switch", "another docker compose still runs")
    ran = run(tmp_path, ops, plan_for(ops.sims, on_failure="pause"))
    assert ran.result("h1") == "failed" and ops.sims["h1"].current == OLD.id
    assert ran.outcome("h1").drained is False and "up" not in [o for h, o in ops.calls if h == "h1"]
    assert_none_drained(ops)


def test_host_unreachable_mid_step_counts_keeps_label_and_says_resume(tmp_path: Path) -> None:
    ops = FakeOps(fleet(3))

    def lose() -> None:
        ops.sims["h1"].reachable = False

    ops.hooks[("h1", "up")] = lose
    ran = run(tmp_path, ops, plan_for(ops.sims, on_failure="pause"))
    out = ran.outcome("h1")
    assert out.result == "unreachable" and out.drained is None  # its drain flag is unknown
    assert any("--resume" in p for p in out.problems)
    assert ran.marks.labels["h1"] == ran.report.rollout_id  # autoheal keeps away from it
    assert ran.report.outcome == "paused" and ran.report.failures == 1
    assert "undrain" not in [o for h, o in ops.calls if h == "h1"]


def test_unreachable_while_going_back_is_reported(tmp_path: Path) -> None:
    ops = FakeOps(fleet(2))

    def lose() -> None:
        ops.sims["h1"].reachable = False

    ops.fail[("h1", "up")] = ht.StepError("h1", "up", "compose up failed")
    ops.hooks[("h1", "set_previous")] = lose  # never reached: the bounce fails first
    ops.hooks[("h1", "check")] = lose
    ran = run(tmp_path, ops, plan_for(ops.sims, on_failure="pause"))
    out = ran.outcome("h1")
    assert out.result == "unreachable"
    assert any("going back to" in p for p in out.problems)


def test_sigint_mid_batch_undrains_every_host_and_journals_it(tmp_path: Path) -> None:
    ops = FakeOps(fleet(4))
    stop = threading.Event()
    ops.hooks[("h2", "drain")] = stop.set  # Ctrl-C while batch 1 (h2, h3) drains
    ran = run(tmp_path, ops, plan_for(ops.sims, batch="2"), stop=stop)
    assert ran.report.outcome == "interrupted" and ran.report.exit_code == 4
    assert ran.result("h1") == "updated"
    assert ran.result("h2") == ran.result("h3") == "interrupted"
    assert ran.result("h4") == "not-started"
    assert ops.sims["h2"].current == OLD.id and ops.sims["h3"].current == OLD.id  # not switched
    assert_none_drained(ops)
    hosts = {e["host"]: e for e in ran.events if e["event"] == "host"}
    assert hosts["h2"]["result"] == "interrupted" and hosts["h2"]["drained"] is False
    assert ran.report.resume_command and "--resume" in ran.report.resume_command


def test_lock_lost_pauses_before_the_next_batch(tmp_path: Path) -> None:
    ops = FakeOps(fleet(2))
    lost: list[str] = []
    journal = Journal.create(tmp_path, (plan := plan_for(ops.sims)).rollout_id)
    ops.hooks[("h1", "record")] = lambda: lost.append("the lock was removed")
    engine = InPlace(
        ops,
        plan,
        journal=journal,
        lb=lambda host: FakeLB(),  # type: ignore[arg-type,return-value]
        marks=FakeMarks(),  # type: ignore[arg-type]
        bundles={h: FakeBundle(NEW.id) for h in ops.sims},  # type: ignore[misc]
        lock_lost=lambda: lost[0] if lost else None,
    )
    report = engine.run()
    assert report.outcome == "paused" and ops.sims["h2"].current == OLD.id
    assert any("lock lost" in p for p in report.problems)


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    ("state", "sim"),
    [
        ("drained", Sim(current=OLD.id, previous=OLDER.id, drained=True)),
        ("switched-but-unverified", Sim(current=NEW.id, previous=OLD.id, drained=True, running=OLD.id)),
        ("verified-but-not-undrained", Sim(current=NEW.id, previous=OLD.id, drained=True, running=NEW.id)),
        ("still-on-previous", Sim(current=OLD.id, previous=OLDER.id)),
    ],
)
def test_resume_from_recorded_host_state(tmp_path: Path, state: str, sim: Sim) -> None:
    ops = FakeOps({"h1": sim, "h2": Sim(current=OLD.id, previous=OLDER.id)})
    first = plan_for({"h1": Sim(current=OLD.id), "h2": Sim(current=OLD.id)})  # planned before the kill
    ran = run(tmp_path, ops, first, touched=["h1"], resumed=True)
    assert ran.report.outcome == "succeeded", ran.report.hosts
    assert ran.result("h1") == "updated" and ran.result("h2") == "updated"
    assert ops.sims["h1"].current == ops.sims["h1"].running == NEW.id
    assert ops.sims["h1"].history[-1]["result"] == "ok"
    assert_none_drained(ops)


def test_resume_from_unknown_state_found_on_target_is_reconciled(tmp_path: Path) -> None:
    """The killed run lost the host mid-step: it came back on the new release, serving. Nothing is
    redone; only the history line the dead run never wrote is added."""
    ops = FakeOps({"h1": Sim(current=NEW.id, previous=OLD.id), "h2": Sim(current=OLD.id)})
    first = plan_for({"h1": Sim(current=OLD.id), "h2": Sim(current=OLD.id)})
    ran = run(tmp_path, ops, first, touched=["h1"], resumed=True)
    assert ran.result("h1") == "updated"
    assert "drain" not in [o for h, o in ops.calls if h == "h1"]
    assert ops.sims["h1"].history[-1]["detail"] == "reconciled on resume"


def test_resume_from_unknown_state_still_unreachable_switches_nothing(tmp_path: Path) -> None:
    ops = FakeOps({"h1": Sim(current=OLD.id, reachable=False), "h2": Sim(current=OLD.id)})
    ran = run(tmp_path, ops, plan_for(ops.sims), touched=["h1"], resumed=True)
    assert ran.report.outcome == "failed" and ran.result("h1") == "unreachable"
    assert ops.did("switch") == []
    assert any("staging failed" in p for p in ran.report.problems)


def test_resume_of_a_fleet_rollback_reverts_the_remaining_hosts(tmp_path: Path) -> None:
    ops = FakeOps({"h1": Sim(current=NEW.id, previous=OLD.id), "h2": Sim(current=OLD.id, previous=OLDER.id)})
    plan = plan_for({"h1": Sim(current=OLD.id, previous=OLDER.id), "h2": Sim(current=OLD.id)})
    ran = run(tmp_path, ops, plan, resumed=True, stage=False, phase="rollback", revert_hosts=["h1"])
    assert ran.report.outcome == "rolled-back" and ran.result("h1") == "reverted"
    assert ops.sims["h1"].current == OLD.id and ops.sims["h1"].previous == OLDER.id


def test_host_changed_between_plan_and_lock_stops_before_any_switch(tmp_path: Path) -> None:
    ops = FakeOps(fleet(2))
    plan = plan_for(ops.sims)
    ops.sims["h2"].current = OLDER.id  # another rollout finished in between
    ran = run(tmp_path, ops, plan)
    assert ran.report.outcome == "failed" and ops.did("switch") == []


# --------------------------------------------------------------------------- worker_beat


def test_worker_beat_moves_without_ever_running_twice(tmp_path: Path) -> None:
    beat_new = Release("e" * 16, "1.1.0", ())  # enables worker_beat
    KNOWN[beat_new.id] = beat_new
    beat_old = Release("f" * 16, "1.0.0", ())
    KNOWN[beat_old.id] = beat_old
    sims = {"h2": Sim(current=OLD.id), "h1": Sim(current=beat_old.id, beat=True), "h3": Sim(current=OLD.id)}
    ops = FakeOps(sims)
    plan = plan_for(ops.sims, {"h2": beat_new, "h1": NEW, "h3": NEW}, beat_host="h2")
    ran = run(tmp_path, ops, plan)
    assert ran.report.outcome == "succeeded"
    assert ops.calls.index(("h1", "beat_stop")) < ops.calls.index(("h2", "up"))
    assert ops.beat_max == 1
    assert [h for h, s in ops.sims.items() if s.beat] == ["h2"]
    assert ran.report.beat_seen[0] == ["h1"]


def test_worker_beat_started_again_when_a_guard_stopped_it_and_the_rollout_failed(tmp_path: Path) -> None:
    beat_new = Release("e" * 16, "1.1.0", ())
    beat_old = Release("f" * 16, "1.0.0", ())
    KNOWN.update({beat_new.id: beat_new, beat_old.id: beat_old})
    sims = {"h2": Sim(current=OLD.id), "h1": Sim(current=beat_old.id, beat=True)}
    ops = FakeOps(sims, broken=[beat_new.id])
    plan = plan_for(ops.sims, {"h2": beat_new, "h1": NEW}, beat_host="h1")
    ran = run(tmp_path, ops, plan)
    assert ran.result("h2") == "rolled-back"
    assert ("h1", "beat_start") in ops.calls and ops.sims["h1"].beat
    assert ops.beat_max == 1


def test_a_beat_host_that_cannot_be_reached_at_the_end_is_reported_as_unchecked(tmp_path: Path) -> None:
    """The end-of-rollout look at worker_beat fails on the beat host (as on a VM the MIG recreated
    during a replace rollout: a new host key this run does not know): the report says it could not
    look, not that the release does not run worker_beat."""
    beat_new = Release("e" * 16, "1.1.0", ())
    beat_old = Release("f" * 16, "1.0.0", ())
    KNOWN.update({beat_new.id: beat_new, beat_old.id: beat_old})
    sims = {"h1": Sim(current=beat_old.id, beat=True), "h2": Sim(current=OLD.id)}
    ops = FakeOps(sims)

    looks = []

    def gone() -> None:  # the guard's look before h1's batch works; from the end's look on, h1 is gone
        looks.append(1)
        if len(looks) > 1:
            ops.sims["h1"].reachable = False

    ops.hooks[("h1", "beat_running")] = gone
    plan = plan_for(ops.sims, {"h1": beat_new, "h2": NEW}, beat_host="h1")
    ran = run(tmp_path, ops, plan)
    assert ran.report.outcome == "succeeded"
    (problem,) = [p for p in ran.report.problems if "worker_beat" in p]
    assert problem.startswith("worker_beat could not be checked on h1 (the beat host): ") and "h1" in problem
    assert "does not enable it" not in problem


# --------------------------------------------------------------------------- --release, rollback --to


def test_release_spec_rolls_out_a_release_already_staged(tmp_path: Path) -> None:
    ops = FakeOps({h: Sim(current=OLD.id, staged={NEW.id}) for h in ("h1", "h2")})
    states = {h: ops.read_state(h) for h in ops.sims}
    targets = staged_targets(ops, states, "1.1.0")  # --release 1.1.0
    assert targets == {"h1": NEW, "h2": NEW}
    ran = run(tmp_path, ops, plan_for(ops.sims, targets), upload=False)
    assert ran.report.outcome == "succeeded" and ops.did("stage") == []  # nothing uploaded
    assert set(ops.did("release_present")) == {"h1", "h2"}


def test_release_spec_no_longer_staged_fails_staging_and_switches_nothing(tmp_path: Path) -> None:
    ops = FakeOps({h: Sim(current=OLD.id, staged={NEW.id}) for h in ("h1", "h2")})
    plan = plan_for(ops.sims, NEW)
    ops.sims["h2"].staged.discard(NEW.id)  # pruned meanwhile
    ran = run(tmp_path, ops, plan, upload=False)
    assert ran.report.outcome == "failed" and ops.did("switch") == []
    assert "not staged here any more" in (ran.outcome("h2").error or "")


def test_release_spec_unknown_names_the_staged_releases(tmp_path: Path) -> None:
    ops = FakeOps({"h1": Sim(current=OLD.id)})
    with pytest.raises(FleetError, match="no staged release matches"):
        staged_targets(ops, {"h1": ops.read_state("h1")}, "9.9.9")


def test_rollback_goes_to_each_hosts_previous_release(tmp_path: Path) -> None:
    ops = FakeOps({"h1": Sim(current=NEW.id, previous=OLD.id), "h2": Sim(current=NEW.id, previous=OLD.id)})
    targets = staged_targets(ops, {h: ops.read_state(h) for h in ops.sims}, None)
    assert targets == {"h1": OLD, "h2": OLD}
    ran = run(tmp_path, ops, plan_for(ops.sims, targets, action="rollback"), upload=False)
    assert ran.report.outcome == "succeeded" and ran.report.rollout_id.startswith("rb-")
    assert all(s.current == OLD.id and s.history[-1]["action"] == "rollback" for s in ops.sims.values())


def test_rollback_to_a_staged_release(tmp_path: Path) -> None:
    ops = FakeOps({h: Sim(current=NEW.id, previous=OLD.id, staged={OLDER.id}) for h in ("h1", "h2")})
    targets = staged_targets(ops, {h: ops.read_state(h) for h in ops.sims}, OLDER.id[:6])  # --to <prefix>
    assert targets == {"h1": OLDER, "h2": OLDER}
    ran = run(tmp_path, ops, plan_for(ops.sims, targets, action="rollback"), upload=False)
    assert ran.report.outcome == "succeeded"
    assert all(s.current == OLDER.id for s in ops.sims.values())


def test_rollback_without_previous_release_is_refused(tmp_path: Path) -> None:
    ops = FakeOps({"h1": Sim(current=NEW.id)})
    with pytest.raises(FleetError, match="cannot find the release to go to"):
        staged_targets(ops, {"h1": ops.read_state("h1")}, None)


# --------------------------------------------------------------------------- the strategy seam


def test_a_second_strategy_reuses_the_batch_loop_budget_and_fleet_rollback(tmp_path: Path) -> None:
    """What a MIG-replacement strategy would do: its own per-host steps, the same batch loop."""
    from fleet.rollout import Engine

    done: list[str] = []

    class Replace(Engine):
        def stage_host(self, name: str) -> HostResult:
            return HostResult(name, "ok")

        def forward_host(self, name: str) -> HostResult:
            out = self.outcomes[name]
            out.result = "failed" if name == "h3" else "updated"
            done.append(f"replace {name}")
            return HostResult(name, "ok", data={"outcome": out})

        def revert_host(self, name: str) -> HostResult:
            out = self.outcomes[name]
            out.result = "reverted"
            done.append(f"restore {name}")
            return HostResult(name, "ok", data={"outcome": out})

    ops = FakeOps(fleet(4))
    plan = plan_for(ops.sims)
    engine = Replace(
        ops,
        plan,
        journal=Journal.create(tmp_path, plan.rollout_id),
        lb=lambda host: FakeLB(),  # type: ignore[arg-type,return-value]
        marks=FakeMarks(),  # type: ignore[arg-type]
    )
    report = engine.run()
    assert done == ["replace h1", "replace h2", "replace h3", "restore h2", "restore h1"]
    assert report.outcome == "rolled-back" and ops.did("switch") == []
