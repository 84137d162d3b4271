"""The rollout engine: plan -> lock -> stage everywhere -> batches through the load balancer.

Per host, in order: mark the instance (autoheal leaves it alone) -> drain -> wait until the LB stopped
sending it requests -> switch `current` -> `up -d --remove-orphans` -> verify while drained (every
service of the release running/healthy) -> undrain -> verify through nginx (/health 200 with the
version) -> wait until the LB sends traffic again -> min-ready soak -> record history -> unmark.

A host that fails is put back on the release it ran, through the same gates. Failures count
against a budget; past it the rollout stops and (by default) undoes every updated host, newest
batch first. Every step goes to the journal first, so an interrupted rollout resumes from each
host's real state. Whatever happens, a host this engine drained is undrained before it lets go of
it, or the summary says why it could not (unreachable).

The same engine runs `fab rollback` (target = each host's previous release) and `--resume`.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fleet import hosttasks as ht
from fleet.commands import release as rc
from fleet.commands.base import Command, q, release_id, sh
from fleet.errors import FleetError
from fleet.plan import Timings, default_timings, failure_budget, make_batches, parse_batches
from fleet.runner import HostContext, HostResult, run_step

if TYPE_CHECKING:
    from nornir.core import Nornir

    from fleet.bundle import Bundle
    from fleet.gce import Compute
    from fleet.inventory import FleetHost, Inventory
    from fleet.journal import Journal
    from fleet.lbview import LBView

ON_FAILURE = ("rollback", "pause", "continue")
EXIT_CODES = {"succeeded": 0, "failed": 1, "rolled-back": 3, "paused": 4, "interrupted": 4}
BEAT = "worker_beat"
BEAT_ROLE = "beat"
# host results that count against the failure budget
FAILED_RESULTS = ("rolled-back", "failed", "unreachable")
DONE_RESULTS = ("updated", "unchanged")
POLL = 0.5
SERVE_TIMEOUT = 15.0  # after undrain, nginx -> api must answer at once: the api is already healthy


# =========================================================================== data


@dataclass(frozen=True)
class Release:
    """A release on one host: its id, version and the services disabled there (profiles)."""

    id: str
    version: str
    disabled: tuple[str, ...] = ()

    @property
    def runs_beat(self) -> bool:
        return BEAT not in self.disabled

    def label(self) -> str:
        return f"{self.version} ({self.id})"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "disabled": list(self.disabled)}

    @classmethod
    def from_dict(cls, raw: Any) -> Release | None:
        if not isinstance(raw, Mapping) or not raw.get("id"):
            return None
        disabled = raw.get("disabled") or []
        return cls(release_id(str(raw["id"])), str(raw.get("version") or ""), tuple(str(s) for s in disabled))

    @classmethod
    def from_state(cls, state: rc.HostState) -> Release | None:
        if not state.current:
            return None
        return cls(state.current, state.version or "", tuple(ht.disabled_services(state.record)))

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> Release:
        return cls(bundle.release_id, bundle.version, tuple(bundle.disabled_services))


@dataclass
class HostJob:
    host: str
    batch: int
    source: Release | None  # what the host ran before: where a failure puts it back
    target: Release
    previous: str | None = None  # its `previous` link before: a revert restores it too

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "batch": self.batch,
            "source": self.source.as_dict() if self.source else None,
            "target": self.target.as_dict(),
            "previous": self.previous,
        }


@dataclass
class Plan:
    """Everything a run needs, and what the journal stores so that a resume runs the same plan."""

    rollout_id: str
    action: str  # rollout | rollback
    inventory: str
    label: str  # what the operator asked for: a version, "previous", a release id
    jobs: dict[str, HostJob]
    batches: list[list[str]]
    unchanged: dict[str, Release]
    budget: int
    on_failure: str
    timings: Timings
    operator: str
    message: str = ""
    beat_host: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "action": self.action,
            "inventory": self.inventory,
            "label": self.label,
            "jobs": [j.as_dict() for j in self.jobs.values()],
            "batches": self.batches,
            "unchanged": {h: r.as_dict() for h, r in self.unchanged.items()},
            "budget": self.budget,
            "on_failure": self.on_failure,
            "timings": asdict(self.timings),
            "operator": self.operator,
            "message": self.message,
            "beat_host": self.beat_host,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Plan:
        try:
            jobs = {}
            for j in raw["jobs"]:
                target = Release.from_dict(j["target"])
                if target is None:
                    raise KeyError("target")
                previous = release_id(j["previous"]) if j.get("previous") else None
                jobs[j["host"]] = HostJob(
                    j["host"], int(j["batch"]), Release.from_dict(j.get("source")), target, previous
                )
            unchanged = {h: r for h, v in (raw.get("unchanged") or {}).items() if (r := Release.from_dict(v))}
            return cls(
                rollout_id=str(raw["rollout_id"]),
                action=str(raw["action"]),
                inventory=str(raw["inventory"]),
                label=str(raw["label"]),
                jobs=jobs,
                batches=[list(b) for b in raw["batches"]],
                unchanged=unchanged,
                budget=int(raw["budget"]),
                on_failure=str(raw["on_failure"]),
                timings=Timings(**raw["timings"]),
                operator=str(raw["operator"]),
                message=str(raw.get("message") or ""),
                beat_host=raw.get("beat_host"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FleetError(
                f"the journal's plan is incomplete ({exc})", hint="it cannot be resumed"
            ) from None


@dataclass
class HostOutcome:
    host: str
    batch: int
    # updated unchanged rolled-back reverted failed unreachable interrupted not-started
    result: str = "not-started"
    from_release: str | None = None
    from_version: str | None = None
    to_release: str | None = None
    to_version: str | None = None
    duration: float = 0.0
    error: str | None = None
    problems: list[str] = field(default_factory=list)
    drained: bool | None = False  # at the end; None = unknown (unreachable)
    steps: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    rollout_id: str
    action: str
    label: str
    outcome: str  # succeeded | failed | rolled-back | paused | interrupted
    hosts: list[HostOutcome]
    failures: int
    budget: int
    duration: float
    problems: list[str] = field(default_factory=list)
    stage_seconds: float = 0.0
    resume_command: str | None = None
    beat_seen: list[list[str]] = field(default_factory=list)  # hosts running worker_beat at each check

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]

    def as_dict(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "action": self.action,
            "target": self.label,
            "outcome": self.outcome,
            "exit_code": self.exit_code,
            "failures": self.failures,
            "budget": self.budget,
            "duration": round(self.duration, 2),
            "stage_seconds": round(self.stage_seconds, 2),
            "problems": self.problems,
            "resume_command": self.resume_command,
            "beat_seen": self.beat_seen,
            "hosts": [h.as_dict() for h in self.hosts],
        }


class HostFailed(FleetError):
    """A gate did not pass on one host (the host is still reachable)."""

    def __init__(self, host: str, step: str, what: str) -> None:
        self.step = step
        super().__init__(f"{step}: {what}", where=host)


class Interrupted(Exception):
    """The operator asked to stop (SIGINT/SIGTERM) or the lock was lost: leave the host as it was."""


# =========================================================================== pure helpers


def new_rollout_id(action: str, now: datetime | None = None, suffix: str | None = None) -> str:
    """`ro-20261126-071330-3f9a` (rb- for a rollback, dp- for a deploy): sortable, a valid GCE label value."""
    import secrets

    moment = (now or datetime.now(UTC)).astimezone(UTC)
    prefix = {"rollback": "rb", "deploy": "dp"}.get(action, "ro")
    return f"{prefix}-{moment:%Y%m%d-%H%M%S}-{suffix or secrets.token_hex(2)}"


def beat_hosts(inv: Inventory) -> list[str]:
    return [h.name for h in inv.hosts.values() if BEAT_ROLE in (h.get("roles") or [])]


def check_beat_singleton(inv: Inventory) -> str | None:
    """worker_beat runs where roles contain `beat`: at most one host of the inventory may have it."""
    found = beat_hosts(inv)
    if len(found) > 1:
        raise FleetError(
            f"worker_beat is a singleton, but roles contain `beat` on {', '.join(found)}",
            where=f"inventory {inv.name}",
            hint="give the beat role to exactly one host",
        )
    return found[0] if found else None


def resolve_options(host: FleetHost, **given: Any) -> dict[str, Any]:
    """CLI values over the inventory's `rollout` section over built-in defaults; timings derived
    from the LB health check (fleet.plan.default_timings). `None` = not given on the command line."""
    section = host.get("rollout") or {}
    defaults = {"canary": 1, "batch": "25%", "max_failures": "0", "on_failure": "rollback"}
    out: dict[str, Any] = {}
    for key, default in defaults.items():
        value = given.get(key)
        out[key] = value if value is not None else section.get(key, default)
    if out["on_failure"] not in ON_FAILURE:
        raise FleetError(f"invalid --on-failure {out['on_failure']!r}", hint=" | ".join(ON_FAILURE))
    base = default_timings(host.get("lb"), section)
    out["timings"] = Timings(
        drain_wait=float(given["drain_wait"]) if given.get("drain_wait") is not None else base.drain_wait,
        min_ready=float(given["min_ready"]) if given.get("min_ready") is not None else base.min_ready,
        health_timeout=float(given["health_timeout"])
        if given.get("health_timeout") is not None
        else base.health_timeout,
    )
    t = out["timings"]
    if t.drain_wait < 0 or t.min_ready < 0 or t.health_timeout <= 0:
        raise FleetError("waits must be >= 0 and --health-timeout > 0")
    return out


def make_plan(
    *,
    rollout_id: str,
    action: str,
    inventory: str,
    label: str,
    order: Sequence[str],
    sources: Mapping[str, Release | None],
    targets: Mapping[str, Release],
    drained: Mapping[str, bool],
    canary: int,
    batch: str | int,
    max_failures: str | int,
    on_failure: str,
    timings: Timings,
    operator: str,
    message: str = "",
    beat_host: str | None = None,
    previous: Mapping[str, str | None] | None = None,
) -> Plan:
    """Hosts already on their target (and not drained) are left out; the others are batched in
    inventory order, canary first."""
    steps = parse_batches(batch)

    def settled(h: str) -> bool:
        source = sources.get(h)
        return source is not None and source.id == targets[h].id and not drained.get(h)

    todo = [h for h in order if not settled(h)]
    unchanged = {h: targets[h] for h in order if h not in todo}
    batches = cap_batches(make_batches(todo, canary, steps), len(order))
    jobs = {}
    for index, names in enumerate(batches):
        for h in names:
            jobs[h] = HostJob(h, index, sources.get(h), targets[h], (previous or {}).get(h))
    return Plan(
        rollout_id=rollout_id,
        action=action,
        inventory=inventory,
        label=label,
        jobs=jobs,
        batches=batches,
        unchanged=unchanged,
        budget=failure_budget(max_failures, len(todo)) if todo else 0,
        on_failure=on_failure,
        timings=timings,
        operator=operator,
        message=message,
        beat_host=beat_host,
    )


def cap_batches(batches: list[list[str]], fleet_size: int) -> list[list[str]]:
    """Split batches so that one host of the fleet always stays in the LB: a batch that drains every
    host is an outage, whatever the batch size asked for (a one-host fleet cannot avoid it)."""
    cap = max(1, fleet_size - 1)
    out: list[list[str]] = []
    for batch in batches:
        out += [batch[i : i + cap] for i in range(0, len(batch), cap)]
    return out


def decide(failures: int, budget: int, on_failure: str) -> str | None:
    """After a batch: None = go on; else what to do now (rollback | pause)."""
    if failures <= budget or on_failure == "continue":
        return None
    return on_failure


def final_outcome(outcomes: Sequence[HostOutcome]) -> str:
    return "succeeded" if all(o.result in DONE_RESULTS for o in outcomes) else "failed"


def resume_command(inventory_arg: str, rollout_id: str, action: str) -> str:
    task = "rollback" if action == "rollback" else "rollout"
    return f"fab {task} --inventory {q(inventory_arg)} --resume --rollout-id {rollout_id}"


# --------------------------------------------------------------------------- commands (pure)


def beat_running(layout: rc.Layout) -> Command:
    """Prints the ids of running worker_beat containers of the project (one per line)."""
    return Command(
        sh(
            "docker",
            "ps",
            "-q",
            "--filter",
            f"label=com.docker.compose.project={layout.project}",
            "--filter",
            f"label=com.docker.compose.service={BEAT}",
            "--filter",
            "status=running",
        ),
        "list running worker_beat containers",
    )


def beat_stop(layout: rc.Layout) -> Command:
    """Stop and remove worker_beat (gracefully: its stop grace period applies) before it starts elsewhere."""
    ids = sh(
        "docker",
        "ps",
        "-aq",
        "--filter",
        f"label=com.docker.compose.project={layout.project}",
        "--filter",
        f"label=com.docker.compose.service={BEAT}",
    )
    script = (
        f'ids=$({ids}); if [ -n "$ids" ]; then docker stop $ids >/dev/null && docker rm $ids >/dev/null; fi'
    )
    return Command(script, "stop worker_beat")


def beat_start(layout: rc.Layout, rid: str) -> Command:
    """Start only worker_beat of release `rid` (the rest of the project is left as it runs)."""
    lines = [*rc.compose_lock(layout), sh(*rc.compose_argv(layout, rid, "up", "-d", "--no-deps", BEAT))]
    return Command("\n".join(lines), f"start worker_beat of {rid}")


def compose_idle(layout: rc.Layout, seconds: int = 60) -> Command:
    """Wait until no other `docker compose` runs for the project: an operator killed mid-`up` may have
    left one running on the host, and two at once fight over the same containers. ([c] keeps pgrep
    from matching this very script.)"""
    if not isinstance(seconds, int) or seconds <= 0:
        raise FleetError(f"invalid wait {seconds!r}")
    pattern = q(f"[c]ompose -p {layout.project} ")
    script = (
        f"i=0; while pgrep -f -- {pattern} >/dev/null 2>&1; do i=$((i+1)); "
        f"if [ $i -gt {seconds * 2} ]; then echo 'another docker compose for this project still runs' >&2; "
        "exit 1; fi; sleep 0.5; done"
    )
    return Command(script, "wait for other docker compose runs to end")


def switch_when_idle(layout: rc.Layout, rid: str) -> Command:
    """`compose_idle` then the atomic switch of `current`, in one round trip."""
    return Command(
        f"{compose_idle(layout).script}\n{rc.switch(layout, rid).script}", f"switch current to {rid}"
    )


UNDRAIN_FAILED = 97


def undrain_then_probe(layout: rc.Layout, port: int) -> Command:
    """Remove the drain flag (exit 97 if that fails), then probe /health through nginx: one round trip."""
    probe = ht.health_command(port)
    return Command(
        f"{rc.undrain(layout).script} || exit {UNDRAIN_FAILED}\n{probe.script}", "undrain and probe"
    )


def set_previous(layout: rc.Layout, rid: str | None) -> Command:
    """Point `previous` at releases/<id> again (or remove it): a reverted host is left exactly as it
    was before the rollout, so a later `fab rollback` does not go to the release that failed."""
    if rid is None:
        return Command(f"rm -f {q(layout.previous)}", "clear the previous link")
    target = f"releases/{release_id(rid)}"
    script = "\n".join(
        (
            "set -eu",
            f"cd {q(layout.root)}",
            f"[ -d {q(target)} ] || {{ echo 'release {rid} is gone' >&2; exit 3; }}",
            f"ln -sfn {q(target)} .previous.new",
            "mv -T .previous.new previous",
        )
    )
    return Command(script, f"set previous to {rid}")


def release_record(layout: rc.Layout, rid: str) -> Command:
    """The release.json of a staged release (names of secrets only, never values)."""
    return Command(f"cat {q(layout.release(rid) + '/release.json')}", f"read release {rid}")


_RID_RE = re.compile(r"^[0-9a-f]{4,64}$")


def pick_release(releases: Sequence[rc.ReleaseDir], spec: str, where: str) -> str:
    """The staged release `spec` names: an id or id prefix, else the newest one of that version."""
    spec = spec.strip()
    if _RID_RE.match(spec):
        hits = [r.id for r in releases if r.id.startswith(spec)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise FleetError(f"release prefix {spec!r} is ambiguous: {', '.join(hits)}", where=where)
    by_version = [r for r in releases if r.version == spec]
    if by_version:
        return by_version[0].id  # releases are newest first
    known = ", ".join(f"{r.version or '?'} ({r.id})" for r in releases) or "none"
    raise FleetError(
        f"no staged release matches {spec!r}", where=where, hint=f"staged releases here: {known}"
    )


# =========================================================================== marks (instance labels)


class Marks:
    """The rollout label on each instance under work (functions.fleet_contract.ROLLOUT_LABEL)."""

    def __init__(self, compute: Compute | None) -> None:
        self.compute = compute

    @staticmethod
    def where(host: FleetHost) -> tuple[str, str, str] | None:
        project, zone, name = host.get("gce.project"), host.get("gce.zone"), host.get("gce.instance")
        return (str(project), str(zone), str(name)) if project and zone and name else None

    def set(self, host: FleetHost, rollout_id: str | None) -> bool:
        from functions.fleet_contract import ROLLOUT_LABEL

        loc = self.where(host)
        if self.compute is None or loc is None:
            return False
        self.compute.set_label(*loc, ROLLOUT_LABEL, rollout_id)
        return True


# =========================================================================== the engine

Observer = Callable[[dict[str, Any]], None]


class Engine:
    """Runs one plan on one Nornir object (one SSH connection per host for the whole run)."""

    def __init__(
        self,
        inv: Inventory,
        nr: Nornir,
        plan: Plan,
        *,
        journal: Journal,
        lb: Callable[[FleetHost], LBView],
        marks: Marks,
        bundles: Mapping[str, Bundle] | None = None,
        observer: Observer | None = None,
        stop: threading.Event | None = None,
        lock_lost: Callable[[], str | None] | None = None,
        touched: Sequence[str] = (),
        inventory_arg: str | None = None,
        resumed: bool = False,
    ) -> None:
        self.inv = inv
        self.nr = nr  # every host of the inventory: worker_beat is fleet-wide (connections open lazily)
        # where worker_beat may run: the hosts of the plan, the beat host, and wherever a scan finds it
        self.beat_scope = list(dict.fromkeys([*plan.jobs, *([plan.beat_host] if plan.beat_host else [])]))
        self.plan = plan
        self.journal = journal
        self.lb_for = lb
        self.marks = marks
        self.bundles = dict(bundles or {})
        self.observer = observer
        self.stop = stop or threading.Event()
        self.lock_lost = lock_lost or (lambda: None)
        self.touched = set(touched)  # hosts an earlier run of this rollout (resumed) worked on
        self.resumed = resumed
        self.inventory_arg = inventory_arg or inv.name
        self.outcomes: dict[str, HostOutcome] = {}
        self.problems: list[str] = []
        self.beat_seen: list[list[str]] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="labels")
        self._staged_state: dict[str, rc.HostState] = {}
        self._premarks: dict[str, Future[bool]] = {}
        self._unmarks: list[Future[None]] = []
        for name, job in plan.jobs.items():
            self.outcomes[name] = HostOutcome(
                name,
                job.batch,
                from_release=job.source.id if job.source else None,
                from_version=job.source.version if job.source else None,
                to_release=job.target.id,
                to_version=job.target.version,
            )

    # ------------------------------------------------------------------ events

    def emit(self, event: str, **fields: Any) -> None:
        entry = self.journal.append(event, **fields)
        if self.observer is not None:
            try:
                self.observer(entry)
            except Exception as exc:  # a display problem must never stop a rollout half-way
                self.problems.append(f"progress display: {exc}")

    @contextmanager
    def step(self, out: HostOutcome, name: str) -> Iterator[None]:
        self.emit("step", host=out.host, step=name, status="start")
        started = time.monotonic()
        try:
            yield
        except BaseException as exc:
            seconds = time.monotonic() - started
            out.steps[name] = out.steps.get(name, 0.0) + seconds
            self.emit(
                "step", host=out.host, step=name, status="failed", seconds=round(seconds, 3), error=_text(exc)
            )
            raise
        seconds = time.monotonic() - started
        out.steps[name] = out.steps.get(name, 0.0) + seconds
        self.emit("step", host=out.host, step=name, status="done", seconds=round(seconds, 3))

    def stopping(self) -> str | None:
        if self.stop.is_set():
            return "interrupted"
        lost = self.lock_lost()
        return f"lock lost: {lost}" if lost else None

    # ------------------------------------------------------------------ the whole run

    def run(self, *, stage: bool = True, phase: str = "forward", revert_hosts: Sequence[str] = ()) -> Report:
        """`phase` forward: the plan's batches; rollback: undo `revert_hosts` (a resumed fleet rollback)."""
        try:
            return self._run(stage=stage, phase=phase, revert_hosts=revert_hosts)
        finally:
            for name, future in list(self._premarks.items()):  # marked ahead for a batch that never ran
                with suppress(Exception):
                    if future.result():
                        self._unmarks.append(
                            self._pool.submit(self._unmark, self._host(name), self.outcomes[name])
                        )
            self._premarks.clear()
            self._pool.shutdown(wait=True)  # every rollout label removal has finished (or failed)

    def _run(self, *, stage: bool, phase: str, revert_hosts: Sequence[str]) -> Report:
        started = time.monotonic()
        outcome: str | None = None
        failures = 0
        stage_seconds = 0.0
        all_names = list(self.plan.jobs)
        if not all_names:
            return self._report("succeeded", 0, started, 0.0)
        if stage:
            t0 = time.monotonic()
            if not self._stage(all_names):
                return self._report(
                    "failed",
                    len([o for o in self.outcomes.values() if o.result == "failed"]),
                    started,
                    time.monotonic() - t0,
                )
            stage_seconds = time.monotonic() - t0
        self._beat_scan()
        if phase == "rollback":
            outcome = self._fleet_rollback(list(revert_hosts))
            self._beat_settle()
            return self._report(outcome, failures, started, stage_seconds)
        updated_batches: list[list[str]] = []
        for index, names in enumerate(self.plan.batches):
            reason = self.stopping()
            if reason:
                outcome = "interrupted" if reason == "interrupted" else "paused"
                if reason != "interrupted":
                    self.problems.append(reason)
                break
            self.emit("batch", index=index, hosts=names, status="start")
            self._beat_guard(names)
            if index + 1 < len(self.plan.batches):
                self._mark_ahead(self.plan.batches[index + 1])
            results = self._on(names, self._forward_step)
            self._collect(results)
            failures += sum(1 for n in names if self.outcomes[n].result in FAILED_RESULTS)
            updated_batches.append([n for n in names if self.outcomes[n].result == "updated"])
            self.emit("batch", index=index, hosts=names, status="done", failures=failures)
            if any(self.outcomes[n].result == "interrupted" for n in names) or self.stop.is_set():
                outcome = "interrupted"
                break
            action = decide(failures, self.plan.budget, self.plan.on_failure)
            if action == "pause":
                outcome = "paused"
                self.problems.append(f"{failures} failure(s), budget {self.plan.budget}: paused")
                break
            if action == "rollback":
                self.problems.append(f"{failures} failure(s), budget {self.plan.budget}: rolling back")
                hosts = [h for batch in reversed(updated_batches) for h in batch]
                outcome = self._fleet_rollback(hosts)
                break
        self._beat_settle()
        if outcome is None:
            outcome = final_outcome(list(self.outcomes.values()))
        return self._report(outcome, failures, started, stage_seconds)

    def _report(self, outcome: str, failures: int, started: float, stage_seconds: float) -> Report:
        hosts = list(self.outcomes.values())
        resumable = outcome in ("paused", "interrupted", "failed")
        return Report(
            rollout_id=self.plan.rollout_id,
            action=self.plan.action,
            label=self.plan.label,
            outcome=outcome,
            hosts=hosts,
            failures=failures,
            budget=self.plan.budget,
            duration=time.monotonic() - started,
            problems=self.problems,
            stage_seconds=stage_seconds,
            resume_command=resume_command(self.inventory_arg, self.plan.rollout_id, self.plan.action)
            if resumable
            else None,
            beat_seen=self.beat_seen,
        )

    def _on(self, names: Sequence[str], step: Callable[[HostContext], HostResult]) -> list[HostResult]:
        wanted = set(names)
        return run_step(self.nr.filter(filter_func=lambda h: h.name in wanted), step)

    def _collect(self, results: Sequence[HostResult]) -> None:
        for r in results:
            out = self.outcomes.get(r.host)
            if out is None:
                continue
            if not isinstance(r.data.get("outcome"), HostOutcome):  # the step itself blew up
                out.result = "unreachable" if r.status == "unreachable" else "failed"
                out.error = r.error
                out.drained = None
            self.emit("host", host=r.host, result=out.result, error=out.error, drained=out.drained)

    # ------------------------------------------------------------------ stage

    def _stage(self, names: Sequence[str]) -> bool:
        self.emit("stage", status="start", hosts=list(names))

        def stage_step(ctx: HostContext) -> HostResult:
            job = self.plan.jobs[ctx.host.name]
            bundle = self.bundles.get(ctx.host.name)
            out = self.outcomes[ctx.host.name]
            layout = ht.layout_of(ctx.host)
            with self.step(out, "stage"):
                state = ht.read_state(ctx)  # under the lock: what the host really runs now
                if not state.exists:
                    raise ht.StepError(
                        ctx.host.name,
                        "layout",
                        f"{layout.root} does not exist",
                        hint="run `fab bootstrap` on this host first",
                    )
                self._staged_state[ctx.host.name] = state
                self._unchanged_since_plan(ctx.host.name)
                if bundle is not None and bundle.release_id == job.target.id:
                    ht.stage(ctx, bundle)  # uploads only when the host lacks the release
                else:
                    present = rc.parse_present(
                        ht.run(ctx, rc.release_present(layout, job.target.id), "stage").stdout
                    )
                    if not present:
                        raise ht.StepError(
                            ctx.host.name,
                            "stage",
                            f"release {job.target.id} is not staged here any more",
                            hint="start a new rollout with --version (it re-renders and uploads)",
                        )
                ht.run(ctx, rc.compose_check(layout, job.target.id), "validate")
            with self.step(out, "pull"):  # timed on its own: Docker's time, not the engine's
                ht.run(
                    ctx,
                    rc.compose_pull(layout, job.target.id),
                    "pull",
                    timeout=900,
                    hint="is the version right, and can the host reach the registry?",
                )
            return HostResult(ctx.host.name, "ok")

        results = self._on(names, stage_step)
        bad = [r for r in results if not r.ok]
        for r in bad:
            out = self.outcomes[r.host]
            out.result = "unreachable" if r.status == "unreachable" else "failed"
            out.error = r.error
        self.emit("stage", status="done" if not bad else "failed", failed=[r.host for r in bad])
        if bad:
            self.problems.append("staging failed: nothing was switched on any host")
        return not bad

    def _unchanged_since_plan(self, host: str) -> None:
        """A first run plans from states read before the lock: if a host changed meanwhile (another
        rollout finished in between), its planned way back is wrong. Stop before anything switches."""
        if self.resumed:
            return
        state = self._staged_state.get(host)
        source = self.plan.jobs[host].source
        if state is not None and state.current != (source.id if source else None):
            raise FleetError(
                f"now runs {state.current or 'nothing'}, planned from {source.id if source else 'nothing'}",
                where=host,
                hint="the fleet changed between plan and lock (another rollout?): run the command again",
            )

    # ------------------------------------------------------------------ one host forward

    def _forward_step(self, ctx: HostContext) -> HostResult:
        job = self.plan.jobs[ctx.host.name]
        out = self.outcomes[ctx.host.name]
        started = time.monotonic()
        self._move(
            ctx, out, job.target, job.source, action=self.plan.action, bounce=True, previous=job.previous
        )
        out.duration = time.monotonic() - started
        return HostResult(ctx.host.name, "ok", data={"outcome": out})

    def _revert_step(self, ctx: HostContext) -> HostResult:
        job = self.plan.jobs[ctx.host.name]
        out = self.outcomes[ctx.host.name]
        started = time.monotonic()
        if job.source is None:
            out.problems.append("no previous release to go back to: left on the new one")
            out.result = "failed"
        else:
            probe = HostOutcome(out.host, out.batch)
            self._move(ctx, probe, job.source, None, action="rollback", bounce=False)
            out.steps.update({f"revert-{k}": v for k, v in probe.steps.items()})
            out.problems += probe.problems
            out.drained = probe.drained
            if probe.result in ("updated", "unchanged"):
                out.result = "reverted"
                self._restore_previous(ctx, out, job.previous)
            else:
                out.result = probe.result
                out.error = probe.error
        out.duration += time.monotonic() - started
        return HostResult(ctx.host.name, "ok", data={"outcome": out})

    def _move(
        self,
        ctx: HostContext,
        out: HostOutcome,
        target: Release,
        source: Release | None,
        *,
        action: str,
        bounce: bool,
        previous: str | None = None,
    ) -> None:
        """Take one host to `target` through every gate; on failure back to `source` when `bounce`
        (and its `previous` link back to `previous`)."""
        host = ctx.host
        drained = False
        switched = False
        marked = False
        premark = self._premarks.pop(host.name, None)
        try:
            with self.step(out, "state"):
                # read while staging moments ago (under our lock nothing else changes it), else now
                state = self._staged_state.pop(host.name, None) or ht.read_state(ctx)
            drained = state.drained
            if state.current == target.id and not state.drained:
                verdict = ht.check(ctx, target.version, target.id)
                if verdict.ok:
                    if out.host in self.touched:  # a killed or interrupted run of this rollout got it there
                        self._reconcile_record(ctx, state, target, action)
                        out.result = "updated"
                    else:
                        out.result = "unchanged"
                    return
            if self.stopping():
                raise Interrupted
            with self.step(out, "mark"):
                # usually set while the previous batch ran: only waited for here
                marked = (
                    premark.result() if premark is not None else self.marks.set(host, self.plan.rollout_id)
                )
                premark = None
            with self.step(out, "drain"):
                ht.drain(ctx)
                drained = True
            with self.step(out, "lb-out"):
                self.lb_for(host).wait_out(host, self.plan.timings.drain_wait)
            if self.stopping():
                raise Interrupted
            with self.step(out, "switch"):
                ht.run(ctx, switch_when_idle(ht.layout_of(host), target.id), "switch", timeout=90)
                # from here a failure means going back (also when a killed run had switched already)
                switched = source is not None and source.id != target.id
            with self.step(out, "up"):
                ht.up(ctx, target.id, target.disabled, timeout=self.plan.timings.health_timeout + 120)
            with self.step(out, "verify"):
                self._verified(ctx, target, drained=True)
            with self.step(out, "undrain"):
                first = self._undrain_and_probe(ctx, target)
                drained = False
            try:
                with self.step(out, "serve"):
                    if first is not None:
                        self._serving(ctx, target)
                with self.step(out, "lb-in"):
                    self.lb_for(host).wait_in(host, self.plan.timings.health_timeout)
                with self.step(out, "soak"):
                    self._soak(ctx, target)
            except FleetError as exc:
                # traffic may have reached it: take it out again before going back
                ht.drain(ctx)
                drained = True
                try:
                    self.lb_for(host).wait_out(host, self.plan.timings.drain_wait)
                except FleetError as lb_exc:
                    out.problems.append(f"re-drained after {exc.what}, but {lb_exc.what}")
                raise
            with self.step(out, "record"):
                ht.record(
                    ctx,
                    rc.history_entry(
                        action,
                        "ok",
                        operator=self.plan.operator,
                        release=target.id,
                        version=target.version or None,
                        rollout=self.plan.rollout_id,
                    ),
                )
            out.result = "updated"
        except Interrupted:
            out.result = "interrupted"
            drained = self._let_go(ctx, out, drained, healthy=True)
        except Exception as exc:
            out.error = _text(exc)
            if _unreachable(exc):
                out.result = "unreachable"
                out.drained = None if drained or switched else False
                out.problems.append(
                    "unreachable mid-step: its drain flag is unknown; when it is back, "
                    + (self._resume_hint() or "run `fab status`")
                )
                marked = False  # leave the label: autoheal must keep away from a host in this state
                return
            if switched and bounce and source is not None:
                drained = self._bounce(ctx, out, source, target, drained, exc)
                if out.result == "rolled-back":
                    self._restore_previous(ctx, out, previous)
            else:
                out.result = "failed"
                drained = self._let_go(ctx, out, drained)
                self._record_failure(ctx, out, target, action, exc)
        finally:
            if out.result != "unreachable":
                out.drained = drained
            if premark is not None:  # marked ahead, but it never got to its mark step
                with suppress(Exception):
                    marked = premark.result()
            if marked:
                # off the critical path: the next batch need not wait for Compute (run() waits for it)
                self._unmarks.append(self._pool.submit(self._unmark, host, out))

    def _host(self, name: str) -> FleetHost:
        host: FleetHost = self.nr.inventory.hosts[name].data["fleet_host"]
        return host

    def _mark_ahead(self, names: Sequence[str]) -> None:
        """Label the next batch's instances while this batch runs (Compute operations take seconds);
        its hosts only wait for that in their own mark step, before they are drained."""

        def mark(name: str) -> bool:
            done = self.marks.set(self._host(name), self.plan.rollout_id)
            self.emit("premark", host=name, ok=done)
            return done

        for name in names:
            if name not in self._premarks:
                self._premarks[name] = self._pool.submit(mark, name)

    def _unmark(self, host: FleetHost, out: HostOutcome) -> None:
        try:
            with self.step(out, "unmark"):
                self.marks.set(host, None)
        except Exception as exc:
            self.problems.append(f"{host.name}: could not remove the rollout label: {_text(exc)}")

    def _resume_hint(self) -> str:
        return resume_command(self.inventory_arg, self.plan.rollout_id, self.plan.action)

    def _verified(
        self, ctx: HostContext, rel: Release, *, drained: bool, timeout: float | None = None
    ) -> None:
        """Poll until every service of `rel` runs with its config (healthy where checked) and /health
        through nginx says 503 (drained) or 200 with the version. An `unhealthy` verdict from Docker
        is final: no need to wait out the timeout."""
        limit = timeout if timeout is not None else self.plan.timings.health_timeout
        deadline = time.monotonic() + limit
        hashes = ht.config_hashes(ctx, rel.id)
        while True:
            verdict = ht.check(ctx, rel.version, rel.id, expect_drained=drained, hashes=hashes)
            if verdict.ok:
                return
            fatal = [
                s.service
                for s in verdict.services
                if s.health == "unhealthy" and s.config_hash == hashes.get(s.service)
            ]
            if fatal or time.monotonic() >= deadline:
                why = "; ".join(verdict.problems)
                if fatal:
                    why = f"unhealthy: {', '.join(fatal)}; {why}"
                raise HostFailed(
                    ctx.host.name, "verify", f"{rel.version} not healthy after {limit:.0f}s: {why}"
                )
            time.sleep(POLL)

    def _probe(self, ctx: HostContext, rel: Release) -> str | None:
        """/health through the host's nginx: None when it answers 200 with `rel`'s version, else why not."""
        r = ctx.run(ht.health_command(ht.http_port_of(ctx.host)).shell(), timeout=10)
        code, seen = ht.parse_health(r.stdout)
        if code != 200:
            return f"/health answered {code or 'nothing'}"
        if seen != rel.version:
            return f"/health reports version {seen!r}, want {rel.version!r}"
        return None

    def _serving(self, ctx: HostContext, rel: Release) -> None:
        """Just undrained: the stack was verified while drained, so only the path through nginx is left
        to prove (it must answer at once; a short grace covers nginx re-resolving the new api)."""
        deadline = time.monotonic() + SERVE_TIMEOUT
        while True:
            why = self._probe(ctx, rel)
            if why is None:
                return
            if time.monotonic() >= deadline:
                raise HostFailed(ctx.host.name, "serve", why)
            time.sleep(0.2)

    def _undrain_and_probe(self, ctx: HostContext, rel: Release) -> str | None:
        """Remove the drain flag and probe /health through nginx in one round trip: None when it
        already answers 200 with the version (else why not: `serve` keeps probing)."""
        layout = ht.layout_of(ctx.host)
        r = ctx.run(undrain_then_probe(layout, ht.http_port_of(ctx.host)).shell(), timeout=15)
        if r.exited == UNDRAIN_FAILED:
            raise ht.StepError(
                ctx.host.name, "undrain", f"could not remove {layout.drain_flag}: {r.stderr.strip()}"
            )
        code, seen = ht.parse_health(r.stdout)
        if code != 200:
            return f"/health answered {code or 'nothing'}"
        return None if seen == rel.version else f"/health reports version {seen!r}, want {rel.version!r}"

    def _soak(self, ctx: HostContext, rel: Release) -> None:
        """Stay in service for min-ready seconds, then check the LB still sends it traffic: its health
        check has kept probing /health through nginx meanwhile. Without an LB to ask, probe it here."""
        if self.plan.timings.min_ready:
            time.sleep(self.plan.timings.min_ready)
        seen = self.lb_for(ctx.host).look(ctx.host)
        if seen is None:
            why = self._probe(ctx, rel)
            if why is not None:
                raise HostFailed(ctx.host.name, "soak", why)
        elif not seen.serving:
            raise HostFailed(ctx.host.name, "soak", f"the load balancer dropped it again ({seen.raw})")

    def _bounce(
        self,
        ctx: HostContext,
        out: HostOutcome,
        source: Release,
        target: Release,
        drained: bool,
        exc: BaseException,
    ) -> bool:
        """The host failed after switching: put it back on `source` and verify that, still drained."""
        self._record_failure(ctx, out, target, self.plan.action, exc)
        try:
            if not drained:
                with self.step(out, "revert-drain"):
                    ht.drain(ctx)
                    drained = True
                    self.lb_for(ctx.host).wait_out(ctx.host, self.plan.timings.drain_wait)
            with self.step(out, "revert-switch"):
                ht.switch(ctx, source.id)
            with self.step(out, "revert-up"):
                ht.up(ctx, source.id, source.disabled, timeout=self.plan.timings.health_timeout + 120)
            with self.step(out, "revert-verify"):
                self._verified(ctx, source, drained=True)
            with self.step(out, "revert-undrain"):
                ht.undrain(ctx)
                drained = False
            with self.step(out, "revert-serve"):
                self._serving(ctx, source)
            with self.step(out, "revert-lb-in"):
                self.lb_for(ctx.host).wait_in(ctx.host, self.plan.timings.health_timeout)
            ht.record(
                ctx,
                rc.history_entry(
                    "rollback",
                    "ok",
                    operator=self.plan.operator,
                    release=source.id,
                    version=source.version or None,
                    rollout=self.plan.rollout_id,
                    detail=f"back from {target.version} ({target.id}): {_text(exc)[:300]}",
                ),
            )
            out.result = "rolled-back"
        except Exception as again:
            out.result = "unreachable" if _unreachable(again) else "failed"
            out.problems.append(f"going back to {source.label()} failed too: {_text(again)}")
            if out.result != "unreachable":
                drained = self._let_go(ctx, out, drained)
        return drained

    def _restore_previous(self, ctx: HostContext, out: HostOutcome, previous: str | None) -> None:
        try:
            ht.run(ctx, set_previous(ht.layout_of(ctx.host), previous), "previous")
        except Exception as exc:
            out.problems.append(f"`previous` link not restored: {_text(exc)}")

    def _let_go(self, ctx: HostContext, out: HostOutcome, drained: bool, *, healthy: bool = False) -> bool:
        """Undrain before letting go of a host: the LB's own health check keeps a broken one out. A
        `healthy` one (interrupted before it switched) is waited for until the LB sends it traffic."""
        if not drained:
            return False
        try:
            with self.step(out, "undrain"):
                ht.undrain(ctx)
            try:
                lb = self.lb_for(ctx.host)
                if healthy:
                    with self.step(out, "lb-in"):
                        lb.wait_in(ctx.host, self.plan.timings.health_timeout)
                elif (seen := lb.look(ctx.host)) is not None and not seen.serving:
                    out.problems.append(f"undrained; the LB keeps it out while it fails ({seen.raw})")
            except FleetError as exc:
                out.problems.append(f"undrained, but the LB does not send it traffic: {exc.what}")
            return False
        except Exception as exc:
            out.problems.append(
                f"COULD NOT UNDRAIN: {_text(exc)}; run `fab rollout --resume` or remove the drain flag"
            )
            return True

    def _record_failure(
        self, ctx: HostContext, out: HostOutcome, target: Release, action: str, exc: BaseException
    ) -> None:
        try:
            ht.record(
                ctx,
                rc.history_entry(
                    action,
                    "failed",
                    operator=self.plan.operator,
                    release=target.id,
                    version=target.version or None,
                    rollout=self.plan.rollout_id,
                    detail=_text(exc)[:500],
                ),
            )
        except Exception as again:
            out.problems.append(f"history not written: {_text(again)}")

    def _reconcile_record(self, ctx: HostContext, state: rc.HostState, target: Release, action: str) -> None:
        """A resumed host already on its target: write the history line a killed run never wrote."""
        last = state.last_history or {}
        if (
            last.get("rollout") == self.plan.rollout_id
            and last.get("release") == target.id
            and last.get("result") == "ok"
        ):
            return
        ht.record(
            ctx,
            rc.history_entry(
                action,
                "ok",
                operator=self.plan.operator,
                release=target.id,
                version=target.version or None,
                rollout=self.plan.rollout_id,
                detail="reconciled on resume",
            ),
        )

    # ------------------------------------------------------------------ fleet rollback

    def _fleet_rollback(self, hosts: Sequence[str]) -> str:
        """Undo `hosts` (newest batch first), batch by batch, through the same gates."""
        order = [h for h in hosts if h in self.plan.jobs]
        self.emit("fleet-rollback", status="start", hosts=order)
        by_batch: dict[int, list[str]] = {}
        for h in order:
            by_batch.setdefault(self.plan.jobs[h].batch, []).append(h)
        ok = True
        for index in sorted(by_batch, reverse=True):
            names = by_batch[index]
            if self.stop.is_set():
                self.emit("fleet-rollback", status="interrupted")
                return "interrupted"
            self.emit("batch", index=index, hosts=names, status="start", phase="rollback")
            self._beat_guard(names, revert=True)
            self._collect(self._on(names, self._revert_step))
            self.emit("batch", index=index, hosts=names, status="done", phase="rollback")
            ok = ok and all(self.outcomes[n].result == "reverted" for n in names)
            if any(self.outcomes[n].result == "interrupted" for n in names):
                return "interrupted"
        self.emit("fleet-rollback", status="done" if ok else "failed")
        return "rolled-back" if ok else "failed"

    # ------------------------------------------------------------------ worker_beat singleton

    def _beat_scan(self) -> None:
        """Once, over the whole inventory: who runs worker_beat now (hosts outside the selection too)."""

        def probe(ctx: HostContext) -> HostResult:
            r = ht.run(ctx, beat_running(ht.layout_of(ctx.host)), "beat")
            return HostResult(ctx.host.name, "ok", data={"running": bool(r.stdout.strip())})

        outside = [h for h in self.nr.inventory.hosts if h not in self.beat_scope]
        if not outside:
            return
        for r in self._on(outside, probe):
            if r.ok and r.data.get("running"):
                self.beat_scope.append(r.host)
            elif not r.ok:
                self.problems.append(
                    f"could not check worker_beat on {r.host} (outside the rollout): {r.error}"
                )

    def _beat_running(self) -> list[str]:
        def probe(ctx: HostContext) -> HostResult:
            r = ht.run(ctx, beat_running(ht.layout_of(ctx.host)), "beat")
            return HostResult(ctx.host.name, "ok", data={"running": bool(r.stdout.strip())})

        results = self._on(self.beat_scope, probe)
        running = [r.host for r in results if r.ok and r.data.get("running")]
        self.beat_seen.append(running)
        return running

    def _beat_guard(self, names: Sequence[str], *, revert: bool = False) -> None:
        """Before a batch that starts worker_beat somewhere, stop it everywhere else, so that it never
        runs on two hosts at once (the batch's own `up` would stop it only in parallel)."""

        def release_of(h: str) -> Release | None:
            job = self.plan.jobs[h]
            return job.source if revert else job.target

        starters = [h for h in names if (rel := release_of(h)) is not None and rel.runs_beat]
        if not starters:
            return  # this batch's `up` can only remove worker_beat, never add a second one
        running = self._beat_running()
        self.emit("beat", running=running, starting=starters)
        if len(running) > 1:
            self.problems.append(f"worker_beat was running on {len(running)} hosts: {', '.join(running)}")
        others = [h for h in running if h not in starters]
        if others:
            self._beat_stop(others)

    def _beat_stop(self, hosts: Sequence[str]) -> None:
        def stop(ctx: HostContext) -> HostResult:
            ht.run(ctx, beat_stop(ht.layout_of(ctx.host)), "beat")
            return HostResult(ctx.host.name, "ok")

        for r in self._on(hosts, stop):
            self.emit("beat", stopped=r.host, ok=r.ok, error=r.error)
            if not r.ok:
                self.problems.append(f"could not stop worker_beat on {r.host}: {r.error}")

    def _beat_settle(self) -> None:
        """At the end: worker_beat on exactly one host, the one whose current release enables it
        (preferring the inventory's beat host); started again if a guard stopped it."""
        try:
            running = self._beat_running()
            if len(running) == 1:  # the usual end: one, started by a release that enables it
                self.emit("beat", settled=running[0])
                return
            states = {r.host: r.data["state"] for r in self._on(self.beat_scope, _state_step) if r.ok}
            enabled = [h for h, st in states.items() if (rel := Release.from_state(st)) and rel.runs_beat]
            preferred = sorted(enabled, key=lambda h: (h != self.plan.beat_host, h))
            keep = next((h for h in preferred if h in running), running[0] if running else None)
            extra = [h for h in running if h != keep]
            if extra:
                self.problems.append(
                    f"worker_beat ran on {len(running)} hosts; stopped it on {', '.join(extra)}"
                )
                self._beat_stop(extra)
            if keep is None and preferred:
                target = preferred[0]
                rid = states[target].current
                assert rid is not None

                def start(ctx: HostContext) -> HostResult:
                    ht.run(ctx, beat_start(ht.layout_of(ctx.host), rid), "beat", timeout=300)
                    return HostResult(ctx.host.name, "ok")

                for r in self._on([target], start):
                    self.emit("beat", started=r.host, ok=r.ok, error=r.error)
                    if not r.ok:
                        self.problems.append(f"could not start worker_beat on {r.host}: {r.error}")
            settled = keep or (preferred[0] if preferred else None)
            if settled is None and self.plan.beat_host:
                self.problems.append(
                    f"worker_beat runs on no host: the current release of {self.plan.beat_host} (the beat "
                    "host) does not enable it; roll out that host"
                )
            self.emit("beat", settled=settled)
        except FleetError as exc:
            self.problems.append(f"worker_beat check: {exc.what}")


