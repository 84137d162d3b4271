"""Self-healing scenarios on a local fleet whose alert path runs: break an instance and watch it heal;
load the fleet and watch it scale out, then in. The end-to-end test, the benchmark and
`python -m fleet.scenarios.demo heal` run these and read the report (facts and timings) each returns.

The break: the instance's api container is stopped and told not to come back (`docker update
--restart=no`, then `docker stop`). nginx keeps answering, with 502 on /health. A reset (a reboot
of the instance, same disk) brings nginx and the rest back but not the api, so the break survives
it; a recreate replaces the disk and the startup script deploys the fleet's current release. That
is the case the heal ladder exists for: reset first, then recreate.
"""

from __future__ import annotations

import json
import shlex
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fleet.commands.cpuload import start_load, stop_load
from fleet.errors import FleetError
from fleet.scenarios.loadgen import LoadGen, LoadReport
from fleet.scenarios.monitor import (
    CPU_HIGH,
    CPU_LOW,
    FAILING,
    LOAD_HIGH,
    LOAD_LOW,
    STILL_FAILING,
    Event,
    Incident,
    Monitor,
)
from fleet.waits import Deadline, polling

if TYPE_CHECKING:
    from fleet.commands.haproxy import ServerState
    from fleet.local.instances import LocalFleet
    from fleet.scenarios.alertpath import AlertPath, Line

COMPOSE_PROJECT = "dify"
APP_DIR = "/opt/fleet/dify"


class ScenarioError(FleetError):
    """A scenario did not reach its expected end state in time."""


DISK_FAULT = f"{APP_DIR}/volumes/app/storage/.standin-disk-fault"  # images/standin/standin.py


def break_api_script(project: str = COMPOSE_PROJECT, disk_fault: str = DISK_FAULT) -> str:
    """Shell run inside the instance: stop the api container and leave a fault on the VM's disk (the
    api stand-in answers 503 while it is there). A reboot runs the agent, which starts api again, but
    the disk is the same: only a recreate (a new disk) heals it, as with corrupted data on a real VM."""
    filters = (
        f"--filter label=com.docker.compose.project={shlex.quote(project)} "
        "--filter label=com.docker.compose.service=api"
    )
    return (
        f"ids=$(docker ps -q {filters}); "
        'if [ -z "$ids" ]; then echo "no running api container" >&2; exit 3; fi; '
        f"touch {shlex.quote(disk_fault)} && "
        "docker update --restart=no $ids >/dev/null && docker stop -t 2 $ids >/dev/null"
    )


def break_api(fleet: LocalFleet, name: str) -> None:
    fleet.exec(name, ["sh", "-c", break_api_script()], timeout=60)


def current_release(fleet: LocalFleet, name: str) -> str:
    """The release id the instance's `current` points to."""
    proc = fleet.exec(name, ["readlink", f"{APP_DIR}/current"], check=False, timeout=30)
    return proc.stdout.strip().rsplit("/", 1)[-1]


def health(address: str, timeout: float = 2.0) -> tuple[int, str]:
    """(status, version) of GET /health at a loopback address; (0, '') when nothing answers."""
    host, _, port = address.rpartition(":")
    if host != "127.0.0.1" or not port.isdigit():
        raise FleetError(f"refusing to probe {address!r}", where="selfheal", hint="loopback only")
    try:
        with urllib.request.urlopen(f"http://{address}/health", timeout=timeout) as resp:
            body = json.loads(resp.read() or b"{}")
            return int(resp.status), str(body.get("version", ""))
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code), ""
    except (OSError, ValueError):
        return 0, ""


def _wait(what: str, check: Callable[[], bool], timeout: float, path: AlertPath, emit: Emit) -> float:
    """Poll `check` (feeding the timeline to `emit`) until it holds; returns the time it did."""
    for _ in polling(timeout, 0.25):
        for line in path.feed():
            emit(line)
        if check():
            return time.time()
    raise ScenarioError(
        f"{what}: not reached within {timeout:.0f} s\n{_diagnosis(path)}",
        where=f"local fleet {path.config.name}",
        hint=f"function logs: {path.workdir}",
    )


