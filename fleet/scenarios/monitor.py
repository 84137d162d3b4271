"""The local fleet's alert source: what Cloud Monitoring does in the self-healing loop, on loopback.

Every `period` seconds it
- probes each MIG member's `/health` through the port the instance publishes on 127.0.0.1, like a
  per-instance uptime check (a pass is HTTP 200 within `timeout`);
- reads the load balancer's request counter (haproxy's backend `req_tot`), the load signal:
  requests per second per serving (UP) instance, averaged over the round;
- opens and closes incidents and publishes each one, in Monitoring's notification schema 1.2, to the
  alerts topic (the functions receive them as Pub/Sub CloudEvents).

Conditions (every threshold is a setting, so the local fleet can use seconds where GCP uses minutes):

- policy "instance health" (`fleet-action=autoheal`), per instance:
  "instance /health failing" opens after `fail_after` failed checks in a row;
  "instance /health still failing" opens after `escalate_after`; both close after `pass_after` passes.
- policy "scale out <mig>" (`fleet-scale-direction=out`): "LB requests per serving instance above
  `load_high`" opens when the last `load_rounds` rounds were all above, closes when none was.
- policy "scale in <mig>" (`fleet-scale-direction=in`): the same below `load_low`.
The policies' display names and user labels are the ones `fleet/alerting/policies.py` creates.

Each condition of an alert policy has incidents of its own (as in Monitoring with an OR combiner):
that is what makes autoheal's ladder go, because autoheal escalates from reset to recreate on a
*new* incident for the instance (a renotification of the same one replays the reset). A check that
cannot be attributed to a running instance has no data: while the MIG has an action on the member
(RESTARTING, RECREATING, CREATING, VERIFYING, DELETING), while it is not RUNNING, or while the LB does
not list it. No data neither counts as a failure nor resets the count. The check follows the MIG
member (by name, like the MIG's own health check), so an incident opened on an instance that was
then recreated closes when the new instance passes; its payload keeps the instance id it opened
with. Open incidents are re-sent every `renotify` seconds (Monitoring's renotify interval) while
their instance still exists, which repairs a decision that was skipped only for timing (too young,
settling, MIG busy); the functions dedupe repeats. Incidents of a member that left the MIG close.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from fleet.commands.haproxy import parse_show_stat
from fleet.errors import FleetError
from fleet.local.cpu import CpuSample
from fleet.waits import polling
from functions import fleet_contract as contract

CHECK_METRIC = "monitoring.googleapis.com/uptime_check/check_passed"
LOAD_METRIC = "custom.googleapis.com/fleet/lb_requests_per_instance"
CPU_METRIC = "compute.googleapis.com/instance/cpu/utilization"
HEALTH_PATH = "/health"
NO_ACTION = "NONE"

# condition keys
FAILING = "failing"
STILL_FAILING = "still-failing"
LOAD_HIGH = "load-high"
LOAD_LOW = "load-low"
CPU_HIGH = "cpu-high"
CPU_LOW = "cpu-low"


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class MonitorSettings:
    """How the local monitor checks and when it opens/closes incidents (seconds, counts)."""

    period: float = 1.0
    timeout: float = 1.0
    fail_after: int = 3
    escalate_after: int = 8
    pass_after: int = 2
    renotify: float = 10.0  # 0 = never re-send an open incident
    load_high: float | None = None  # requests/s per serving instance; None = no scale-out condition
    load_low: float | None = None  # None = no scale-in condition
    load_rounds: int = 3
    # mean CPU utilization (0..1 of the vCPUs) of the MIG's members, selected by their fleet-mig label;
    # None = no CPU condition. Needs a CPU reader (the local fleet's: the instances' cgroups).
    cpu_high: float | None = None
    cpu_low: float | None = None
    cpu_rounds: int = 3

    def __post_init__(self) -> None:
        where = "monitor settings"
        if not 0.1 <= self.period <= 300:
            raise FleetError(f"period {self.period!r} is not within 0.1..300 s", where=where)
        if not 0.1 <= self.timeout <= self.period * 10:
            raise FleetError(f"timeout {self.timeout!r} must be 0.1 s .. 10 periods", where=where)
        for name in ("fail_after", "escalate_after", "pass_after", "load_rounds", "cpu_rounds"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 1000:
                raise FleetError(f"{name} {value!r} is not a count within 1..1000", where=where)
        if self.escalate_after <= self.fail_after:
            raise FleetError(
                f"escalate_after ({self.escalate_after}) must exceed fail_after ({self.fail_after})",
                where=where,
                hint="the still-failing condition is the second rung of the heal ladder",
            )
        if self.renotify < 0:
            raise FleetError(f"renotify {self.renotify!r} is negative", where=where)
        for name in ("load_high", "load_low"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise FleetError(f"{name} {value!r} is not a rate >= 0", where=where)
        if self.load_high is not None and self.load_low is not None and self.load_low >= self.load_high:
            raise FleetError(
                f"load_low ({self.load_low:g}) must be below load_high ({self.load_high:g})", where=where
            )
        for name in ("cpu_high", "cpu_low"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise FleetError(
                    f"{name} {value!r} is not a utilization within 0..1",
                    where=where,
                    hint="a fraction of the instance's vCPUs, as Compute's instance/cpu/utilization",
                )
        if self.cpu_high is not None and self.cpu_low is not None and self.cpu_low >= self.cpu_high:
            raise FleetError(
                f"cpu_low ({self.cpu_low:g}) must be below cpu_high ({self.cpu_high:g})", where=where
            )

    @property
    def cpu(self) -> bool:
        return self.cpu_high is not None or self.cpu_low is not None


# --------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class PolicyRef:
    """One alert policy as an incident names it: display name, resource name and user labels."""

    key: str  # the fleet-object label of fleet/alerting/policies.py
    name: str  # projects/P/alertPolicies/ID
    display_name: str
    user_labels: Mapping[str, str]

    def condition_name(self, condition: str) -> str:
        return f"{self.name}/conditions/{_number(self.key, condition)}"


@dataclass(frozen=True)
class Policies:
    heal: PolicyRef
    scale_out: PolicyRef | None = None
    scale_in: PolicyRef | None = None


def _number(*parts: str) -> int:
    """A Monitoring-like numeric id, stable for the same parts."""
    return int(hashlib.sha256("/".join(parts).encode()).hexdigest()[:15], 16)


def local_policies(
    *,
    fleet: str,
    project: str,
    zone: str,
    mig: str,
    alerts_topic: str,
    events_topic: str,
    members: Sequence[tuple[str, str]],
    scale_min: int,
    scale_max: int,
    scale_step: int = 1,
    cpu_high: float | None = None,
    cpu_low: float | None = None,
    instance_health: str = "uptime",
) -> Policies:
    """The instance-health and scaling policies exactly as `fab monitoring.apply` would create them
    for this fleet (display names and user labels: what the functions read)."""
    from fleet.alerting import policies as monitoring

    checks = tuple(
        monitoring.InstanceCheck(
            host=name, project=project, zone=zone, instance_id=iid, port=80, path="/health"
        )
        for name, iid in (members or [("placeholder", "0")])
    )
    metric = instance_health == "agent-metric"  # the agents' health metric instead of uptime checks
    config = monitoring.MonitoringConfig(
        fleet=fleet,
        project=project,
        alerts_topic=alerts_topic,
        events_topic=events_topic,
        instance_checks=() if metric else checks,
        instance_health="agent-metric" if metric else "uptime",
        migs=(contract.MigRef.make(project, zone, mig),),
        scale_migs=(mig,),
        scale_step=scale_step,
        scale_min=scale_min,
        scale_max=scale_max,
        # The scaling policies exist once any scale signal is configured; their names and labels do
        # not depend on which. Locally the monitor evaluates the CPU condition (the instances' cgroups)
        # and/or its load signal (the LB's request rate) for them.
        cpu=monitoring.Threshold(
            high=0.8 if cpu_high is None else cpu_high, low=0.2 if cpu_low is None else cpu_low
        ),
    )
    found: dict[str, PolicyRef] = {}
    for desired in monitoring.desired_state(config, {}):
        if desired.kind != "alert_policy":
            continue
        name = f"projects/{project}/alertPolicies/{_number(project, desired.key)}"
        labels = dict(desired.message.user_labels)
        found[desired.key] = PolicyRef(desired.key, name, desired.display_name, labels)
    heal = found.get("policy-instance-health")
    if heal is None:
        raise FleetError("fleet/alerting/policies.py made no instance-health policy", where="local monitor")
    return Policies(
        heal=heal,
        scale_out=found.get(monitoring.object_key(f"policy-scale-out-{mig}")),
        scale_in=found.get(monitoring.object_key(f"policy-scale-in-{mig}")),
    )


# --------------------------------------------------------------------------- incidents (pure)


@dataclass
class Incident:
    """One open (or just closed) incident of one condition."""

    incident_id: str
    policy: PolicyRef
    condition: str  # condition key
    condition_display: str
    subject: str  # member name, or the MIG for load conditions
    resource_type: str
    resource_labels: dict[str, str]
    metric_type: str
    metric_labels: dict[str, str]
    threshold: str
    observed: str
    summary: str
    started_at: float
    ended_at: float | None = None
    last_sent: float = 0.0
    sent: int = 0

    @property
    def state(self) -> str:
        return "open" if self.ended_at is None else "closed"


def new_incident_id() -> str:
    """Opaque like Monitoring's ("0.<random>")."""
    return f"0.{secrets.token_hex(6)}"


