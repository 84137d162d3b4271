"""The batch loop: stage everywhere, then batches (canary first), the failure budget, pause/continue,
fleet rollback newest batch first, interrupts, worker_beat, instance labels, journal and UI events.

What happens to ONE host is a strategy's business: a subclass implements `stage_host`, `forward_host`
and `revert_host` (fleet/rollout/inplace.py updates hosts in place); one that acts on a batch as a
whole also overrides `forward_batch`/`revert_batch` (fleet/rollout/replace.py: one MIG call per
batch). Hosts are reached only through HostOps (fleet/rollout/hostops.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from fleet.commands import release as rc
from fleet.errors import FleetError
from fleet.rollout.marks import Marks
from fleet.rollout.model import (
    FAILED_RESULTS,
    HostOutcome,
    Interrupted,
    Plan,
    Release,
    Report,
)
from fleet.rollout.planning import decide, final_outcome, resume_command
from fleet.ssh.runner import HostResult

if TYPE_CHECKING:
    from fleet.inventory import FleetHost
    from fleet.release.bundle import Bundle
    from fleet.rollout.hostops import HostOps
    from fleet.rollout.journal import Journal
    from fleet.rollout.lbview import LBView
    from fleet.rollout.restore import RestorePoints

POLL = 0.5
SERVE_TIMEOUT = 15.0  # after undrain, nginx -> api must answer at once: the api is already healthy

Observer = Callable[[dict[str, Any]], None]


class Engine:
    """Runs one plan through `ops` (fleet.rollout.hostops): the batch loop, budget, fleet rollback and
    worker_beat never touch Nornir or SSH themselves. Subclasses supply the per-host strategy."""

    def __init__(
        self,
        ops: HostOps,
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
        restore_points: RestorePoints | None = None,
        migrated: Mapping[str, Any] | None = None,
    ) -> None:
        self.ops = ops  # every host of the inventory: worker_beat is fleet-wide
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
        self.inventory_arg = inventory_arg or plan.inventory
        self.restore_points = restore_points
        # the journal's record of a migration an earlier run of this rollout finished (resume)
        self.migrated = dict(migrated) if migrated else None
        self.migration_report: dict[str, Any] | None = None
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
        if phase == "forward" and self.plan.migration is not None and not self._migrate():
            return self._report("failed", 0, started, stage_seconds)
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
            results = self.forward_batch(names)
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
            migration=self.migration_report,
        )

    def _on(self, names: Sequence[str], step: Callable[[str], HostResult]) -> list[HostResult]:
        return self.ops.each(names, step)

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

    # ------------------------------------------------------------------ the migration phase

    def _migrate(self) -> bool:
        """Under the lock, after staging, before the canary: a restore point, then the migration once,
        both journaled. False (nothing switched, `problems` says why) when either fails."""
        mig = self.plan.migration
        assert mig is not None
        base = {"from": list(mig.from_revisions), "to": mig.to_revision, "host": mig.host}
        if self.migrated is not None:
            point = self.migrated.get("restore_point")
            self.migration_report = {**base, "status": "skipped", "restore_point": point}
            self.emit("migration", status="skipped", why="an earlier run of this rollout migrated", **base)
            return True
        reason = self.stopping()
        if reason:
            self.problems.append(f"{reason}: before the migration; nothing was migrated or switched")
            self.migration_report = {**base, "status": "not-started"}
            return False
        from fleet.rollout import restore

        def run(name: str) -> HostResult:
            job = self.plan.jobs[name]
            if self.plan.strategy != "ssh" or not self.ops.release_present(name, mig.release):
                bundle = self.bundles.get(name)
                if bundle is None:
                    raise FleetError(f"release {mig.release} is not staged here", where=name)
                self.ops.stage(name, bundle)
                self.ops.pull(name, job.target.id)
            output = self.ops.migrate(name, mig.release, mig.command, float(mig.timeout))
            return HostResult(name, "ok", data={"output": output})

        phase = restore.run_phase(
            mig,
            rollout_id=self.plan.rollout_id,
            command=mig.shell(self.ops.layout(mig.host)),
            points=self.restore_points,
            emit=self.emit,
            migrate=lambda: self._on([mig.host], run)[0],
        )
        self.migration_report = phase.report
        if phase.problem:
            self.problems.append(phase.problem)
        return phase.ok

    # ------------------------------------------------------------------ stage

    def _stage(self, names: Sequence[str]) -> bool:
        self.emit("stage", status="start", hosts=list(names))

        results = self._on(names, self.stage_host)
        bad = [r for r in results if not r.ok]
        for r in bad:
            out = self.outcomes[r.host]
            out.result = "unreachable" if r.status == "unreachable" else "failed"
            out.error = r.error
        self.emit("stage", status="done" if not bad else "failed", failed=[r.host for r in bad])
        if bad:
            self.problems.append("staging failed: nothing was switched on any host")
        return not bad

    # ------------------------------------------------------------------ the per-host strategy

    def forward_batch(self, names: Sequence[str]) -> list[HostResult]:
        """One batch forward: `forward_host` on each host in parallel. A strategy that moves a whole
        group at once (one MIG call for the batch) overrides this and still reports per host."""
        return self._on(names, self.forward_host)

    def revert_batch(self, names: Sequence[str]) -> list[HostResult]:
        """One batch of a fleet rollback: `revert_host` on each host in parallel (overridable likewise)."""
        return self._on(names, self.revert_host)

    def stage_host(self, name: str) -> HostResult:
        """Prepare one host for its job without changing what it serves; raise when it cannot be."""
        raise NotImplementedError

    def forward_host(self, name: str) -> HostResult:
        """Take one host to its target; fill `self.outcomes[name]` (updated, unchanged, rolled-back,
        failed, unreachable, interrupted) and never leave it drained unless unreachable."""
        raise NotImplementedError

    def revert_host(self, name: str) -> HostResult:
        """Put one updated host back on its source (a fleet rollback): `reverted` or why not."""
        raise NotImplementedError

    def _host(self, name: str) -> FleetHost:
        return self.ops.host(name)

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

    def _lb(self, name: str) -> LBView:
        return self.lb_for(self.ops.host(name))

    def _resume_hint(self) -> str:
        return resume_command(self.inventory_arg, self.plan.rollout_id, self.plan.action)

    # ------------------------------------------------------------------ fleet rollback

    def _fleet_rollback(self, hosts: Sequence[str]) -> str:
        """Undo `hosts` (newest batch first), batch by batch, through the same gates."""
        order = [h for h in hosts if h in self.plan.jobs]
        self.emit("fleet-rollback", status="start", hosts=order)
        done = self.migration_report or self.migrated
        if done and done.get("status") in ("done", "skipped", "restore-point") and self.plan.migration:
            point = done.get("restore_point") or {}
            self.problems.append(
                f"the code goes back, the database schema stays at {self.plan.migration.to_revision} (the "
                f"migration is not undone); restore point {point.get('id')}: {point.get('restore_command')}"
            )
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
            self._collect(self.revert_batch(names))
            self.emit("batch", index=index, hosts=names, status="done", phase="rollback")
            ok = ok and all(self.outcomes[n].result == "reverted" for n in names)
            if any(self.outcomes[n].result == "interrupted" for n in names):
                return "interrupted"
        self.emit("fleet-rollback", status="done" if ok else "failed")
        return "rolled-back" if ok else "failed"

    # ------------------------------------------------------------------ worker_beat singleton

    def _beat_scan(self) -> None:
        """Once, over the whole inventory: who runs worker_beat now (hosts outside the selection too)."""

        def probe(name: str) -> HostResult:
            return HostResult(name, "ok", data={"running": self.ops.beat_running(name)})

        outside = [h for h in self.ops.names() if h not in self.beat_scope]
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
        return self._beat_look()[0]

    def _beat_look(self) -> tuple[list[str], dict[str, str]]:
        """The hosts running worker_beat, and the hosts that could not be looked at (why)."""

        def probe(name: str) -> HostResult:
            return HostResult(name, "ok", data={"running": self.ops.beat_running(name)})

        results = self._on(self.beat_scope, probe)
        running = [r.host for r in results if r.ok and r.data.get("running")]
        self.beat_seen.append(running)
        return running, _failures(results)

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
        def stop(name: str) -> HostResult:
            self.ops.beat_stop(name)
            return HostResult(name, "ok")

        for r in self._on(hosts, stop):
            self.emit("beat", stopped=r.host, ok=r.ok, error=r.error)
            if not r.ok:
                self.problems.append(f"could not stop worker_beat on {r.host}: {r.error}")

    def _state_step(self, name: str) -> HostResult:
        return HostResult(name, "ok", data={"state": self.ops.read_state(name)})

    def _beat_settle(self) -> None:
        """At the end: worker_beat on exactly one host, the one whose current release enables it
        (preferring the inventory's beat host); started again if a guard stopped it."""
        try:
            running, unchecked = self._beat_look()
            if len(running) == 1:  # the usual end: one, started by a release that enables it
                self.emit("beat", settled=running[0])
                return
            looked = self._on(self.beat_scope, self._state_step)
            states = {r.host: r.data["state"] for r in looked if r.ok}
            unchecked.update(_failures(looked))
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

                def start(name: str) -> HostResult:
                    self.ops.beat_start(name, rid)
                    return HostResult(name, "ok")

                for r in self._on([target], start):
                    self.emit("beat", started=r.host, ok=r.ok, error=r.error)
                    if not r.ok:
                        self.problems.append(f"could not start worker_beat on {r.host}: {r.error}")
            settled = keep or (preferred[0] if preferred else None)
            if settled is None and self.plan.beat_host in unchecked:
                # not known to be missing: not looked at (a VM recreated during this rollout, for one,
                # has a new host key this run does not know)
                self.problems.append(
                    f"worker_beat could not be checked on {self.plan.beat_host} (the beat host): "
                    f"{unchecked[self.plan.beat_host]}; `fab status` shows where it runs"
                )
            elif settled is None and self.plan.beat_host:
                self.problems.append(
                    f"worker_beat runs on no host: the current release of {self.plan.beat_host} (the beat "
                    "host) does not enable it; roll out that host"
                )
            self.emit("beat", settled=settled)
        except FleetError as exc:
            self.problems.append(f"worker_beat check: {exc.what}")


def _failures(results: Sequence[HostResult]) -> dict[str, str]:
    """host -> the first line of why its step failed."""
    failed = [r for r in results if not r.ok]
    return {r.host: ((r.error or r.status).strip().splitlines() or [""])[0][:300] for r in failed}


def _text(exc: BaseException) -> str:
    if isinstance(exc, FleetError):
        return exc.render().replace("\n", " ")
    if isinstance(exc, Interrupted):
        return "interrupted"
    return f"{type(exc).__name__}: {exc}"
