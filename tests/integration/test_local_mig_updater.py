"""The Docker-backed local MIG's updater (fleet/local/compute_docker.py) over a FAKE fleet, no Docker:
release templates made from what `infra.apply` created, the update policy, setInstanceTemplate and
applyUpdatesToInstances recreating the named members from their new template through the fleet, the
members' startup script (here: the agent's boot, reduced to its report) booting the release the
template names, listManagedInstances' version and currentAction, backendServices.getHealth from the
fleet's LB. Driven by the real google-cloud-compute client, through fleet/gcp/migupdate.py and the
`--strategy replace` engine (fleet/rollout/replace.py)."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fleet.commands.haproxy import ServerState
from fleet.errors import FleetError
from fleet.gcp import migupdate as mu
from fleet.gcp.compute import Compute
from fleet.local import compute_endpoint, infrasetup
from fleet.local.compute_docker import DockerCompute
from fleet.local.config import LocalConfig
from fleet.rollout.journal import Journal, read
from fleet.rollout.replace import Replace
from functions import fleet_contract as contract
from standins.compute_api import ComputeApi
from standins.metadata_server import GuestAttributes
from tests.integration.test_infra_local_mig import OVERRIDES
from tests.integration.test_rollout_replace import plan
from tests.unit.test_local_autohealing import FakeFleet, instance
from tests.unit.test_rollout_engine import BAD, NEW, OLD, FakeLB, FakeMarks

MEMBERS = ["t-1", "t-2"]


class ServingLb:
    """The fleet's haproxy as the endpoint asks it: a member is UP once its VM booted a release that
    serves; a member being recreated is drained and removed first."""

    def __init__(self) -> None:
        self.up = set(MEMBERS)
        self.known = set(MEMBERS)
        self.drained: list[str] = []

    def running(self) -> bool:
        return True

    def servers(self) -> dict[str, ServerState]:
        return {
            n: ServerState(n, "UP" if n in self.up else "DOWN", "", "", "", 1, 0) for n in sorted(self.known)
        }

    def drain(self, name: str) -> bool:
        self.drained.append(name)
        return True

    def remove(self, name: str) -> None:
        self.up.discard(name)

    def configure(self, _backend: Any) -> bool:
        return False


@dataclasses.dataclass
class Rig:
    config: LocalConfig
    fleet: FakeFleet
    lb: ServingLb
    guest: GuestAttributes
    backend: DockerCompute
    api: ComputeApi
    base: str  # the template infra.apply made (name)
    boots: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (member, release)
    seen: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # at boot: its listing

    @property
    def compute(self) -> Compute:
        return Compute(self.api.url, op_timeout=30)

    def move(self) -> mu.MigMove:
        ref = contract.MigRef.make(self.config.project, "europe-west1", "t-mig")
        return mu.MigMove(self.compute, ref, self.config.backend, poll=0.05)

    def members(self) -> dict[str, tuple[str, str]]:
        """member -> (the template of its version, its currentAction)."""
        got = self.compute.managed_instances(self.move().mig)
        return {m.name: (m.version.instance_template.rsplit("/", 1)[-1], str(m.current_action)) for m in got}

    def settled(self, timeout: float = 20.0) -> dict[str, tuple[str, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.members()
            if {a for _, a in now.values()} == {"NONE"}:
                return now
            time.sleep(0.05)
        raise AssertionError(f"members still busy: {self.members()}")


def start(
    rig_config: LocalConfig, fleet: FakeFleet, guest: GuestAttributes, boots: list[Any], seen: list[Any]
) -> Any:
    holder: dict[str, DockerCompute] = {}

    def boot(member: str) -> None:
        """The startup script: the agent boots the release the member's template names."""
        backend = holder["backend"]
        listed = backend.managed_instances(backend.project_id, backend.zone, backend.mig)
        (row,) = [m for m in listed if m["name"] == member]
        seen.append((member, row["version"]["instanceTemplate"].rsplit("/", 1)[-1], row["currentAction"]))
        metadata, _, _ = backend.instance_metadata(fleet.records[member])
        release, version = metadata.get(mu.RELEASE_KEY, ""), metadata.get(mu.VERSION_KEY, "")
        time.sleep(0.1)
        boots.append((member, release))
        if "broken" in version:
            guest.put(member, "fleet", "result", "failed")
            guest.put(member, "fleet", "health", "failed")
            guest.put(member, "fleet", "error", "api never healthy")
            raise FleetError(f"fleet-agent boot {release}: api never healthy")
        for key, value in (("release", release), ("result", "ok"), ("health", "ok")):
            guest.put(member, "fleet", key, value)
        fleet.lb.up.add(member)  # type: ignore[attr-defined]

    state = compute_endpoint.state_dir(rig_config) / "state.json"
    backend = DockerCompute(
        fleet,  # type: ignore[arg-type]
        state,
        startup=boot,
        guest=guest,
        log=lambda _line: None,
        overrides=lambda: OVERRIDES,
    )
    holder["backend"] = backend
    api = ComputeApi(backend).start()
    compute_endpoint.endpoint_file(rig_config).write_text(
        json.dumps({"pid": 1, "port": api.port, "url": api.url})
    )
    return backend, api


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    config = LocalConfig(
        root=tmp_path, name="t", container_prefix="fleet-t", host_prefix="t", subnet="10.230.0.0/24"
    )
    lb = ServingLb()
    fleet = FakeFleet(config, {f"t-{i}": instance(i) for i in (1, 2)}, lb=lb)  # type: ignore[arg-type]
    guest = GuestAttributes()
    boots: list[tuple[str, str]] = []
    seen: list[tuple[str, str, str]] = []
    backend, api = start(config, fleet, guest, boots, seen)
    report = infrasetup.apply(config, 2)
    (base,) = [ch.name for ch in report.changes if ch.kind == "instanceTemplates"]
    url = f"https://www.googleapis.com/compute/v1/projects/{config.project}/global/instanceTemplates/{base}"
    for name in MEMBERS:  # made from it, as LocalFleet stamps them
        fleet.records[name] = dataclasses.replace(fleet.records[name], template=url)
        for key, value in (("release", OLD.id), ("result", "ok"), ("health", "ok")):
            guest.put(name, "fleet", key, value)
    r = Rig(config, fleet, lb, guest, backend, api, base, boots, seen)
    try:
        yield r
    finally:
        r.api.stop()
        r.api.resources.close()
        r.backend.close()