def incident_doc(incident: Incident, project: str) -> dict[str, Any]:
    """The notification Monitoring publishes to a pubsub channel (schema 1.2)."""
    name = incident.resource_labels.get("instance_id") or incident.subject
    return {
        "version": "1.2",
        "incident": {
            "incident_id": incident.incident_id,
            "scoping_project_id": project,
            "url": f"https://console.cloud.google.com/monitoring/alerting/incidents/{incident.incident_id}"
            f"?project={project}",
            "started_at": int(incident.started_at),
            "ended_at": None if incident.ended_at is None else int(incident.ended_at),
            "state": incident.state,
            "resource_id": name,
            "resource_name": f"{project} {incident.subject}",
            "resource_display_name": incident.subject,
            "resource": {"type": incident.resource_type, "labels": dict(incident.resource_labels)},
            "metric": {
                "type": incident.metric_type,
                "displayName": incident.condition_display,
                "labels": dict(incident.metric_labels),
            },
            "metadata": {"system_labels": {}, "user_labels": {}},
            "policy_name": incident.policy.display_name,
            "policy_user_labels": dict(incident.policy.user_labels),
            "condition": {
                "name": incident.policy.condition_name(incident.condition),
                "displayName": incident.condition_display,
            },
            "condition_name": incident.condition_display,
            "threshold_value": incident.threshold,
            "observed_value": incident.observed,
            "summary": incident.summary,
        },
    }