def _diagnosis(path: AlertPath) -> str:
    """What a timed-out wait shows: the last monitor events that are not re-notifications (an open
    incident is re-sent every few seconds and would fill the tail), each member's last health
    judgement, and the LB's view of every member."""
    monitor = _monitor(path)
    events = [e for e in monitor.timeline() if e.state != "renotify"][-15:]
    lines = ["last monitor events (re-sent notifications left out):"]
    lines += [f"  {e.kind} {e.subject}: {e.text}" for e in events]
    why = getattr(monitor.health, "why", None) or {}
    lines += [f"health of {name}: {text}" for name, text in sorted(why.items())]
    try:
        lines += [f"LB {name}: {state.status}" for name, state in sorted(_lb_servers(path).items())]
    except Exception as exc:  # a diagnosis must not hide the timeout it explains
        lines.append(f"LB: not read ({exc})")
    return "\n".join(lines)


Emit = Callable[["Line"], None]


def _quiet(_line: Line) -> None:
    return None


def _monitor(path: AlertPath) -> Monitor:
    if path.monitor is None:
        raise FleetError("the alert path is not started", where="selfheal")
    return path.monitor


def _events(path: AlertPath, kind: str, subject: str, since: float) -> list[Event]:
    return [e for e in _monitor(path).timeline(kind) if e.subject == subject and e.at >= since]


def _incidents(path: AlertPath, subject: str, since: float) -> list[Incident]:
    return [i for i in _monitor(path).incidents() if i.subject == subject and i.started_at >= since]


def _notified(path: AlertPath, incident_id: str, state: str) -> bool:
    for message in path.notifications():
        data = message.body.get("data", {}) if isinstance(message.body, dict) else {}
        if data.get("incident_id") == incident_id and data.get("state") == state:
            return True
    return False


def _lb_servers(path: AlertPath) -> dict[str, ServerState]:
    """The local LB's members: name -> its state (status, address)."""
    from fleet.local.lb import LoadBalancer

    return LoadBalancer(path.config).servers()


def _lb_status(path: AlertPath, name: str) -> str:
    state = _lb_servers(path).get(name)
    return state.status if state else ""


def _address(path: AlertPath, name: str) -> str:
    state = _lb_servers(path).get(name)
    return state.address if state else ""


def wait_stable(path: AlertPath, timeout: float = 300.0, emit: Emit = _quiet) -> None:
    """Every member running without an action and UP in the LB, no incident of the heal policy open."""
    compute, ref = path.compute, path.mig_ref

    def stable() -> bool:
        members = compute.managed_instances(ref)
        if not members or any((m.current_action or "NONE") != "NONE" for m in members):
            return False
        names = [m.instance.rsplit("/", 1)[-1] for m in members]
        if any(_lb_status(path, n) != "UP" for n in names):
            return False
        heal = _monitor(path).policies.heal.key
        return not any(i.ended_at is None and i.policy.key == heal for i in _monitor(path).incidents())

    _wait("fleet stable (no MIG action, every member UP, no heal incident open)", stable, timeout, path, emit)


# --------------------------------------------------------------------------- heal


@dataclass
class HealReport:
    """What happened to one broken instance, as the monitor, the functions and the sink saw it."""

    instance: str
    old_id: str
    new_id: str = ""
    broken_at: float = 0.0
    incidents: list[Incident] = field(default_factory=list)
    actions: list[tuple[float, str]] = field(default_factory=list)  # MIG currentAction changes
    decisions: list[tuple[str, str]] = field(default_factory=list)  # autoheal acts: (decision, reason)
    lb: list[tuple[float, str]] = field(default_factory=list)
    healthy_at: float = 0.0  # LB UP again after the recreate
    closed_at: float = 0.0
    notified_at: float = 0.0  # every open and closed notification posted
    version: str = ""  # what the new instance's /health reports
    release: str = ""  # the release id its `current` points to
    release_before: str = ""  # and the broken instance's, before the break

    def first(self, action: str) -> float | None:
        return next((at for at, a in self.actions if a == action), None)

    def opened(self, condition: str) -> float | None:
        return next((i.started_at for i in self.incidents if i.condition == condition), None)

    def timings(self) -> list[tuple[str, float | None]]:
        """Seconds from the break to each milestone (None: not seen)."""

        def since(at: float | None) -> float | None:
            return None if at is None else at - self.broken_at

        return [
            ("incident opened (instance /health failing)", since(self.opened(FAILING))),
            ("reset started", since(self.first("RESTARTING"))),
            ("second incident (still failing)", since(self.opened(STILL_FAILING))),
            ("recreate started", since(self.first("RECREATING"))),
            ("new instance provisioning (startup script)", since(self.first("VERIFYING"))),
            ("healthy: startup done, UP in the load balancer", since(self.healthy_at)),
            ("incidents closed", since(self.closed_at)),
            ("notifications posted (open and closed)", since(self.notified_at)),
        ]