def _state_step(ctx: HostContext) -> HostResult:
    return HostResult(ctx.host.name, "ok", data={"state": ht.read_state(ctx)})


def _unreachable(exc: BaseException) -> bool:
    import paramiko

    from fleet.connection import UnreachableError
    from fleet.errors import HostKeyError

    return isinstance(exc, (UnreachableError, HostKeyError, OSError, EOFError, paramiko.SSHException))


def _text(exc: BaseException) -> str:
    if isinstance(exc, FleetError):
        return exc.render().replace("\n", " ")
    if isinstance(exc, Interrupted):
        return "interrupted"
    return f"{type(exc).__name__}: {exc}"


# =========================================================================== planning over SSH


def read_states(nr: Nornir, *, preflight: bool = False) -> dict[str, rc.HostState]:
    """Every host's release state, or one FleetError naming each host that could not be read. With
    `preflight`, also what a rollout needs and only reads: Docker and Compose v2 answer, the layout
    exists, enough free disk (so a bad host is refused before the lock is even taken)."""
    results = run_step(nr, _ready_step if preflight else _state_step)
    bad = [f"{r.host}: {r.status}: {r.error}" for r in results if not r.ok]
    if bad:
        raise FleetError(
            "cannot read the release state of every host:\n  " + "\n  ".join(bad),
            hint="nothing was changed; fix or leave out those hosts (--hosts)",
        )
    return {r.host: r.data["state"] for r in results}


