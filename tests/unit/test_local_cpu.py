"""CPU scaling on the local fleet: the cgroup reader (paths, counters, vCPUs), the monitor's CPU
condition over members selected by their `fleet-mig` label (a fake usage reader), the incidents it
sends (the shapes `monitoring.apply` creates, acted on by the real scale policy code), and the load
commands. No fleet needed."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from fleet.alerting import policies as mon
from fleet.commands.cpuload import PID_FILE, start_load, stop_load
from fleet.errors import FleetError
from fleet.local.cpu import (
    ContainerCpu,
    CpuSample,
    cgroup_usage_file,
    cpuset_count,
    read_counter,
    vcpus_of,
)
from fleet.scenarios.monitor import (
    CPU_HIGH,
    CPU_LOW,
    CPU_METRIC,
    CpuSignal,
    Monitor,
    MonitoredInstance,
    MonitorSettings,
    cpu_conditions,
)
from functions import fleet_contract as contract
from tests.unit.monitor_rig import (
    MIG,
    PROJECT,
    ZONE,
    MonitorRig,
    fn_incidents,
    fn_policy,
    fn_settings,
    policies,
)

STAT = "# pxname,svname,status,req_tot,scur,addr\nfleet_http,FRONTEND,OPEN,0,0,\napp,BACKEND,UP,0,0,\n"


# --------------------------------------------------------------------------- reader


def test_vcpus_are_the_limit_else_the_cpuset_else_the_host() -> None:
    assert vcpus_of(1_500_000_000, 0, 0, "", host=8) == 1.5  # --cpus 1.5
    assert vcpus_of(0, 50_000, 100_000, "", host=8) == 0.5  # quota/period
    assert vcpus_of(0, 0, 0, "0-2,5", host=8) == 4.0
    assert vcpus_of(0, 0, 0, "", host=2) == 2.0  # no limit: the host's cores
    assert cpuset_count("0-3,6") == 5 and cpuset_count("") == 0


def test_cgroup_file_from_proc_cgroup_v1_and_v2(tmp_path: Path) -> None:
    cid = "ab" * 32
    v1 = tmp_path / "cpuacct" / "docker" / cid
    v1.mkdir(parents=True)
    (v1 / "cpuacct.usage").write_text("2500000000\n")
    text = f"4:memory:/docker/{cid}\n2:cpuacct:/docker/{cid}\n1:cpu:/docker/{cid}\n0::/\n"
    path, unit = cgroup_usage_file(text, tmp_path)
    assert path == v1 / "cpuacct.usage" and read_counter(path, unit) == pytest.approx(2.5)

    v2 = tmp_path / "system.slice" / f"docker-{cid}.scope"
    v2.mkdir(parents=True)
    (v2 / "cpu.stat").write_text("usage_usec 1250000\nuser_usec 1000000\nsystem_usec 250000\n")
    path, unit = cgroup_usage_file(f"0::/system.slice/docker-{cid}.scope\n", tmp_path)
    assert read_counter(path, unit) == pytest.approx(1.25)
    with pytest.raises(FleetError, match="no cpuacct"):
        cgroup_usage_file("3:memory:/x\n", tmp_path)


def test_container_reader_resolves_once_and_drops_a_vanished_container(tmp_path: Path) -> None:
    cid = "cd" * 32
    (tmp_path / "proc" / "4242").mkdir(parents=True)
    (tmp_path / "proc" / "4242" / "cgroup").write_text(f"2:cpuacct:/docker/{cid}\n")
    usage = tmp_path / "cg" / "cpuacct" / "docker" / cid / "cpuacct.usage"
    usage.parent.mkdir(parents=True)
    usage.write_text("1000000000")
    inspected: list[list[str]] = []

    def inspect(names: Sequence[str]) -> list[dict[str, Any]]:
        inspected.append(list(names))
        info = {"Name": "/vm-1", "Id": cid, "State": {"Running": True, "Pid": 4242}}
        return [{**info, "HostConfig": {"NanoCpus": 0, "CpuQuota": 0, "CpuPeriod": 0, "CpusetCpus": "0"}}]

    reader = ContainerCpu(inspect=inspect, proc=tmp_path / "proc", root=tmp_path / "cg")
    first = reader.sample(["vm-1", "vm-2"])
    assert set(first) == {"vm-1"} and first["vm-1"].usage == pytest.approx(1.0)
    assert first["vm-1"].vcpus == 1.0 and first["vm-1"].container_id == cid
    usage.write_text("3000000000")
    assert reader.sample(["vm-1"])["vm-1"].usage == pytest.approx(3.0)
    assert inspected == [["vm-1", "vm-2"]], "inspected once; a file read per sample after that"
    usage.unlink()  # the container went away (deleted, recreated)
    assert reader.sample(["vm-1"]) == {}
    assert reader.engine_reads == 0


# --------------------------------------------------------------------------- evaluation


def sample(usage: float, at: float, vcpus: float = 2.0, cid: str = "c1") -> CpuSample:
    return CpuSample(usage=usage, at=at, vcpus=vcpus, container_id=cid)


def test_utilization_is_cpu_seconds_over_elapsed_times_vcpus_averaged_over_members() -> None:
    signal = CpuSignal()
    assert signal.add({"a": sample(10.0, 100.0), "b": sample(5.0, 100.0, vcpus=1.0)}, keep=3) is None
    mean, per = signal.add({"a": sample(11.0, 101.0), "b": sample(5.25, 101.0, vcpus=1.0)}, keep=3) or (0, {})
    assert per == {"a": pytest.approx(0.5), "b": pytest.approx(0.25)}  # 1 s of 2 vCPUs; 0.25 s of 1
    assert mean == pytest.approx(0.375)
    # b recreated (a new container): no value this round; a joins alone
    found = signal.add({"a": sample(12.0, 102.0), "b": sample(0.1, 102.0, vcpus=1.0, cid="c2")}, keep=3)
    assert found is not None and found[1] == {"a": pytest.approx(0.5)}
    assert signal.means == [pytest.approx(0.375), pytest.approx(0.5)]


def test_cpu_conditions_need_every_round_beyond_to_open_and_none_to_close() -> None:
    s = MonitorSettings(cpu_high=0.6, cpu_low=0.1, cpu_rounds=2)
    assert cpu_conditions(CpuSignal(means=[0.7]), s) == {CPU_HIGH: None, CPU_LOW: None}
    assert cpu_conditions(CpuSignal(means=[0.7, 0.9]), s) == {CPU_HIGH: True, CPU_LOW: False}
    assert cpu_conditions(CpuSignal(means=[0.5, 0.9]), s) == {CPU_HIGH: None, CPU_LOW: False}
    assert cpu_conditions(CpuSignal(means=[0.05, 0.0]), s) == {CPU_HIGH: False, CPU_LOW: True}


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"cpu_high": 1.5}, "within 0..1"),
        ({"cpu_low": -0.1}, "within 0..1"),
        ({"cpu_high": 0.3, "cpu_low": 0.3}, "cpu_low"),
        ({"cpu_rounds": 0}, "cpu_rounds"),
    ],
)
def test_bad_cpu_settings_are_refused(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(FleetError, match=words):
        MonitorSettings(**kwargs)


class FakeCpu:
    """Cumulative CPU seconds per instance, advanced by the test: the reader's contract."""

    def __init__(self) -> None:
        self.usage: dict[str, float] = {}
        self.now = 0.0
        self.asked: list[list[str]] = []

    def run(self, utilization: Mapping[str, float], seconds: float = 1.0, vcpus: float = 2.0) -> None:
        self.now += seconds
        for name, u in utilization.items():
            self.usage[name] = self.usage.get(name, 0.0) + u * seconds * vcpus

    def __call__(self, names: Sequence[str]) -> dict[str, CpuSample]:
        self.asked.append(list(names))
        return {n: sample(self.usage[n], self.now) for n in names if n in self.usage}