def run_heal(
    path: AlertPath, fleet: LocalFleet, name: str, timeout: float = 420.0, emit: Emit = _quiet
) -> HealReport:
    """Break `name`'s api and wait for the whole loop: incidents, reset, recreate, healthy, closed,
    notified. Raises ScenarioError with the monitor's last events if a step does not come."""
    members = {m.instance.rsplit("/", 1)[-1]: m for m in path.compute.managed_instances(path.mig_ref)}
    if name not in members:
        raise FleetError(f"{name} is not a member of {path.mig_ref}", where="selfheal")
    report = HealReport(instance=name, old_id=str(members[name].id))
    report.release_before = current_release(fleet, name)
    deadline = Deadline(timeout)
    left = lambda: max(1.0, deadline.left())  # noqa: E731

    report.broken_at = time.time()
    break_api(fleet, name)
    since = report.broken_at

    def recreated() -> bool:
        actions = [e.text for e in _events(path, "action", name, since)]
        return "RECREATING" in actions and actions[-1] == "NONE"

    _wait(f"{name} reset and then recreated", recreated, left(), path, emit)

    def healthy() -> bool:
        return _lb_status(path, name) == "UP"

    report.healthy_at = _wait(f"{name} UP in the load balancer", healthy, left(), path, emit)

    def closed() -> bool:
        incidents = _incidents(path, name, since)
        return len(incidents) >= 2 and all(i.ended_at is not None for i in incidents)

    _wait(f"{name}'s incidents closed", closed, left(), path, emit)
    report.incidents = _incidents(path, name, since)
    report.closed_at = max(i.ended_at or 0.0 for i in report.incidents)

    def notified() -> bool:
        return all(
            _notified(path, i.incident_id, state) for i in report.incidents for state in ("open", "closed")
        )

    report.notified_at = _wait("open and closed notifications posted", notified, left(), path, emit)
    report.actions = [(e.at, e.text) for e in _events(path, "action", name, since)]
    report.lb = [(e.at, e.text) for e in _events(path, "lb", name, since)]
    ids = {i.incident_id for i in report.incidents}
    report.decisions = [
        (str(r["decision"]), str(r["reason"]))
        for r in path.decisions("autoheal")
        if r.get("incident_id") in ids and r.get("decision") != "none" and r.get("reason") != "replay"
    ]
    now = {m.instance.rsplit("/", 1)[-1]: m for m in path.compute.managed_instances(path.mig_ref)}
    report.new_id = str(now[name].id) if name in now else ""
    _status, report.version = health(_address(path, name))
    report.release = current_release(fleet, name)
    return report


# --------------------------------------------------------------------------- scale


SIGNALS = ("cpu", "requests")


