"""`--strategy replace` (fleet/rollout/replace.py) through the rollout engine, against the Compute
stand-in's MIG updater with the real google-cloud-compute client: instance templates, targeted
updates, guest attributes and backendServices.getHealth. Hosts are MIG members; nothing runs SSH."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.cloud import compute_v1

from fleet.gcp import migupdate as mu
from fleet.gcp.compute import Compute
from fleet.rollout import make_plan, new_rollout_id
from fleet.rollout.journal import Journal, read
from fleet.rollout.model import Release
from fleet.rollout.pacing import Timings
from fleet.rollout.replace import Replace, preview
from functions import fleet_contract as contract
from standins.compute_api import ComputeApi
from standins.compute_state import InMemoryCompute
from tests.unit.test_rollout_engine import BAD, NEW, OLD, OLDER, FakeLB, FakeMarks, FakeOps, Sim

PROJECT = "replace-project"
ZONE = "europe-west1-b"
BASE = "web-base"
TIMINGS = Timings(drain_wait=0.0, min_ready=0.1, health_timeout=15.0)
RELEASES = {r.id: r for r in (OLD, NEW, BAD)}


def agent_boot(instance: dict[str, Any], template: dict[str, Any] | None) -> tuple[dict[str, str], str]:
    """The agent's boot, reduced to its report: the release the template names, or a failure for a
    release whose version says broken (it never serves)."""
    items = ((template or {}).get("properties", {}).get("metadata") or {}).get("items") or []
    meta = {i["key"]: i["value"] for i in items}
    rid = meta.get(mu.RELEASE_KEY, "")
    if "broken" in meta.get(mu.VERSION_KEY, ""):
        return {
            "fleet/result": "failed",
            "fleet/health": "failed",
            "fleet/error": "api never healthy",
        }, "UNHEALTHY"
    return {"fleet/release": rid, "fleet/result": "ok", "fleet/health": "ok"}, "HEALTHY"


class Stand:
    def __init__(self, size: int) -> None:
        self.backend = InMemoryCompute(action_seconds=0.1, op_seconds=0.02, boot_seconds=0.2, boot=agent_boot)
        self.backend.add_project(PROJECT)
        self.api = ComputeApi(self.backend).start()
        self.compute = Compute(self.api.url)
        t = self.compute.types()
        templates = self.compute.client("InstanceTemplatesClient")
        body = t.InstanceTemplate(
            name=BASE,
            properties=t.InstanceProperties(
                machine_type="e2-medium",
                disks=[t.AttachedDisk(boot=True)],
                network_interfaces=[t.NetworkInterface()],
                metadata=t.Metadata(items=[t.Items(key="fleet-name", value="dify")]),
            ),
        )
        self.compute.wait(templates.insert(project=PROJECT, instance_template_resource=body), project=PROJECT)
        self.members = self.backend.add_mig(
            PROJECT,
            ZONE,
            "web",
            size=size,
            template=f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/global/instanceTemplates/{BASE}",
            guest_attributes={"fleet/release": OLD.id, "fleet/result": "ok", "fleet/health": "ok"},
        )
        hc = t.HealthCheck(name="hc", type_="HTTP", http_health_check=t.HTTPHealthCheck(port=80))
        self.compute.wait(
            self.compute.client("HealthChecksClient").insert(project=PROJECT, health_check_resource=hc),
            project=PROJECT,
        )
        bs = t.BackendService(
            name="web-bs",
            health_checks=[f"projects/{PROJECT}/global/healthChecks/hc"],
            backends=[t.Backend(group=f"projects/{PROJECT}/zones/{ZONE}/instanceGroups/web")],
        )
        self.compute.wait(
            self.compute.client("BackendServicesClient").insert(project=PROJECT, backend_service_resource=bs),
            project=PROJECT,
        )
        self.move = mu.MigMove(self.compute, contract.MigRef(PROJECT, ZONE, "web"), "web-bs", poll=0.05)

    def state(self) -> dict[str, tuple[str, str]]:
        """member -> (its template, the release its agent reports)."""
        out = {}
        for m in self.backend.managed_instances(PROJECT, ZONE, "web"):
            attrs = self.backend.guest_attributes(PROJECT, ZONE, m["name"], "fleet/", "")
            release = {i["key"]: i["value"] for i in attrs["queryValue"]["items"]}.get("release", "")
            out[m["name"]] = (m["version"]["instanceTemplate"].rsplit("/", 1)[-1], release)
        return out

    def close(self) -> None:
        self.api.stop()
        self.api.resources.close()
        self.backend.close()


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fleet.rollout.journal.os.fsync", lambda fd: None)


@pytest.fixture
def stand() -> Iterator[Stand]:
    s = Stand(4)
    yield s
    s.close()


def plan(stand: Stand, target: Any, **kw: Any) -> Any:
    sims = {m: Sim(current=OLD.id, previous=OLDER.id) for m in stand.members}
    return FakeOps(sims), make_plan(
        rollout_id=new_rollout_id("rollout"),
        action="rollout",
        inventory="test",
        label=target.version,
        order=list(sims),
        sources={h: OLD for h in sims},
        targets={h: target for h in sims},
        drained={h: False for h in sims},
        previous={h: OLDER.id for h in sims},
        canary=kw.get("canary", 1),
        batch=kw.get("batch", "2"),
        max_failures=kw.get("max_failures", "0"),
        on_failure=kw.get("on_failure", "rollback"),
        timings=TIMINGS,
        operator="tester",
    )


def engine(stand: Stand, ops: Any, p: Any, tmp_path: Path, **kw: Any) -> tuple[Replace, Journal]:
    journal = Journal.create(tmp_path, p.rollout_id)
    return Replace(
        ops,
        p,
        move=stand.move,
        base_template=BASE,
        journal=journal,
        lb=lambda host: FakeLB(),
        marks=FakeMarks(),
        **kw,
    ), journal


def test_replace_rollout_canary_then_batches_same_names_new_release(stand: Stand, tmp_path: Path) -> None:
    ops, p = plan(stand, NEW)
    before = {m["name"]: m["id"] for m in stand.backend.managed_instances(PROJECT, ZONE, "web")}
    e, journal = engine(stand, ops, p, tmp_path)
    report = e.run()
    assert report.outcome == "succeeded" and report.exit_code == 0
    assert {h.result for h in report.hosts} == {"updated"}
    template = e.template_for(NEW)
    assert template.startswith(f"{BASE}-") and template != BASE
    assert stand.state() == dict.fromkeys(stand.members, (template, NEW.id))
    after = {m["name"]: m["id"] for m in stand.backend.managed_instances(PROJECT, ZONE, "web")}
    assert set(after) == set(before) and all(after[n] != before[n] for n in after)  # new VMs, same names
    igm = stand.compute.mig(stand.move.mig)
    assert igm.instance_template.endswith(f"/{template}")
    assert (igm.update_policy.type_, igm.update_policy.replacement_method) == ("OPPORTUNISTIC", "RECREATE")
    # one targeted update per batch (canary 1, then 2 and 1), no SSH step anywhere
    applied = stand.api.calls("instanceGroupManagers.applyUpdatesToInstances")
    assert [len(c.body["instances"]) for c in applied] == [1, 2, 1]
    assert ops.did("switch") == [] and ops.did("up") == []
    events = read(journal.path)
    made = [e for e in events if e["event"] == "template"]
    assert {e["release"] for e in made} == {NEW.id, OLD.id} and all(e["created"] for e in made)
    # the template carries the release: what a VM booted from it reads
    body = stand.move.template(template)
    assert body is not None
    items = {i["key"]: i["value"] for i in body["properties"]["metadata"]["items"]}
    assert items == {
        "fleet-name": "dify",
        mu.RELEASE_KEY: NEW.id,
        mu.VERSION_KEY: NEW.version,
        mu.BASE_KEY: BASE,
    }
    assert stand.move.base_template() == BASE  # found again through the release template the MIG now has


def test_broken_release_fails_the_canary_and_the_mig_goes_back(stand: Stand, tmp_path: Path) -> None:
    ops, p = plan(stand, BAD)
    e, journal = engine(stand, ops, p, tmp_path)
    report = e.run()
    canary = p.batches[0][0]
    assert report.outcome == "rolled-back" and report.exit_code == 3
    assert next(h for h in report.hosts if h.host == canary).result == "rolled-back"
    assert "agent failed to boot" in (next(h for h in report.hosts if h.host == canary).error or "")
    assert [h.result for h in report.hosts if h.host != canary] == ["not-started"] * 3
    old = e.template_for(OLD)
    states = stand.state()
    assert states[canary] == (old, OLD.id)  # recreated from the source release's template
    assert {s for n, s in states.items() if n != canary} == {(BASE, OLD.id)}  # never touched
    assert stand.compute.mig(stand.move.mig).instance_template.endswith(f"/{old}")
    steps = [
        (x["step"], x["status"]) for x in read(journal.path) if x["event"] == "step" and x["host"] == canary
    ]
    assert ("replace", "failed") in steps and ("bounce", "done") in steps


def test_budget_exceeded_rolls_every_updated_host_back(stand: Stand, tmp_path: Path) -> None:
    """The canary passes; the next batch's first host never gets healthy on the LB: fleet rollback."""
    ops, p = plan(stand, NEW)
    victim = p.batches[1][0]
    real_boot = stand.backend.boot

    def boot(instance: dict[str, Any], template: dict[str, Any] | None) -> tuple[dict[str, str], str]:
        attrs, health = real_boot(instance, template)  # type: ignore[misc]
        rid = attrs.get("fleet/release")
        return attrs, ("UNHEALTHY" if instance["name"] == victim and rid == NEW.id else health)

    stand.backend.boot = boot
    p.timings = Timings(drain_wait=0.0, min_ready=0.1, health_timeout=2.0)
    e, _ = engine(stand, ops, p, tmp_path)
    report = e.run()
    assert report.outcome == "rolled-back"
    results = {h.host: h.result for h in report.hosts}
    assert results[p.batches[0][0]] == "reverted" and results[victim] == "rolled-back"
    assert "load balancer says UNHEALTHY" in (next(h for h in report.hosts if h.host == victim).error or "")
    old = e.template_for(OLD)
    assert {n: s for n, s in stand.state().items() if results[n] != "not-started"} == {
        n: (old, OLD.id) for n, r in results.items() if r != "not-started"
    }