class CpuRig(MonitorRig):
    """A Monitor over three members (one without the MIG's label), CPU read from a FakeCpu."""

    def __init__(self, settings: MonitorSettings) -> None:
        self.cpu = FakeCpu()
        self.members = [
            MonitoredInstance("local-1", "111", "RUNNING", "NONE"),
            MonitoredInstance("local-2", "222", "RUNNING", "NONE"),
            MonitoredInstance("other-1", "999", "RUNNING", "NONE"),  # a member without the label
        ]
        self.labels: dict[str, dict[str, str]] = {
            "local-1": {contract.INSTANCE_MIG_LABEL: MIG},
            "local-2": {contract.INSTANCE_MIG_LABEL: MIG, "fleet-rollout": "r1"},
            "other-1": {contract.INSTANCE_MIG_LABEL: "another-mig"},
        }
        super().__init__(
            settings,
            policies=policies(cpu_high=settings.cpu_high, cpu_low=settings.cpu_low),
            members=lambda: list(self.members),
            lb_stat=lambda: STAT,
            cpu=self.cpu,
            labels=lambda: self.labels,
        )

    def rounds(self, n: int, utilization: Mapping[str, float]) -> list[dict[str, Any]]:
        """n rounds 1 s apart, each after a second of `utilization` (instance -> share of its vCPUs)."""
        return self.run(n, before=lambda: self.cpu.run(utilization))