def _ready_step(ctx: HostContext) -> HostResult:
    from fleet.deploy import check_ready

    return HostResult(ctx.host.name, "ok", data={"state": check_ready(ctx)})


def staged_targets(nr: Nornir, states: Mapping[str, rc.HostState], spec: str | None) -> dict[str, Release]:
    """Per host, the staged release to go to: `previous` (spec None), else an id/prefix or a version."""

    def find(ctx: HostContext) -> HostResult:
        layout = ht.layout_of(ctx.host)
        state = states[ctx.host.name]
        if spec is None:
            if not state.previous:
                raise FleetError("no previous release to roll back to", where=ctx.host.name)
            rid = state.previous
        else:
            rels = rc.parse_releases(ht.run(ctx, rc.list_releases(layout), "releases").stdout)
            rid = pick_release(rels, spec, ctx.host.name)
        record = ht.run(ctx, release_record(layout, rid), "releases").stdout
        try:
            import json

            meta = json.loads(record)
        except ValueError:
            raise FleetError(f"release {rid} has no readable release.json", where=ctx.host.name) from None
        version = meta.get("version") if isinstance(meta, dict) else None
        disabled = meta.get("disabled_services") if isinstance(meta, dict) else None
        rel = Release(rid, str(version or ""), tuple(str(s) for s in disabled or ()))
        return HostResult(ctx.host.name, "ok", data={"release": rel})

    results = run_step(nr, find)
    bad = [r.error or r.status for r in results if not r.ok]
    if bad:
        raise FleetError(
            "cannot find the release to go to on every host:\n  " + "\n  ".join(bad),
            hint="nothing was changed",
        )
    return {r.host: r.data["release"] for r in results}