def test_interrupted_then_resumed_finishes_without_recreating_twice(stand: Stand, tmp_path: Path) -> None:
    ops, p = plan(stand, NEW)
    stop = threading.Event()

    def observer(entry: dict[str, Any]) -> None:
        if entry["event"] == "batch" and entry.get("status") == "done" and entry.get("index") == 0:
            stop.set()

    e, _ = engine(stand, ops, p, tmp_path, stop=stop, observer=observer)
    first = e.run()
    assert first.outcome == "interrupted" and first.resume_command
    canary = p.batches[0][0]
    canary_id = next(
        m["id"] for m in stand.backend.managed_instances(PROJECT, ZONE, "web") if m["name"] == canary
    )
    e2, _ = engine(stand, ops, p, tmp_path / "again", touched=[canary], resumed=True)
    (tmp_path / "again").mkdir(exist_ok=True)
    second = e2.run()
    assert second.outcome == "succeeded"
    template = e2.template_for(NEW)
    assert stand.state() == dict.fromkeys(stand.members, (template, NEW.id))
    again = next(
        m["id"] for m in stand.backend.managed_instances(PROJECT, ZONE, "web") if m["name"] == canary
    )
    assert again == canary_id  # already on the new template: not recreated a second time
    made = [c for c in stand.api.calls("instanceTemplates.insert") if c.status == 200]
    assert len(made) == 3  # base, NEW and OLD: the resumed run found the content-addressed ones