def encode(incident: Incident, project: str) -> bytes:
    return json.dumps(incident_doc(incident, project), separators=(",", ":")).encode()


# --------------------------------------------------------------------------- evaluation (pure)


@dataclass
class HealthCount:
    """Consecutive results of one member's check; None results (no data) change nothing."""

    fails: int = 0
    passes: int = 0

    def add(self, passed: bool | None) -> None:
        if passed is None:
            return
        if passed:
            self.passes, self.fails = self.passes + 1, 0
        else:
            self.fails, self.passes = self.fails + 1, 0


def health_conditions(count: HealthCount, settings: MonitorSettings) -> dict[str, bool | None]:
    """Per heal condition: True = met (open), False = cleared (close), None = no change."""
    if count.passes >= settings.pass_after:
        return {FAILING: False, STILL_FAILING: False}
    return {
        FAILING: True if count.fails >= settings.fail_after else None,
        STILL_FAILING: True if count.fails >= settings.escalate_after else None,
    }


@dataclass
class LoadSignal:
    """Requests per serving instance per round, from a monotonic request counter."""

    rates: list[float] = field(default_factory=list)
    last_total: int | None = None
    last_at: float = 0.0

    def add(self, total: int, serving: int, now: float, keep: int) -> float | None:
        """Record one counter reading; returns the round's rate (None for the first or a reset)."""
        previous, since = self.last_total, self.last_at
        self.last_total, self.last_at = total, now
        if previous is None or total < previous or now <= since:
            return None  # first reading, or haproxy restarted (counters start from 0)
        rate = (total - previous) / (now - since) / max(1, serving)
        self.rates = [*self.rates, rate][-keep:]
        return rate