# =========================================================================== one run, start to end


@dataclass
class Run:
    """What `execute` needs besides the plan."""

    inv: Inventory
    nr: Nornir
    lock: Any  # fleet.lock.FleetLock
    lb: Callable[[FleetHost], LBView]
    marks: Marks
    journal_dir: Any  # pathlib.Path
    bundles: Mapping[str, Bundle] | None = None
    observer: Observer | None = None
    stop: threading.Event | None = None
    inventory_arg: str | None = None
    ttl: float = 300.0
    warn: Callable[[str], None] | None = None


def execute(run: Run, plan: Plan, resume: Any = None) -> Report:
    """Lock, journal, engine, unlock. `resume` is a fleet.journal.Replay of the rollout to continue.

    A resume claims the journal first (one process per rollout: a second `--resume` is refused), then
    takes the lock (refused while another process holds this rollout). A lock that is lost, or that
    cannot be renewed in time, stops the engine at its next step (hosts undrained) and is journaled."""
    import os

    from fleet import journal as jr
    from fleet import lock as lk

    journal: Journal | None = None
    if resume is not None:
        journal = jr.Journal.claim(jr.find(run.journal_dir, plan.rollout_id))
        resume = jr.load(journal.path)  # what the journal says now that no other process can add to it
        if resume.finished:
            journal.close()
            raise FleetError(
                f"nothing to resume: rollout {plan.rollout_id} ended: {resume.outcome}",
                where=str(journal.path),
            )
    try:
        held = run.lock.acquire(plan.operator, plan.message or plan.label, plan.rollout_id, run.ttl)
    except BaseException:
        if journal is not None:
            journal.close()
        raise

    def journal_lost(exc: FleetError) -> None:
        if journal is not None:
            journal.append("lock", status="lost", error=exc.what)

    heartbeat = lk.Heartbeat(run.lock, held, run.ttl, warn=run.warn, on_lost=journal_lost).start()
    try:
        if resume is None:
            journal = jr.Journal.create(run.journal_dir, plan.rollout_id)
            journal.append("plan", pid=os.getpid(), lock=held.owner, holder=held.holder, **plan.as_dict())
        else:
            assert journal is not None
            journal.append(
                "resume", pid=os.getpid(), lock=held.owner, holder=held.holder, touched=resume.touched
            )

        def lost() -> str | None:
            return heartbeat.problem()

        engine = Engine(
            run.inv,
            run.nr,
            plan,
            journal=journal,
            lb=run.lb,
            marks=run.marks,
            bundles=run.bundles,
            observer=run.observer,
            stop=run.stop,
            lock_lost=lost,
            touched=resume.touched if resume is not None else (),
            inventory_arg=run.inventory_arg,
            resumed=resume is not None,
        )
        if resume is not None and resume.reverting is not None:
            report = engine.run(stage=False, phase="rollback", revert_hosts=resume.reverting)
        else:
            report = engine.run(stage=True)
        if heartbeat.errors:
            report.problems.append(f"lock renewal hiccups: {heartbeat.errors[-1]}")
        journal.append("end", outcome=report.outcome, failures=report.failures, problems=report.problems)
        return report
    except BaseException as exc:
        if journal is not None:
            journal.append("end", outcome="failed", error=_text(exc))
        raise
    finally:
        final = heartbeat.stop()
        try:
            run.lock.release(final)
        except FleetError as exc:
            if run.warn:
                run.warn(f"could not release the fleet lock: {exc.what} (it expires on its own)")
        if journal is not None:
            journal.close()