def test_set_template_moves_nothing_until_apply_recreates_the_named_member(rig: Rig) -> None:
    move = rig.move()
    assert move.current_template() == rig.base and move.base_template() == rig.base
    new, _, created = move.release_template(rig.base, NEW.id, NEW.version)
    assert created and new != rig.base
    move.set_policy(mu.replace_policy(1, move.zones()))
    move.set_template(new)
    igm = rig.compute.mig(move.mig)
    assert igm.instance_template.endswith(f"/{new}")
    assert (igm.update_policy.type_, igm.update_policy.replacement_method) == ("OPPORTUNISTIC", "RECREATE")
    assert igm.update_policy.max_unavailable.fixed == 2  # a regional MIG over 2 zones: at least 2
    assert not igm.status.version_target.is_reached
    assert rig.members() == dict.fromkeys(MEMBERS, (rig.base, "NONE"))  # OPPORTUNISTIC: nothing moved
    assert rig.fleet.recreated == []

    view = mu.GroupView(move)
    move.apply([m for m in view.members().values() if m.name == "t-1"])
    assert rig.settled() == {"t-1": (new, "NONE"), "t-2": (rig.base, "NONE")}
    assert rig.seen == [("t-1", new, "VERIFYING")]  # while its startup script ran: the new version
    assert rig.fleet.recreated == ["t-1"] and rig.lb.drained == ["t-1"]  # drained before it went
    assert rig.fleet.records["t-1"].template.endswith(f"/{new}")  # recreated FROM the new template
    assert rig.boots == [("t-1", NEW.id)]  # its startup script booted the release the template names
    view.refresh(force=True)
    assert view.release_of(view.member("t-1"))["release"] == NEW.id  # type: ignore[arg-type]
    assert (view.lb_state("t-1"), view.lb_state("t-2")) == ("HEALTHY", "HEALTHY")  # getHealth: the LB's

    move.apply([m for m in view.members().values()])  # t-1 is on its target: only t-2 moves
    assert rig.settled() == dict.fromkeys(MEMBERS, (new, "NONE"))
    assert rig.fleet.recreated == ["t-1", "t-2"]
    assert rig.compute.mig(move.mig).status.version_target.is_reached

    # kept across an endpoint restart (state.json), and a missing template is refused like Compute
    rig.api.stop()
    rig.api.resources.close()
    rig.backend.close()
    rig.backend, rig.api = start(rig.config, rig.fleet, rig.guest, rig.boots, rig.seen)
    assert rig.move().current_template() == new
    assert rig.members() == dict.fromkeys(MEMBERS, (new, "NONE"))
    with pytest.raises(FleetError, match="does not exist"):
        rig.move().set_template("no-such-template")
    substitute = {**mu.replace_policy(2, 2), "type": "PROACTIVE", "replacementMethod": "SUBSTITUTE"}
    substitute["maxSurge"] = {"fixed": 2}
    with pytest.raises(FleetError, match="needs RECREATE"):
        rig.move().set_policy(substitute)
    # the zonal view of the MIG (the inventory's gce.migs) has a zonal MIG's rules, the regional one
    # (infra's) a regional one's
    zonal = mu.MigMove(rig.compute, contract.MigRef.make(rig.config.project, rig.config.zone, "t-mig"))
    zonal.set_policy(mu.replace_policy(1, zonal.zones()))
    assert rig.compute.mig(zonal.mig).update_policy.max_unavailable.fixed == 1
    with pytest.raises(FleetError, match="at least its number of zones"):
        rig.move().set_policy(mu.replace_policy(1, 1))


