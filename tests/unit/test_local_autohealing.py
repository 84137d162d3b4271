"""MIG autohealing: the autohealer's decisions (pure: fake clock, fake probe results) and the local
MIG's use of them (fleet/local/compute_docker.py with a fake fleet instead of Docker): the policy and
each member's health in the API's JSON, the liveness path (never /health) probed, an unhealthy member
recreated through the recreateInstances path."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from fleet.local.compute_docker import Action, DockerCompute, healing_policy, liveness_url
from fleet.local.config import LOCAL_LB, LocalConfig
from fleet.local.instances import Instance
from standins.autohealing import (
    HEALTHY,
    TIMEOUT,
    UNHEALTHY,
    UNKNOWN,
    Autohealer,
    HealingPolicy,
    HealthCheck,
    Member,
)

CHECK = HealthCheck(
    "https://compute.googleapis.com/compute/v1/projects/p/global/healthChecks/live",
    path="/nginx-health",
    check_interval=2,
    timeout=1,
    healthy_threshold=2,
    unhealthy_threshold=3,
)
POLICY = HealingPolicy(CHECK, initial_delay=60)
BOOT = 1000.0


def member(name: str = "m-1", *, running: bool = True, busy: bool = False, booted: float = BOOT) -> Member:
    return Member(name, running, busy, booted)


def run(healer: Autohealer, members: list[Member], results: Mapping[str, str], now: float) -> list[str]:
    """One round: probe whoever is due with the given results; the members to recreate."""
    return [n for n in healer.due(members, now) if healer.record(n, results[n], now)]


def rounds(
    healer: Autohealer, members: list[Member], results: Mapping[str, str], start: float, count: int
) -> list[tuple[float, list[str]]]:
    """`count` rounds, one check interval apart: (time, recreated) of each."""
    out = []
    for i in range(count):
        now = start + i * CHECK.check_interval
        out.append((now, run(healer, members, results, now)))
    return out


# --------------------------------------------------------------------------- the decisions


def test_a_member_answering_its_liveness_check_becomes_healthy_and_stays() -> None:
    healer = Autohealer(POLICY)
    after_delay = BOOT + 100
    assert healer.health("m-1") == UNKNOWN
    assert run(healer, [member()], {"m-1": HEALTHY}, after_delay) == []
    assert healer.health("m-1") == UNKNOWN  # one success of healthy_threshold 2
    assert all(not r for _, r in rounds(healer, [member()], {"m-1": HEALTHY}, after_delay + 2, 20))
    assert healer.health("m-1") == HEALTHY
    assert healer.instance_health("m-1") == [{"healthCheck": CHECK.url, "detailedHealthState": HEALTHY}]


def test_recreate_only_after_unhealthy_threshold_failures_in_a_row() -> None:
    healer = Autohealer(POLICY)
    members = [member()]
    now = BOOT + 100
    rounds(healer, members, {"m-1": HEALTHY}, now, 2)
    results = [r for _, r in rounds(healer, members, {"m-1": UNHEALTHY}, now + 10, 3)]
    assert results == [[], [], ["m-1"]]  # the third failure in a row, not before
    assert healer.health("m-1") == UNHEALTHY


def test_a_success_between_failures_starts_the_count_again() -> None:
    healer = Autohealer(POLICY)
    members = [member()]
    now = BOOT + 100
    for result in (TIMEOUT, TIMEOUT, HEALTHY, TIMEOUT, TIMEOUT):
        assert run(healer, members, {"m-1": result}, now) == []
        now += CHECK.check_interval
    assert run(healer, members, {"m-1": TIMEOUT}, now) == ["m-1"]
    assert healer.health("m-1") == TIMEOUT  # nothing answered: TIMEOUT, as Compute reports it


def test_probes_follow_the_check_interval() -> None:
    healer = Autohealer(POLICY)
    members = [member()]
    assert healer.due(members, BOOT + 100) == ["m-1"]
    healer.record("m-1", TIMEOUT, BOOT + 100)
    assert healer.due(members, BOOT + 101) == []  # 1 s later: not yet (every 2 s)
    assert healer.due(members, BOOT + 102) == ["m-1"]


def test_failures_within_the_initial_delay_are_ignored() -> None:
    healer = Autohealer(POLICY)
    members = [member()]
    during = rounds(healer, members, {"m-1": TIMEOUT}, BOOT + 1, 25)  # 1 .. 49 s after boot
    assert all(not r for _, r in during)
    assert healer.health("m-1") == UNKNOWN
    after = rounds(healer, members, {"m-1": TIMEOUT}, BOOT + 60, 3)  # from 60 s on: judged
    assert [r for _, r in after] == [[], [], ["m-1"]]


def test_a_healthy_answer_during_the_initial_delay_counts() -> None:
    healer = Autohealer(POLICY)
    rounds(healer, [member()], {"m-1": HEALTHY}, BOOT + 1, 2)
    assert healer.health("m-1") == HEALTHY  # booted and serving: ready before the delay ends


def test_a_member_with_a_current_action_is_not_judged() -> None:
    healer = Autohealer(POLICY)
    now = BOOT + 100
    rounds(healer, [member()], {"m-1": UNHEALTHY}, now, 2)  # two failures counted
    assert healer.due([member(busy=True)], now + 10) == []  # e.g. RESTARTING, VERIFYING
    # the action ended: the count starts again, so two more failures do not recreate
    assert [r for _, r in rounds(healer, [member()], {"m-1": UNHEALTHY}, now + 20, 2)] == [[], []]


def test_an_unhealthy_member_shows_so_while_it_is_recreated_and_a_new_vm_starts_unknown() -> None:
    healer = Autohealer(POLICY)
    now = BOOT + 100
    assert rounds(healer, [member()], {"m-1": UNHEALTHY}, now, 3)[-1][1] == ["m-1"]
    assert healer.due([member(busy=True)], now + 10) == []  # RECREATING
    assert healer.health("m-1") == UNHEALTHY
    new_vm = member(booted=now + 20)  # the new VM of the same name booted
    assert healer.due([new_vm], now + 21) == ["m-1"]
    assert healer.health("m-1") == UNKNOWN
    # and it has its own initial delay
    assert all(not r for _, r in rounds(healer, [new_vm], {"m-1": TIMEOUT}, now + 21, 10))


def test_stopped_and_gone_members_are_not_probed() -> None:
    healer = Autohealer(POLICY)
    now = BOOT + 100
    rounds(healer, [member("a"), member("b")], {"a": HEALTHY, "b": HEALTHY}, now, 2)
    assert healer.due([member("a", running=False), member("b")], now + 10) == ["b"]
    assert healer.health("a") == UNKNOWN
    assert healer.due([member("b")], now + 20) == ["b"]
    assert healer.health("a") == UNKNOWN  # forgotten
    assert healer.record("a", TIMEOUT, now + 20) is False  # a late result for a member that is gone


def test_bad_settings_and_results_are_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        HealthCheck("u", check_interval=0)
    with pytest.raises(ValueError, match="thresholds"):
        HealthCheck("u", unhealthy_threshold=0)
    with pytest.raises(ValueError, match="must start with '/'"):
        HealthCheck("u", path="nginx-health")
    healer = Autohealer(POLICY)
    healer.due([member()], BOOT)
    with pytest.raises(ValueError, match="unknown probe result"):
        healer.record("m-1", "DRAINING", BOOT)


# --------------------------------------------------------------------------- the local MIG


@dataclass
class FakeLb:
    def running(self) -> bool:
        return False


@dataclass
class FakeFleet:
    """What DockerCompute asks of LocalFleet: the instances, and the actions it runs on them."""

    config: LocalConfig
    records: dict[str, Instance] = field(default_factory=dict)
    recreated: list[str] = field(default_factory=list)
    lb: FakeLb = field(default_factory=FakeLb)

    def instances(self) -> list[Instance]:
        return list(self.records.values())

    def recreate_instance(self, name: str, template: str | None = None) -> Instance:
        self.recreated.append(name)
        old = self.records[name]
        started = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
        self.records[name] = replace(
            old, container_id="f" * 64, instance_id="99", started=started, template=template or ""
        )
        return self.records[name]

    def add_instances(self, indices: list[int], template: str | None = None) -> list[Instance]:
        made = [replace(instance(i), template=template or "") for i in indices]
        self.records.update((r.name, r) for r in made)
        return made

    def remove_instance(self, name: str) -> None:
        self.records.pop(name, None)


def instance(index: int, started: str = "2020-01-01T00:00:00Z") -> Instance:
    return Instance(
        index=index,
        name=f"t-{index}",
        container=f"fleet-t-{index}",
        container_id=f"{index:x}" * 64,
        ssh_port=2200 + index,
        http_port=8100 + index,
        state="running",
        host_key="",
        instance_id=str(index),
        ip=f"10.0.0.{index + 1}",
        created=started,
        started=started,
    )


@pytest.fixture
def local(tmp_path: Path) -> Iterator[tuple[DockerCompute, FakeFleet, list[tuple[str, str]]]]:
    config = LocalConfig(
        root=tmp_path,
        name="t",
        container_prefix="fleet-t",
        host_prefix="t",
        autohealing=True,
        lb={"liveness": {"check_interval": 1, "unhealthy_threshold": 2, "initial_delay": 30}},
    )
    fleet = FakeFleet(config, {f"t-{i}": instance(i) for i in (1, 2)})
    probes: list[tuple[str, str]] = []
    clock = [time.time()]  # the members booted in 2020: long past their initial delay
    # t-1 is drained (/health 503), t-2's nginx is dead: only the liveness path decides
    answers = {
        ("10.0.0.2", "/health"): UNHEALTHY,
        ("10.0.0.2", "/nginx-health"): HEALTHY,
        ("10.0.0.3", "/health"): TIMEOUT,
        ("10.0.0.3", "/nginx-health"): TIMEOUT,
    }

    def probe(address: str, check: HealthCheck) -> str:
        probes.append((address, check.path))
        return answers[(address, check.path)]

    backend = DockerCompute(
        fleet,  # type: ignore[arg-type]
        tmp_path / "state.json",
        log=lambda _line: None,
        healing=healing_policy(config),
        probe=probe,
        clock=lambda: clock[0],
    )
    backend.tick = lambda: clock.__setitem__(0, clock[0] + 1)  # type: ignore[attr-defined]
    yield backend, fleet, probes
    backend.close()


def test_the_policy_comes_from_the_fleets_liveness_settings(tmp_path: Path) -> None:
    off = LocalConfig(root=tmp_path)
    assert healing_policy(off) is None  # a fleet without autohealing: a MIG without a policy
    on = LocalConfig(root=tmp_path, autohealing=True)
    policy = healing_policy(on)
    assert policy is not None
    live = LOCAL_LB["liveness"]
    assert policy.to_json() == {"healthCheck": liveness_url(on), "initialDelaySec": live["initial_delay"]}
    check = policy.health_check
    assert (check.path, check.port, check.check_interval, check.timeout) == (
        "/nginx-health",
        80,
        live["check_interval"],
        live["timeout"],
    )
    assert (check.healthy_threshold, check.unhealthy_threshold) == (2, live["unhealthy_threshold"])


def test_the_mig_shows_its_policy_and_each_members_health(local: Any) -> None:
    backend, fleet, _ = local
    cfg = fleet.config
    igm = backend.igm(cfg.project, cfg.zone, "t-mig")
    assert igm["autoHealingPolicies"] == [{"healthCheck": liveness_url(cfg), "initialDelaySec": 30}]
    rows = backend.managed_instances(cfg.project, cfg.zone, "t-mig")
    assert [r["instanceHealth"] for r in rows] == [
        [{"healthCheck": liveness_url(cfg), "detailedHealthState": "UNKNOWN"}]
    ] * 2


def test_a_drained_member_stays_and_a_dead_nginx_is_recreated(local: Any) -> None:
    backend, fleet, probes = local
    cfg = fleet.config
    assert backend.heal_once() == []
    assert set(probes) == {("10.0.0.2", "/nginx-health"), ("10.0.0.3", "/nginx-health")}  # never /health
    backend.tick()  # the check interval (1 s)
    assert backend.heal_once() == ["t-2"]  # two failures in a row (unhealthy_threshold 2)
    rows = {r["name"]: r for r in backend.managed_instances(cfg.project, cfg.zone, "t-mig")}
    assert rows["t-1"]["instanceHealth"][0]["detailedHealthState"] == "HEALTHY"
    assert rows["t-2"]["instanceHealth"][0]["detailedHealthState"] == "TIMEOUT"
    ops = [op.to_json() for op in backend.ops.all()]
    assert [op["operationType"] for op in ops] == ["compute.instances.repair.recreateInstance"]
    deadline = time.monotonic() + 10
    while not backend.idle() and time.monotonic() < deadline:  # the recreate runs in a worker
        time.sleep(0.05)
    assert fleet.recreated == ["t-2"]  # the same path recreateInstances takes (no startup hook here)
    rows = {r["name"]: r for r in backend.managed_instances(cfg.project, cfg.zone, "t-mig")}
    assert rows["t-2"]["id"] == "99" and rows["t-2"]["currentAction"] == "NONE"
    backend.tick()
    backend.heal_once()
    assert backend.healer.health("t-2") == UNKNOWN  # a new VM, in its initial delay


def test_a_member_under_an_action_is_left_alone(local: Any) -> None:
    backend, fleet, probes = local
    backend._actions["t-2"] = Action("RESTARTING")  # e.g. the autoheal function's reset
    for _ in range(3):
        assert backend.heal_once() == []
        backend.tick()
    assert {address for address, _ in probes} == {"10.0.0.2"}  # t-2 was never probed
    assert fleet.recreated == [] and backend.healer.health("t-2") == UNKNOWN


def test_local_up_keeps_a_running_endpoint_whatever_the_policy(tmp_path: Path, monkeypatch: Any) -> None:
    """`FLEET_LOCAL_AUTOHEALING=1 fab local.up` on a running fleet: the endpoint keeps running (the
    policy reaches it as a patch of the MIG by infra.apply, tests/integration/test_infra_local_mig.py);
    the config it was started with is rewritten."""
    import json

    from fleet.local import compute_endpoint

    running = LocalConfig(root=tmp_path, name="t", autohealing=False)
    compute_endpoint.save_config(running)
    monkeypatch.setattr(compute_endpoint, "running_endpoint", lambda _c: {"url": "http://127.0.0.1:1"})

    def stop(config: LocalConfig, *, forget: bool = True) -> None:
        raise AssertionError("a running endpoint was stopped")

    monkeypatch.setattr(compute_endpoint, "stop_endpoint", stop)
    assert compute_endpoint.ensure_endpoint(running) == "http://127.0.0.1:1"
    assert compute_endpoint.ensure_endpoint(replace(running, autohealing=True)) == "http://127.0.0.1:1"
    saved = compute_endpoint.state_dir(running) / "config.json"
    assert json.loads(saved.read_text())["autohealing"] is True