def test_preview_shows_template_diff_and_policy(stand: Stand) -> None:
    setup = len(stand.api.actions())
    got = preview(stand.move, BASE, NEW, 2)
    assert got["current"] == BASE and got["exists"] is False and got["template"].startswith(f"{BASE}-")
    assert got["diff"] == [
        f"{mu.BASE_KEY}: - -> {BASE}",
        f"{mu.RELEASE_KEY}: - -> {NEW.id}",
        f"{mu.VERSION_KEY}: - -> {NEW.version}",
    ]
    assert got["update_policy"]["maxUnavailable"] == {"fixed": 2}
    assert len(stand.api.actions()) == setup  # a dry run changes nothing
    with pytest.raises(Exception, match="does not exist"):
        preview(stand.move, "nope", NEW, 2)


def test_names_are_content_addressed_and_bounded() -> None:
    base = {"properties": {"metadata": {"items": [{"key": "a", "value": "1"}]}}}
    one = mu.template_name("x" * 70, mu.release_properties(base, NEW.id, NEW.version))
    two = mu.template_name("x" * 70, mu.release_properties(base, NEW.id, NEW.version))
    other = mu.template_name("x" * 70, mu.release_properties(base, OLD.id, OLD.version))
    assert one == two != other and len(one) == 63
    regional = mu.replace_policy(1, 3)
    assert regional["maxUnavailable"] == {"fixed": 3} and regional["maxSurge"] == {"fixed": 0}
    parsed = compute_v1.InstanceGroupManagerUpdatePolicy.from_json(json.dumps(regional))
    assert (parsed.replacement_method, parsed.max_surge.fixed) == ("RECREATE", 0)