def test_a_proactive_policy_recreates_the_outdated_members_by_itself(rig: Rig) -> None:
    move = rig.move()
    new, _, _ = move.release_template(rig.base, NEW.id, NEW.version)
    move.set_policy({**mu.replace_policy(2, 2), "type": "PROACTIVE"})
    move.set_template(new)
    assert rig.settled() == dict.fromkeys(MEMBERS, (new, "NONE"))
    assert sorted(rig.fleet.recreated) == MEMBERS and sorted(rig.boots) == [(m, NEW.id) for m in MEMBERS]


def engine(rig: Rig, target: Any, tmp_path: Path) -> tuple[Replace, Journal, Any]:
    ops, p = plan(SimpleNamespace(members=MEMBERS), target)  # type: ignore[arg-type]
    journal = Journal.create(tmp_path, p.rollout_id)
    e = Replace(
        ops,
        p,
        move=rig.move(),
        base_template=rig.base,
        journal=journal,
        lb=lambda host: FakeLB(),
        marks=FakeMarks(),
    )
    return e, journal, p


def test_replace_rollout_over_the_local_mig(rig: Rig, tmp_path: Path) -> None:
    e, _, p = engine(rig, NEW, tmp_path)
    report = e.run()
    assert report.outcome == "succeeded", [(h.host, h.result, h.error) for h in report.hosts]
    new = e.template_for(NEW)
    assert rig.members() == dict.fromkeys(MEMBERS, (new, "NONE"))
    assert rig.fleet.recreated == [p.batches[0][0], p.batches[1][0]]  # canary first, one at a time
    applied = rig.api.calls("regionInstanceGroupManagers.applyUpdatesToInstances")
    assert [len(c.body["instances"]) for c in applied] == [1, 1]


def test_broken_release_canary_goes_back_to_the_previous_template(rig: Rig, tmp_path: Path) -> None:
    e, journal, p = engine(rig, BAD, tmp_path)
    report = e.run()
    canary = p.batches[0][0]
    assert report.outcome == "rolled-back" and report.exit_code == 3
    results = {h.host: h.result for h in report.hosts}
    assert results == {canary: "rolled-back", p.batches[1][0]: "not-started"}
    old = e.template_for(OLD)
    assert rig.compute.mig(rig.move().mig).instance_template.endswith(f"/{old}")
    assert rig.members() == {canary: (old, "NONE"), p.batches[1][0]: (rig.base, "NONE")}
    assert rig.boots == [(canary, BAD.id), (canary, OLD.id)]  # the broken boot, then the way back
    steps = [(x["step"], x["status"]) for x in read(journal.path) if x["event"] == "step"]
    assert ("replace", "failed") in steps and ("bounce", "done") in steps