def load_conditions(signal: LoadSignal, settings: MonitorSettings) -> dict[str, bool | None]:
    """Scale conditions: met when every one of the last `load_rounds` rates is beyond the threshold,
    cleared when none of them is."""
    return _window(
        signal.rates, settings.load_rounds, (LOAD_HIGH, settings.load_high), (LOAD_LOW, settings.load_low)
    )


@dataclass
class CpuSignal:
    """Mean CPU utilization of the selected members per round, from cumulative CPU-seconds counters.

    A member's utilization over a round is its CPU seconds used / (seconds elapsed x its vCPUs), the
    definition of compute.googleapis.com/instance/cpu/utilization; the round's value is their mean
    (the policy's REDUCE_MEAN across members). A member without a previous reading of the same VM
    (new, recreated: another container id) has no value this round."""

    last: dict[str, CpuSample] = field(default_factory=dict)
    means: list[float] = field(default_factory=list)

    def add(self, samples: Mapping[str, CpuSample], keep: int) -> tuple[float, dict[str, float]] | None:
        """Record one round's readings; (mean, per member) or None when no member has a value yet."""
        per: dict[str, float] = {}
        for name, now in samples.items():
            before = self.last.get(name)
            if (
                before is None
                or before.container_id != now.container_id
                or now.at <= before.at
                or now.usage < before.usage
                or now.vcpus <= 0
            ):
                continue
            per[name] = (now.usage - before.usage) / ((now.at - before.at) * now.vcpus)
        self.last = dict(samples)  # members not read this round (gone, busy) start over
        if not per:
            return None
        mean = sum(per.values()) / len(per)
        self.means = [*self.means, mean][-keep:]
        return mean, per


def _window(
    values: Sequence[float], rounds: int, high: tuple[str, float | None], low: tuple[str, float | None]
) -> dict[str, bool | None]:
    """Met when each of the last `rounds` values is beyond the threshold, cleared when none is."""
    out: dict[str, bool | None] = {}
    window = list(values[-rounds:])
    full = len(window) == rounds
    for (key, threshold), beyond in (
        (high, lambda r, t: r > t),
        (low, lambda r, t: r < t),
    ):
        if threshold is None or not full:
            out[key] = None
        elif all(beyond(r, threshold) for r in window):
            out[key] = True
        elif not any(beyond(r, threshold) for r in window):
            out[key] = False
        else:
            out[key] = None
    return out


def cpu_conditions(signal: CpuSignal, settings: MonitorSettings) -> dict[str, bool | None]:
    """CPU scale conditions over the last `cpu_rounds` means, like the load conditions."""
    return _window(
        signal.means, settings.cpu_rounds, (CPU_HIGH, settings.cpu_high), (CPU_LOW, settings.cpu_low)
    )


def parse_backend(text: str, backend: str) -> tuple[int, dict[str, tuple[str, str]]]:
    """haproxy `show stat` -> (the backend's total HTTP requests, {server: (status, address)})."""
    stat = parse_show_stat(text, backend)
    return stat.requests, {name: (s.status, s.address) for name, s in stat.servers.items()}