def test_for_hosts_takes_the_one_mig_and_the_gcp_backend_then_builds_the_engine(
    stand: Stand, tmp_path: Path
) -> None:
    """What `fab rollout --strategy replace` builds from the inventory (fleet/rollout/service.py)."""
    from fleet.errors import FleetError
    from fleet.inventory import FleetHost
    from fleet.rollout.replace import engine_for, for_hosts

    def host(name: str, migs: list[dict[str, str]]) -> FleetHost:
        data = {
            "gce": {"project": PROJECT, "zone": ZONE, "instance": name, "migs": migs},
            "lb": {"kind": "gcp", "backend": "web-bs", "check_interval": 2.0},
        }
        return FleetHost(name, "10.0.0.1", 22, "deploy", (), data)

    web = {"project": PROJECT, "zone": ZONE, "name": "web"}
    move = for_hosts([host(m, [web]) for m in stand.members], stand.compute)
    assert (str(move.mig), move.backend_service, move.poll) == (f"{PROJECT}/{ZONE}/web", "web-bs", 2.0)
    with pytest.raises(FleetError, match="exactly one MIG"):
        for_hosts([host("a", [web, {"project": PROJECT, "zone": ZONE, "name": "other"}])], stand.compute)
    ops, p = plan(stand, NEW)
    built = engine_for(move)(
        ops, p, journal=Journal.create(tmp_path, p.rollout_id), lb=None, marks=FakeMarks()
    )
    assert isinstance(built, Replace) and built.base_template == BASE  # the MIG's template now


def test_releases_not_in_the_store_stop_the_rollout_before_any_template(stand: Stand, tmp_path: Path) -> None:
    """`prepare` (fleet.rollout.publish.upload_releases from the service) runs first: when it refuses,
    no template is made and no VM is touched; when it uploads, the journal says what."""
    from fleet.errors import FleetError

    def refuse() -> list[str]:
        raise FleetError("not in the release store: " + NEW.id)

    ops, p = plan(stand, NEW)
    e, journal = engine(stand, ops, p, tmp_path, prepare=refuse)
    before = len(stand.api.actions())
    report = e.run()
    assert report.outcome == "failed" and report.exit_code == 1
    assert {h.result for h in report.hosts} == {"failed"}
    assert any("nothing was replaced" in problem for problem in report.problems)
    assert len(stand.api.actions()) == before  # no template, no policy, no recreate
    ops, p = plan(stand, NEW)
    e, journal = engine(stand, ops, p, tmp_path / "ok", prepare=lambda: [NEW.id])
    assert e.run().outcome == "succeeded"
    assert [x["uploaded"] for x in read(journal.path) if x["event"] == "store"] == [[NEW.id]]