def test_a_resize_through_the_regional_view_is_a_regional_operation(rig: Rig) -> None:
    """Compute answers a regional MIG's resize with a regionOperation, and the client waits on it there
    (the local MIG had named a zonal one: waiting at the regional path found nothing)."""
    regional = rig.move().mig
    rig.api.clear_calls()
    rig.compute.resize(regional, 3)
    waits = [c.method for c in rig.api.calls() if c.method.endswith("Operations.wait")]
    assert waits and set(waits) == {"regionOperations.wait"}
    assert rig.compute.mig(regional).target_size == 3
    # the zonal view (the inventory's gce.migs) waits at the zonal path, and both views show one size
    zonal = contract.MigRef.make(rig.config.project, rig.config.zone, "t-mig")
    rig.api.clear_calls()
    rig.compute.resize(zonal, 2)
    waits = {c.method for c in rig.api.calls() if c.method.endswith("Operations.wait")}
    assert waits <= {"zoneOperations.wait"}
    rig.compute.wait_stable(regional, timeout=20, poll=0.05)
    assert rig.compute.mig(regional).target_size == rig.compute.mig(zonal).target_size == 2
    assert len(rig.fleet.records) == 2


def test_a_resize_gives_a_sized_canary_version_its_members_first(rig: Rig) -> None:
    """Two versions, the canary with targetSize fixed 1 (an operator's `gcloud ... rolling-action
    start-update --canary-version`): a resize creates the member the canary lacks from the canary's
    template and the rest from the main version's, as Compute's updater does. The local MIG had made
    every new member from the main version."""
    move = rig.move()
    canary, _, _ = move.release_template(rig.base, NEW.id, NEW.version)
    client, where, wait = move._igm()
    t = rig.compute.types()
    versions = {
        "versions": [
            {"name": "main", "instanceTemplate": move.url(rig.base)},
            {"name": "canary", "instanceTemplate": move.url(canary), "targetSize": {"fixed": 1}},
        ]
    }
    resource = t.InstanceGroupManager.from_json(json.dumps(versions))
    rig.compute.wait(
        client.patch(**where, instance_group_manager_resource=resource), project=rig.config.project, **wait
    )
    assert rig.members() == dict.fromkeys(MEMBERS, (rig.base, "NONE"))  # OPPORTUNISTIC: nothing moved
    rig.compute.resize(move.mig, 4)
    rig.compute.wait_stable(move.mig, timeout=20, poll=0.05)
    members = rig.settled()
    new = {name: tmpl for name, (tmpl, _) in members.items() if name not in MEMBERS}
    assert sorted(new.values()) == sorted([canary, rig.base]), members
    (on_canary,) = [name for name, tmpl in new.items() if tmpl == canary]
    assert rig.fleet.records[on_canary].template.endswith(f"/{canary}")  # made FROM the canary's template
    assert (on_canary, NEW.id) in rig.boots  # and its startup script booted the canary's release
    listed = {v.name: v.target_size.calculated for v in rig.compute.mig(move.mig).versions}
    assert listed["canary"] == 1, listed


def test_a_member_still_booting_is_recreated_when_asked_and_its_old_boot_is_dropped(rig: Rig) -> None:
    """VERIFYING here is the startup script (the agent's boot), which on GCE is no MIG action: a VM
    still booting (a broken release whose agent waits for its health) is recreated at once by
    applyUpdatesToInstances; the old boot's end neither clears the new VM's action nor its report."""
    move = rig.move()
    new, _, _ = move.release_template(rig.base, NEW.id, NEW.version)
    bad, _, _ = move.release_template(rig.base, BAD.id, BAD.version)
    move.set_policy(mu.replace_policy(1, move.zones()))
    boot, release = rig.backend.startup, threading.Event()
    assert boot is not None
    first = threading.Event()

    def slow_first(member: str) -> None:
        if not first.is_set():
            first.set()
            release.wait(20)  # the broken boot, still waiting for its health
        boot(member)

    rig.backend.startup = slow_first
    move.set_template(bad)
    view = mu.GroupView(move)
    move.apply([m for m in view.members().values() if m.name == "t-1"])
    assert first.wait(10)
    assert rig.members()["t-1"] == (bad, "VERIFYING")
    move.set_template(new)
    view.refresh(force=True)
    move.apply([m for m in view.members().values() if m.name == "t-1"])  # not skipped as busy
    deadline = time.monotonic() + 20
    while rig.boots != [("t-1", NEW.id)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rig.boots == [("t-1", NEW.id)]  # the new VM booted while the old boot still waited
    assert rig.settled()["t-1"] == (new, "NONE")
    release.set()  # the old boot ends (its VM is gone): nothing of it is kept
    deadline = time.monotonic() + 20
    while len(rig.boots) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rig.members()["t-1"] == (new, "NONE")
    assert rig.fleet.recreated == ["t-1", "t-1"]