# --------------------------------------------------------------------------- I/O


def probe(address: str, timeout: float, path: str = HEALTH_PATH) -> bool:
    """GET http://ADDRESS/health; passed = 200 within the timeout (loopback addresses only)."""
    host, _, port = address.rpartition(":")
    if host not in ("127.0.0.1", "localhost") or not port.isdigit():
        raise FleetError(f"refusing to probe {address!r}", where="local monitor", hint="loopback only")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "fleet-local-uptime-check", "Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return resp.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


@dataclass(frozen=True)
class MonitoredInstance:
    """A MIG member as the monitor needs it (from listManagedInstances)."""

    name: str
    instance_id: str
    status: str
    action: str


@dataclass(frozen=True)
class Event:
    """One line of the monitor's timeline (incidents, member actions, LB states, load)."""

    at: float
    kind: str  # incident | action | lb | load | error
    subject: str
    text: str
    incident_id: str = ""
    state: str = ""
    condition: str = ""


class HealthSource(Protocol):
    """Where instance health comes from instead of probing each member's published port
    (fleet/scenarios/metrichealth.py: the agents' health metric)."""

    metric_type: str
    display: Mapping[str, str]  # condition key -> the condition's display name

    def results(
        self, members: Sequence[MonitoredInstance], servers: Mapping[str, tuple[str, str]]
    ) -> dict[str, bool | None]: ...

    def summary(self, member: str, fails: int) -> str: ...


Publish = Callable[[bytes], str]
Members = Callable[[], list[MonitoredInstance]]
LbStat = Callable[[], str]
CpuReader = Callable[[Sequence[str]], Mapping[str, CpuSample]]  # instance names -> counters
Labels = Callable[[], Mapping[str, Mapping[str, str]]]  # instance name -> its labels


@dataclass(frozen=True)
class CpuRound:
    """One round's CPU evaluation: the mean over the selected members and each member's value."""

    at: float
    mean: float
    members: dict[str, float]