def test_without_a_backend_service_the_inventorys_haproxy_is_the_lb_gate(
    stand: Stand, tmp_path: Path
) -> None:
    """lb.kind haproxy (the local fleet): a new VM passes only once haproxy has it UP and steady."""
    from fleet.rollout.lbview import Seen

    class Haproxy:
        kind = "haproxy"

        def __init__(self) -> None:
            self.looked: list[str] = []

        def look(self, host: Any) -> Seen | None:
            self.looked.append(host.name)
            return Seen(False, 0, "DOWN") if host.name == victim else Seen(True, 0, "UP")

    ops, p = plan(stand, NEW)
    victim = p.batches[1][0]
    p.timings = Timings(drain_wait=0.0, min_ready=0.1, health_timeout=2.0)
    lb = Haproxy()
    move = mu.MigMove(stand.compute, stand.move.mig, "", poll=0.05)  # no backend service to ask
    e = Replace(
        ops,
        p,
        move=move,
        base_template=BASE,
        journal=Journal.create(tmp_path, p.rollout_id),
        lb=lambda host: lb,
        marks=FakeMarks(),
    )
    report = e.run()
    results = {h.host: h for h in report.hosts}
    assert report.outcome == "rolled-back" and results[p.batches[0][0]].result == "reverted"
    assert "the load balancer says UNHEALTHY (DOWN)" in (results[victim].error or "")
    assert p.batches[0][0] in lb.looked and stand.api.calls("backendServices.getHealth") == []


def beat_plan(stand: Stand, target: Any, target_beat: Any) -> Any:
    """The first member is the worker_beat host: its releases are their own (beat enabled)."""
    sims = {m: Sim(current=OLD.id, previous=OLDER.id) for m in stand.members}
    beat = stand.members[0]
    old_beat = Release("e" * 16, OLD.version, ())
    return (
        old_beat,
        FakeOps(sims),
        make_plan(
            rollout_id=new_rollout_id("rollout"),
            action="rollout",
            inventory="test",
            label=target.version,
            order=list(sims),
            sources={h: old_beat if h == beat else OLD for h in sims},
            targets={h: target_beat if h == beat else target for h in sims},
            drained={h: False for h in sims},
            previous={h: OLDER.id for h in sims},
            canary=1,
            batch="2",
            max_failures="0",
            on_failure="rollback",
            timings=TIMINGS,
            operator="tester",
            beat_host=beat,
        ),
    )


@pytest.mark.parametrize("broken", [False, True], ids=["succeeded", "rolled-back"])
def test_the_mig_ends_on_the_fleets_template_not_the_beat_hosts(
    stand: Stand, tmp_path: Path, broken: bool
) -> None:
    """The beat host (the canary here) has a release of its own, so a template of its own. Whatever
    batch came last, the MIG's template (what autohealing and resizes create VMs from) ends on the
    fleet's release: the target's when the rollout succeeded, the source's when it was rolled back;
    never the beat host's (a VM created from it would run a second worker_beat)."""
    target = BAD if broken else NEW
    target_beat = Release("f" * 16, target.version, ())
    assert target_beat.runs_beat and not target.runs_beat
    old_beat, ops, p = beat_plan(stand, target, target_beat)
    # the last batch is the beat host's: the one the MIG's template would be left on
    p.batches = [[stand.members[1]], [stand.members[2], stand.members[3]], [stand.members[0]]]
    if broken:  # the canary (the beat host) fails and is put back on its own source template
        p.batches = [[stand.members[0]], *p.batches[:2]]
    e, journal = engine(stand, ops, p, tmp_path)
    report = e.run()
    assert report.outcome == ("rolled-back" if broken else "succeeded"), report.problems
    igm = stand.compute.mig(stand.move.mig)
    fleet = e.template_for(OLD if broken else NEW)
    assert igm.instance_template.endswith(f"/{fleet}")
    states = stand.state()
    beat = stand.members[0]
    assert states[beat][0] == e.template_for(old_beat if broken else target_beat)  # its own variant
    assert e.fleet_release("target") == target and e.fleet_release("source") == OLD
    settled = [x for x in read(journal.path) if x["event"] == "mig" and x["step"] == "settle"]
    assert [x["template"] for x in settled] == [fleet]