def test_the_monitor_scales_on_the_mean_cpu_of_the_labelled_members() -> None:
    rig = CpuRig(MonitorSettings(cpu_high=0.6, cpu_low=0.1, cpu_rounds=2, renotify=0))
    busy = {"local-1": 0.9, "local-2": 0.7, "other-1": 0.0}  # other-1 would pull the mean down
    opened = rig.rounds(3, busy)
    assert rig.cpu.asked[-1] == ["local-1", "local-2"], "selected by the fleet-mig label, not by name"
    assert [(i["condition_name"], i["state"]) for i in opened] == [("CPU above 0.6", "open")]
    out = opened[0]
    assert out["policy_user_labels"][contract.POLICY_SCALE_DIRECTION_LABEL] == "out"
    assert out["policy_user_labels"][contract.POLICY_MIG_LABEL] == MIG
    assert out["metric"]["type"] == CPU_METRIC == mon.CPU_METRIC
    assert out["resource"] == {"type": "gce_instance", "labels": {"project_id": PROJECT}}
    assert float(out["observed_value"]) == pytest.approx(0.8) and out["threshold_value"] == "0.6"
    history = rig.monitor.cpu_history()
    assert history[-1].members == {"local-1": pytest.approx(0.9), "local-2": pytest.approx(0.7)}

    quiet = rig.rounds(2, {"local-1": 0.02, "local-2": 0.04, "other-1": 0.9})
    assert [(i["condition_name"], i["state"]) for i in quiet] == [
        ("CPU above 0.6", "closed"),
        ("CPU below 0.1", "open"),
    ]
    assert float(quiet[1]["observed_value"]) == pytest.approx(0.03)

    # a member that is not RUNNING (being deleted, stopped) is not read
    rig.members[1] = MonitoredInstance("local-2", "222", "STOPPING", "DELETING")
    rig.rounds(1, {"local-1": 0.02})
    assert rig.cpu.asked[-1] == ["local-1"]