@dataclass
class ScaleReport:
    """Scale-out under load, then scale-in under a light load that must see no failed request."""

    signal: str = "requests"  # what drove it: cpu (busy loops in the members) or requests (LB rate)
    size_before: int = 0
    high_started: float = 0.0
    out_opened_at: float = 0.0
    added: str = ""
    added_at: float = 0.0  # MIG action CREATING seen
    added_up_at: float = 0.0  # the new member UP in the LB
    added_version: str = ""
    added_release: str = ""
    peer_release: str = ""
    low_started: float = 0.0
    in_opened_at: float = 0.0
    removed: str = ""
    deleting_at: float = 0.0
    drained_at: float = 0.0  # no longer UP in the LB
    gone_at: float = 0.0
    size_after: int = 0
    high_load: LoadReport | None = None
    low_load: LoadReport | None = None
    loaded: list[str] = field(default_factory=list)  # members given CPU busy loops (cpu signal)
    cpu_idle: float | None = None  # mean CPU utilization of the members before the load
    cpu_peak: float | None = None  # highest mean while loaded
    cpu_out: float | None = None  # the mean that opened the scale-out incident
    cpu_in: float | None = None  # ... and the scale-in incident

    def timings(self) -> list[tuple[str, float | None]]:
        def rel(at: float, base: float) -> float | None:
            return at - base if at and base else None

        return [
            ("scale-out incident opened (from high load)", rel(self.out_opened_at, self.high_started)),
            ("new instance created (from high load)", rel(self.added_at, self.high_started)),
            ("new instance UP in the LB (from high load)", rel(self.added_up_at, self.high_started)),
            ("scale-in incident opened (from light load)", rel(self.in_opened_at, self.low_started)),
            ("member out of rotation (from light load)", rel(self.drained_at, self.low_started)),
            ("member deleted (from light load)", rel(self.gone_at, self.low_started)),
        ]


def _member_names(path: AlertPath) -> list[str]:
    return [m.instance.rsplit("/", 1)[-1] for m in path.compute.managed_instances(path.mig_ref)]


def _opened(path: AlertPath, condition: str, since: float) -> float:
    found = [
        i.started_at for i in _monitor(path).incidents() if i.condition == condition and i.started_at >= since
    ]
    return found[0] if found else 0.0


def _observed(path: AlertPath, condition: str, since: float) -> float | None:
    found = [
        i.observed for i in _monitor(path).incidents() if i.condition == condition and i.started_at >= since
    ]
    return float(found[0]) if found else None


def cpu_load(fleet: LocalFleet, names: list[str], workers: int, seconds: int) -> None:
    """Start CPU busy loops in each instance (fleet/commands/cpuload.py, run as on the VM's console)."""
    command = start_load(workers, seconds)
    for name in names:
        fleet.exec(name, ["sh", "-c", command.shell()], timeout=60)


def cpu_unload(fleet: LocalFleet, names: list[str]) -> None:
    """Stop the busy loops `cpu_load` started (an instance gone meanwhile is skipped)."""
    command = stop_load()
    for name in names:
        fleet.exec(name, ["sh", "-c", command.shell()], check=False, timeout=60)