class Monitor:
    """The evaluation loop in a thread; `timeline()` tells what it saw and did."""

    def __init__(
        self,
        *,
        project: str,
        zone: str,
        mig: str,
        backend: str,
        policies: Policies,
        settings: MonitorSettings,
        members: Members,
        lb_stat: LbStat,
        publish: Publish,
        clock: Callable[[], float] = time.time,
        cpu: CpuReader | None = None,
        labels: Labels | None = None,
        health: HealthSource | None = None,
    ) -> None:
        if settings.cpu and (cpu is None or labels is None):
            raise FleetError(
                "CPU conditions need a CPU reader and the instances' labels",
                where="local monitor",
                hint="pass cpu= and labels= (the alert path does: cgroups and the Compute endpoint)",
            )
        self.project, self.zone, self.mig, self.backend = project, zone, mig, backend
        self.policies = policies
        self.settings = settings
        self._members = members
        self._lb_stat = lb_stat
        self._publish = publish
        self._clock = clock
        self._health = health  # None: probe each member's /health (a per-instance uptime check)
        self._lock = threading.Condition()
        self._counts: dict[str, HealthCount] = {}
        self._ids: dict[str, str] = {}  # member -> instance id last seen
        self._actions: dict[str, str] = {}
        self._lb: dict[str, str] = {}
        self._load = LoadSignal()
        self._cpu_reader, self._labels = cpu, labels
        self._cpu = CpuSignal()
        self._cpu_rounds: list[CpuRound] = []
        self._open: dict[tuple[str, str], Incident] = {}  # (subject, condition) -> incident
        self._incidents: list[Incident] = []
        self._events: list[Event] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="uptime-check")
        self.rounds = 0

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Monitor:
        self._thread = threading.Thread(target=self._loop, name="local-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.period + self.settings.timeout * 2 + 10)
            self._thread = None
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.round()
            except Exception as exc:  # one bad round (endpoint restarting) must not end the monitor
                self._note(Event(self._clock(), "error", self.mig, f"round failed: {exc}"))
            self._stop.wait(max(0.0, self.settings.period - (time.monotonic() - started)))

    # --- reading back --------------------------------------------------------------------------

    @property
    def health(self) -> HealthSource | None:
        """Where member health comes from (None: the monitor probes each member itself)."""
        return self._health

    def timeline(self, kind: str | None = None) -> list[Event]:
        with self._lock:
            return [e for e in self._events if kind is None or e.kind == kind]

    def incidents(self) -> list[Incident]:
        with self._lock:
            return list(self._incidents)

    def cpu_history(self) -> list[CpuRound]:
        """Every CPU evaluation so far (mean and per member), oldest first."""
        with self._lock:
            return list(self._cpu_rounds)

    def wait(self, predicate: Callable[[Monitor], bool], timeout: float) -> bool:
        """Block until `predicate(self)` holds (re-checked on every new event) or the timeout."""
        with self._lock:
            for _ in polling(timeout, 1.0, sleep=self._lock.wait):
                if predicate(self):
                    return True
        return False

    def _note(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)
            self._lock.notify_all()

    # --- one evaluation ------------------------------------------------------------------------

    def round(self) -> None:
        now = self._clock()
        members = self._members()
        total, servers = parse_backend(self._lb_stat(), self.backend)
        self._track(members, servers, now)

        def check(member: MonitoredInstance) -> bool | None:
            _status, address = servers.get(member.name, ("", ""))
            if member.action != NO_ACTION or member.status != "RUNNING" or not address:
                return None  # no data: the instance is not there to be checked
            return probe(address, self.settings.timeout)

        if self._health is not None:
            results = self._health.results(members, servers)
        else:
            results = dict(zip([m.name for m in members], self._pool.map(check, members), strict=True))
        for member in members:
            count = self._counts.setdefault(member.name, HealthCount())
            count.add(results[member.name])
            for condition, met in health_conditions(count, self.settings).items():
                self._apply(member.name, condition, met, now, member=member, count=count)
        for gone in [n for n in self._counts if n not in {m.name for m in members}]:
            del self._counts[gone]
            for condition in (FAILING, STILL_FAILING):
                self._apply(gone, condition, False, now, reason="left the managed instance group")

        serving = sum(1 for status, _ in servers.values() if status == "UP")
        rate = self._load.add(total, serving, now, keep=max(self.settings.load_rounds, 1))
        if rate is not None and (self.settings.load_high is not None or self.settings.load_low is not None):
            changes = load_conditions(self._load, self.settings).items()
            for condition, met in sorted(changes, key=lambda c: c[1] is True):  # closes first
                self._apply(self.mig, condition, met, now, rate=rate, serving=serving)
        if self.settings.cpu:
            self._cpu_round(members, now)
        self._renotify(members, now)
        self.rounds += 1

    def selected(self, members: Sequence[MonitoredInstance]) -> list[str]:
        """The members the CPU condition averages over: RUNNING instances whose `fleet-mig` label
        names this MIG (what the policy's metadata.user_labels filter selects)."""
        assert self._labels is not None
        labels = self._labels()
        return [
            m.name
            for m in members
            if m.status == "RUNNING" and labels.get(m.name, {}).get(contract.INSTANCE_MIG_LABEL) == self.mig
        ]

    def _cpu_round(self, members: Sequence[MonitoredInstance], now: float) -> None:
        assert self._cpu_reader is not None
        names = self.selected(members)
        found = self._cpu.add(self._cpu_reader(names) if names else {}, keep=self.settings.cpu_rounds)
        if found is None:
            return
        mean, per = found
        with self._lock:
            self._cpu_rounds.append(CpuRound(now, mean, per))
        for condition, met in sorted(
            cpu_conditions(self._cpu, self.settings).items(), key=lambda c: c[1] is True
        ):
            self._apply(self.mig, condition, met, now, cpu=mean, serving=len(per))

    def _track(
        self, members: list[MonitoredInstance], servers: Mapping[str, tuple[str, str]], now: float
    ) -> None:
        """Timeline entries for member actions and LB states that changed since the last round."""
        for member in members:
            if self._actions.get(member.name, NO_ACTION) != member.action:
                self._note(Event(now, "action", member.name, member.action))
            self._actions[member.name] = member.action
            if member.instance_id:
                self._ids[member.name] = member.instance_id
        for name in [n for n in self._actions if n not in {m.name for m in members}]:
            del self._actions[name]
            self._note(Event(now, "action", name, "GONE"))
        for name, (status, _) in servers.items():
            if self._lb.get(name) != status:
                self._note(Event(now, "lb", name, status))
            self._lb[name] = status
        for name in [n for n in self._lb if n not in servers]:
            del self._lb[name]
            self._note(Event(now, "lb", name, "REMOVED"))

    def _apply(
        self,
        subject: str,
        condition: str,
        met: bool | None,
        now: float,
        *,
        member: MonitoredInstance | None = None,
        count: HealthCount | None = None,
        rate: float | None = None,
        serving: int = 0,
        reason: str = "",
        cpu: float | None = None,
    ) -> None:
        key = (subject, condition)
        current = self._open.get(key)
        if met is True and current is None:
            incident = self._new(subject, condition, now, member, count, rate, serving, cpu)
            if incident is None:
                return
            self._open[key] = incident
            with self._lock:
                self._incidents.append(incident)
            self._send(incident, now)
        elif met is False and current is not None:
            current.ended_at = now
            if count is not None:
                current.observed = "0"
                current.summary = f"{subject} {HEALTH_PATH} passed {count.passes} checks in a row."
            elif cpu is not None:
                current.observed = f"{cpu:.3f}"
                current.summary = (
                    f"Mean CPU utilization of {subject}'s members is back within bounds ({cpu:.1%})."
                )
            elif rate is not None:
                current.observed = f"{rate:.3f}"
                current.summary = (
                    f"Load on {subject} is back within bounds ({rate:.1f} requests/s per instance)."
                )
            else:
                current.summary = f"{subject} {reason}." if reason else current.summary
            del self._open[key]
            self._send(current, now)

    def _new(
        self,
        subject: str,
        condition: str,
        now: float,
        member: MonitoredInstance | None,
        count: HealthCount | None,
        rate: float | None,
        serving: int,
        cpu: float | None = None,
    ) -> Incident | None:
        s = self.settings
        if condition in (CPU_HIGH, CPU_LOW):
            return self._new_cpu(subject, condition, now, cpu, serving)
        if condition in (FAILING, STILL_FAILING):
            assert member is not None and count is not None
            after = s.fail_after if condition == FAILING else s.escalate_after
            display = "instance /health failing" if condition == FAILING else "instance /health still failing"
            metric_type, summary = (
                CHECK_METRIC,
                (
                    f"{subject} {HEALTH_PATH} failed {count.fails} checks in a row "
                    f"({s.period:g} s apart, timeout {s.timeout:g} s)."
                ),
            )
            if self._health is not None:
                display = self._health.display.get(condition, display)
                metric_type, summary = self._health.metric_type, self._health.summary(subject, count.fails)
            return Incident(
                incident_id=new_incident_id(),
                policy=self.policies.heal,
                condition=condition,
                condition_display=display,
                subject=subject,
                resource_type="gce_instance",
                resource_labels={
                    "project_id": self.project,
                    "zone": self.zone,
                    "instance_id": member.instance_id or self._ids.get(subject, ""),
                },
                metric_type=metric_type,
                metric_labels={"instance_name": subject, "check_id": f"check-instance-{subject}"},
                threshold=str(after),
                observed=str(count.fails),
                summary=summary,
                started_at=now,
            )
        policy = self.policies.scale_out if condition == LOAD_HIGH else self.policies.scale_in
        if policy is None or rate is None:
            return None
        above = condition == LOAD_HIGH
        threshold = s.load_high if above else s.load_low
        assert threshold is not None
        word = "above" if above else "below"
        return Incident(
            incident_id=new_incident_id(),
            policy=policy,
            condition=condition,
            condition_display=f"LB requests per serving instance {word} {threshold:g}/s",
            subject=subject,
            resource_type="gce_instance_group",
            resource_labels={
                "project_id": self.project,
                "location": self.zone,
                "instance_group_name": self.mig,
            },
            metric_type=LOAD_METRIC,
            metric_labels={"instance_group_name": self.mig},
            threshold=f"{threshold:g}",
            observed=f"{rate:.3f}",
            summary=f"{rate:.1f} requests/s per serving instance ({serving} serving) through the load "
            f"balancer, {word} {threshold:g} for {s.load_rounds} checks.",
            started_at=now,
        )

    def _new_cpu(
        self, subject: str, condition: str, now: float, cpu: float | None, members: int
    ) -> Incident | None:
        """An incident of the CPU condition `monitoring.apply` creates: mean utilization across the
        MIG's members with no group-by, so (as in Monitoring) the resource keeps only the project."""
        from fleet.alerting.policies import cpu_condition_name

        above = condition == CPU_HIGH
        policy = self.policies.scale_out if above else self.policies.scale_in
        threshold = self.settings.cpu_high if above else self.settings.cpu_low
        if policy is None or cpu is None or threshold is None:
            return None
        word = "above" if above else "below"
        return Incident(
            incident_id=new_incident_id(),
            policy=policy,
            condition=condition,
            condition_display=cpu_condition_name(above, threshold),
            subject=subject,
            resource_type="gce_instance",
            resource_labels={"project_id": self.project},
            metric_type=CPU_METRIC,
            metric_labels={},
            threshold=f"{threshold:g}",
            observed=f"{cpu:.3f}",
            summary=f"Mean CPU utilization of the {members} members of {subject} (label "
            f"{contract.INSTANCE_MIG_LABEL}={self.mig}) is {cpu:.1%}, {word} {threshold:.0%} for "
            f"{self.settings.cpu_rounds} checks.",
            started_at=now,
        )

    def _renotify(self, members: list[MonitoredInstance], now: float) -> None:
        if not self.settings.renotify:
            return
        live = {m.instance_id for m in members if m.instance_id}
        for incident in list(self._open.values()):
            iid = incident.resource_labels.get("instance_id")
            if iid and iid not in live:
                continue  # that VM is gone (recreated): its incident waits for the member to pass
            if now - incident.last_sent >= self.settings.renotify:
                self._send(incident, now, again=True)

    def _send(self, incident: Incident, now: float, again: bool = False) -> None:
        incident.last_sent = now
        incident.sent += 1
        problem = ""
        try:
            self._publish(encode(incident, self.project))
        except Exception as exc:  # Pub/Sub unreachable: an open incident is re-sent next round
            problem = f" (publish failed: {exc})"
            incident.last_sent = now - self.settings.renotify
        verb = "re-sent" if again else incident.state.upper()
        self._note(
            Event(
                now,
                "incident",
                incident.subject,
                f"{verb} {incident.policy.display_name} / {incident.condition_display}: "
                f"{incident.summary}{problem}",
                incident_id=incident.incident_id,
                state=("renotify" if again else incident.state),
                condition=incident.condition,
            )
        )


def members_from_compute(compute: Any, ref: Any) -> Members:
    """Members from the Compute API (the real client): listManagedInstances only, one call a round."""

    def read() -> list[MonitoredInstance]:
        out = []
        for mi in compute.managed_instances(ref):
            name = mi.instance.rsplit("/", 1)[-1]
            out.append(
                MonitoredInstance(
                    name=name,
                    instance_id=str(mi.id or ""),
                    status=mi.instance_status or "",
                    action=mi.current_action or NO_ACTION,
                )
            )
        return out

    return read