def test_the_cpu_condition_names_are_those_monitoring_apply_creates() -> None:
    config = mon.MonitoringConfig(
        fleet="local",
        project=PROJECT,
        alerts_topic=f"projects/{PROJECT}/topics/a",
        events_topic=f"projects/{PROJECT}/topics/e",
        migs=(contract.MigRef.make(PROJECT, ZONE, MIG),),
        scale_migs=(MIG,),
        scale_min=2,
        scale_max=3,
        cpu=mon.Threshold(high=0.6, low=0.1),
    )
    made = {d.key: d.message for d in mon.desired_state(config, {}) if d.kind == "alert_policy"}
    rig = CpuRig(MonitorSettings(cpu_high=0.6, cpu_low=0.1, cpu_rounds=1, renotify=0))
    sent = rig.rounds(2, {"local-1": 0.9, "local-2": 0.9}) + rig.rounds(2, {"local-1": 0.0, "local-2": 0.0})
    by_direction = {i["policy_user_labels"]["fleet-scale-direction"]: i for i in sent if i["state"] == "open"}
    for direction in ("out", "in"):
        policy = made[f"policy-scale-{direction}-{MIG}"]
        incident = by_direction[direction]
        assert incident["policy_name"] == policy.display_name
        assert incident["condition_name"] == policy.conditions[0].display_name
        assert incident["policy_user_labels"] == dict(policy.user_labels)


def test_the_scale_function_acts_on_the_monitors_cpu_incidents_unchanged() -> None:
    rig = CpuRig(MonitorSettings(cpu_high=0.6, cpu_low=0.1, cpu_rounds=1, renotify=0))
    (raw,) = rig.rounds(2, {"local-1": 0.9, "local-2": 0.9})
    incident = fn_incidents.parse_incident(json.dumps({"version": "1.2", "incident": raw}).encode())
    cfg = fn_settings.load(
        {"FLEET_MIGS": f"{PROJECT}/{ZONE}/{MIG}", "FLEET_SCALE_MIN": "1", "FLEET_SCALE_MAX": "5"}
    )
    intent = fn_policy.scale_intent(incident, cfg)
    assert isinstance(intent, fn_policy.ScaleIntent)
    assert (intent.direction, intent.minimum, intent.maximum) == ("out", 2, 3)
    assert fn_policy.choose_mig(incident, cfg.migs) == cfg.migs[0]


def test_cpu_conditions_without_a_reader_are_refused() -> None:
    with pytest.raises(FleetError, match="CPU reader"):
        Monitor(
            project=PROJECT,
            zone=ZONE,
            mig=MIG,
            backend="app",
            policies=CpuRig(MonitorSettings()).monitor.policies,
            settings=MonitorSettings(cpu_high=0.5),
            members=list,
            lb_stat=lambda: STAT,
            publish=lambda data: "1",
        )


# --------------------------------------------------------------------------- load commands


def test_load_commands_are_valid_shell_bounded_and_kill_only_their_pids() -> None:
    start, stop = start_load(2, 90), stop_load()
    for command in (start, stop):
        assert command.sudo
        assert subprocess.run(["sh", "-n", "-c", command.shell()], check=False).returncode == 0
    assert "timeout 90" in start.script and "setsid -f" in start.script and PID_FILE in start.script
    assert "pkill" not in stop.script and "killall" not in stop.script and PID_FILE in stop.script
    for bad in ((0, 10), (17, 10), (1, 0), (1, 3601), (True, 10)):
        with pytest.raises(FleetError, match="cpu load"):
            start_load(*bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the local template's label


def test_local_members_start_with_the_template_label_and_keep_what_is_set(tmp_path: Path) -> None:
    from fleet.local import template
    from fleet.local.compute_docker import _Store
    from fleet.local.config import LocalConfig

    config = LocalConfig(root=tmp_path)
    labels = template.labels(config)
    assert labels == {contract.INSTANCE_MIG_LABEL: "local-mig"}
    store = _Store(tmp_path / "state.json", config)
    assert store.labels_of("123", labels)[0] == labels, "a new member: the template's labels"
    store.set_labels("123", {**labels, "fleet-rollout": "r1"})
    assert store.labels_of("123", labels)[0] == {**labels, "fleet-rollout": "r1"}
    store.forget(set())  # the instance is gone; a recreated one (new id) starts from the template
    assert store.labels_of("456", labels)[0] == labels