def run_scale(
    path: AlertPath,
    fleet: LocalFleet,
    *,
    high_rate: float,
    low_rate: float,
    signal: str = "requests",
    cpu_workers: int = 1,
    timeout: float = 420.0,
    emit: Emit = _quiet,
) -> ScaleReport:
    """Scale out, then in, and count every failed request meanwhile.

    signal "requests": `high_rate` requests/s through the LB until a member is added and UP, then
    `low_rate` until one is removed (and a few seconds more).
    signal "cpu": `cpu_workers` CPU busy loops in every member (the monitor's CPU condition: mean
    utilization of the members above cpu_high) until a member is added, UP and answering, then none
    (below cpu_low) until one is removed. The load stays on while the new member boots, as a real
    load would: stopped earlier, the scale-in would remove the member before it served anything. A
    light `low_rate` request load runs throughout and must see no failed request."""
    settings = _monitor(path).settings
    if signal not in SIGNALS:
        raise FleetError(f"unknown scale signal {signal!r}", where="selfheal", hint=" or ".join(SIGNALS))
    if signal == "requests" and (settings.load_high is None or settings.load_low is None):
        raise FleetError(
            "the alert path runs without load conditions", where="selfheal", hint="set load_high/low"
        )
    if signal == "cpu" and (settings.cpu_high is None or settings.cpu_low is None):
        raise FleetError(
            "the alert path runs without CPU conditions", where="selfheal", hint="set cpu_high/low"
        )
    out_condition, in_condition = (CPU_HIGH, CPU_LOW) if signal == "cpu" else (LOAD_HIGH, LOAD_LOW)
    from fleet.local.lb import LoadBalancer

    frontend = LoadBalancer(path.config).frontend
    deadline = Deadline(timeout)
    left = lambda: max(1.0, deadline.left())  # noqa: E731
    report = ScaleReport(signal=signal)
    before = _member_names(path)
    report.size_before = len(before)
    if signal == "cpu":  # one reading of the idle members first: the figure the load is compared with
        _wait("a CPU reading of the members", lambda: bool(_monitor(path).cpu_history()), left(), path, emit)
        report.cpu_idle = _monitor(path).cpu_history()[-1].mean

    threads = 4
    rate = high_rate if signal == "requests" else low_rate
    high = LoadGen(frontend, threads=threads, rate=rate / threads, max_seconds=timeout)
    report.high_started = time.time()
    high.start()
    try:
        if signal == "cpu":
            report.loaded = list(before)
            cpu_load(fleet, report.loaded, cpu_workers, int(timeout))
        _wait(
            "scale-out incident",
            lambda: bool(_opened(path, out_condition, report.high_started)),
            left(),
            path,
            emit,
        )
        report.out_opened_at = _opened(path, out_condition, report.high_started)
        report.cpu_out = _observed(path, CPU_HIGH, report.high_started) if signal == "cpu" else None

        def added() -> bool:
            return any(n not in before for n in _member_names(path))

        _wait("a member added", added, left(), path, emit)
        report.added = next(n for n in _member_names(path) if n not in before)
        created = _events(path, "action", report.added, report.high_started)
        report.added_at = created[0].at if created else time.time()

        def up() -> bool:
            members = {m.instance.rsplit("/", 1)[-1]: m for m in path.compute.managed_instances(path.mig_ref)}
            member = members.get(report.added)
            return (
                member is not None
                and (member.current_action or "NONE") == "NONE"
                and (_lb_status(path, report.added) == "UP")
            )

        report.added_up_at = _wait(f"{report.added} UP in the load balancer", up, left(), path, emit)
        # UP is haproxy's verdict; scaled out means the member takes a share of the load: keep the
        # load on until it has answered (stopping at UP left that to a race with the next request)
        new_member = report.added
        _wait(
            f"{new_member} answering through the load balancer",
            lambda: high.report().servers.get(new_member, 0) > 0,
            left(),
            path,
            emit,
        )
    finally:
        if report.loaded:
            cpu_unload(fleet, report.loaded)
        report.high_load = high.stop()
    if signal == "cpu":
        loaded = [r.mean for r in _monitor(path).cpu_history() if r.at >= report.high_started]
        report.cpu_peak = max(loaded) if loaded else None
    _status, report.added_version = health(_address(path, report.added))
    report.added_release = current_release(fleet, report.added)
    report.peer_release = current_release(fleet, before[-1])

    low = LoadGen(frontend, threads=2, rate=low_rate / 2, max_seconds=timeout)
    report.low_started = time.time()
    low.start()
    try:
        _wait(
            "scale-in incident",
            lambda: bool(_opened(path, in_condition, report.low_started)),
            left(),
            path,
            emit,
        )
        report.in_opened_at = _opened(path, in_condition, report.low_started)
        report.cpu_in = _observed(path, CPU_LOW, report.low_started) if signal == "cpu" else None
        during = set(_member_names(path))

        def removed() -> bool:
            return len(set(_member_names(path))) < len(during)

        def deleting() -> bool:
            members = path.compute.managed_instances(path.mig_ref)
            return any(m.current_action == "DELETING" for m in members) or removed()

        _wait("a member being deleted", deleting, left(), path, emit)
        gone_before = removed()
        report.deleting_at = time.time()
        deleting_members = [
            m.instance.rsplit("/", 1)[-1]
            for m in path.compute.managed_instances(path.mig_ref)
            if m.current_action == "DELETING"
        ]
        report.removed = (
            deleting_members[0] if deleting_members else next(iter(during - set(_member_names(path))), "")
        )
        if not gone_before:
            report.drained_at = _wait(
                f"{report.removed} out of rotation",
                lambda: _lb_status(path, report.removed) != "UP",
                left(),
                path,
                emit,
            )
        report.gone_at = _wait(f"{report.removed} deleted", removed, left(), path, emit)
        if not report.drained_at:
            report.drained_at = report.gone_at
        time.sleep(3.0)  # keep the light load on a little after the deletion
    finally:
        report.low_load = low.stop()
    report.size_after = len(_member_names(path))
    return report
