"""The engine: stage everywhere, then batches through the load balancer (see fleet/rollout/__init__.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from fleet import hosttasks as ht
from fleet.commands import release as rc
from fleet.errors import FleetError
from fleet.rollout.marks import Marks
from fleet.rollout.model import (
    FAILED_RESULTS,
    HostFailed,
    HostOutcome,
    Interrupted,
    Plan,
    Release,
    Report,
)
from fleet.rollout.planning import decide, final_outcome, resume_command
from fleet.runner import HostResult

if TYPE_CHECKING:
    from fleet.bundle import Bundle
    from fleet.inventory import FleetHost
    from fleet.journal import Journal
    from fleet.lbview import LBView
    from fleet.rollout.hostops import HostOps

POLL = 0.5
SERVE_TIMEOUT = 15.0  # after undrain, nginx -> api must answer at once: the api is already healthy

Observer = Callable[[dict[str, Any]], None]


class Engine:
    """Runs one plan through `ops` (fleet.rollout.hostops): the batch loop, budget, fleet rollback,
    worker_beat and the per-host state machine never touch Nornir or SSH themselves."""

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

    # ------------------------------------------------------------------ stage

    def _stage(self, names: Sequence[str]) -> bool:
        self.emit("stage", status="start", hosts=list(names))

        def stage_step(name: str) -> HostResult:
            job = self.plan.jobs[name]
            bundle = self.bundles.get(name)
            out = self.outcomes[name]
            layout = self.ops.layout(name)
            with self.step(out, "stage"):
                state = self.ops.read_state(name)  # under the lock: what the host really runs now
                if not state.exists:
                    raise ht.StepError(
                        name,
                        "layout",
                        f"{layout.root} does not exist",
                        hint="run `fab bootstrap` on this host first",
                    )
                self._staged_state[name] = state
                self._unchanged_since_plan(name)
                if bundle is not None and bundle.release_id == job.target.id:
                    self.ops.stage(name, bundle)  # uploads only when the host lacks the release
                else:
                    present = self.ops.release_present(name, job.target.id)
                    if not present:
                        raise ht.StepError(
                            name,
                            "stage",
                            f"release {job.target.id} is not staged here any more",
                            hint="start a new rollout with --version (it re-renders and uploads)",
                        )
                self.ops.compose_check(name, job.target.id)
            with self.step(out, "pull"):  # timed on its own: Docker's time, not the engine's
                self.ops.pull(name, job.target.id)
            return HostResult(name, "ok")

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

    def _forward_step(self, name: str) -> HostResult:
        job = self.plan.jobs[name]
        out = self.outcomes[name]
        started = time.monotonic()
        self._move(
            name, out, job.target, job.source, action=self.plan.action, bounce=True, previous=job.previous
        )
        out.duration = time.monotonic() - started
        return HostResult(name, "ok", data={"outcome": out})

    def _revert_step(self, name: str) -> HostResult:
        job = self.plan.jobs[name]
        out = self.outcomes[name]
        started = time.monotonic()
        if job.source is None:
            out.problems.append("no previous release to go back to: left on the new one")
            out.result = "failed"
        else:
            probe = HostOutcome(out.host, out.batch)
            self._move(name, probe, job.source, None, action="rollback", bounce=False)
            out.steps.update({f"revert-{k}": v for k, v in probe.steps.items()})
            out.problems += probe.problems
            out.drained = probe.drained
            if probe.result in ("updated", "unchanged"):
                out.result = "reverted"
                self._restore_previous(name, out, job.previous)
            else:
                out.result = probe.result
                out.error = probe.error
        out.duration += time.monotonic() - started
        return HostResult(name, "ok", data={"outcome": out})

    def _move(
        self,
        name: str,
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
        host = self.ops.host(name)
        drained = False
        switched = False
        marked = False
        premark = self._premarks.pop(host.name, None)
        try:
            with self.step(out, "state"):
                # read while staging moments ago (under our lock nothing else changes it), else now
                state = self._staged_state.pop(host.name, None) or self.ops.read_state(name)
            drained = state.drained
            if state.current == target.id and not state.drained:
                verdict = self.ops.check(name, target.version, target.id)
                if verdict.ok:
                    if out.host in self.touched:  # a killed or interrupted run of this rollout got it there
                        self._reconcile_record(name, state, target, action)
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
                self.ops.drain(name)
                drained = True
            with self.step(out, "lb-out"):
                self.lb_for(host).wait_out(host, self.plan.timings.drain_wait)
            if self.stopping():
                raise Interrupted
            with self.step(out, "switch"):
                self.ops.switch_when_idle(name, target.id)
                # from here a failure means going back (also when a killed run had switched already)
                switched = source is not None and source.id != target.id
            with self.step(out, "up"):
                self.ops.up(name, target.id, target.disabled, timeout=self.plan.timings.health_timeout + 120)
            with self.step(out, "verify"):
                self._verified(name, target, drained=True)
            with self.step(out, "undrain"):
                first = self._undrain_and_probe(name, target)
                drained = False
            try:
                with self.step(out, "serve"):
                    if first is not None:
                        self._serving(name, target)
                with self.step(out, "lb-in"):
                    self.lb_for(host).wait_in(host, self.plan.timings.health_timeout)
                with self.step(out, "soak"):
                    self._soak(name, target)
            except FleetError as exc:
                # traffic may have reached it: take it out again before going back
                self.ops.drain(name)
                drained = True
                try:
                    self.lb_for(host).wait_out(host, self.plan.timings.drain_wait)
                except FleetError as lb_exc:
                    out.problems.append(f"re-drained after {exc.what}, but {lb_exc.what}")
                raise
            with self.step(out, "record"):
                self.ops.record(
                    name,
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
            drained = self._let_go(name, out, drained, healthy=True)
        except Exception as exc:
            out.error = _text(exc)
            if self.ops.unreachable(exc):
                out.result = "unreachable"
                out.drained = None if drained or switched else False
                out.problems.append(
                    "unreachable mid-step: its drain flag is unknown; when it is back, "
                    + (self._resume_hint() or "run `fab status`")
                )
                marked = False  # leave the label: autoheal must keep away from a host in this state
                return
            if switched and bounce and source is not None:
                drained = self._bounce(name, out, source, target, drained, exc)
                if out.result == "rolled-back":
                    self._restore_previous(name, out, previous)
            else:
                out.result = "failed"
                drained = self._let_go(name, out, drained)
                self._record_failure(name, out, target, action, exc)
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

    def _verified(self, name: str, rel: Release, *, drained: bool, timeout: float | None = None) -> None:
        """Poll until every service of `rel` runs with its config (healthy where checked) and /health
        through nginx says 503 (drained) or 200 with the version. An `unhealthy` verdict from Docker
        is final: no need to wait out the timeout."""
        limit = timeout if timeout is not None else self.plan.timings.health_timeout
        deadline = time.monotonic() + limit
        hashes = self.ops.config_hashes(name, rel.id)
        while True:
            verdict = self.ops.check(name, rel.version, rel.id, expect_drained=drained, hashes=hashes)
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
                raise HostFailed(name, "verify", f"{rel.version} not healthy after {limit:.0f}s: {why}")
            time.sleep(POLL)

    def _probe(self, name: str, rel: Release) -> str | None:
        """/health through the host's nginx: None when it answers 200 with `rel`'s version, else why not."""
        code, seen = self.ops.probe(name)
        if code != 200:
            return f"/health answered {code or 'nothing'}"
        if seen != rel.version:
            return f"/health reports version {seen!r}, want {rel.version!r}"
        return None

    def _serving(self, name: str, rel: Release) -> None:
        """Just undrained: the stack was verified while drained, so only the path through nginx is left
        to prove (it must answer at once; a short grace covers nginx re-resolving the new api)."""
        deadline = time.monotonic() + SERVE_TIMEOUT
        while True:
            why = self._probe(name, rel)
            if why is None:
                return
            if time.monotonic() >= deadline:
                raise HostFailed(name, "serve", why)
            time.sleep(0.2)

    def _undrain_and_probe(self, name: str, rel: Release) -> str | None:
        """Remove the drain flag and probe /health through nginx in one round trip: None when it
        already answers 200 with the version (else why not: `serve` keeps probing)."""
        code, seen = self.ops.undrain_and_probe(name)
        if code != 200:
            return f"/health answered {code or 'nothing'}"
        return None if seen == rel.version else f"/health reports version {seen!r}, want {rel.version!r}"

    def _soak(self, name: str, rel: Release) -> None:
        """Stay in service for min-ready seconds, then check the LB still sends it traffic: its health
        check has kept probing /health through nginx meanwhile. Without an LB to ask, probe it here."""
        if self.plan.timings.min_ready:
            time.sleep(self.plan.timings.min_ready)
        seen = self._lb(name).look(self.ops.host(name))
        if seen is None:
            why = self._probe(name, rel)
            if why is not None:
                raise HostFailed(name, "soak", why)
        elif not seen.serving:
            raise HostFailed(name, "soak", f"the load balancer dropped it again ({seen.raw})")

    def _bounce(
        self,
        name: str,
        out: HostOutcome,
        source: Release,
        target: Release,
        drained: bool,
        exc: BaseException,
    ) -> bool:
        """The host failed after switching: put it back on `source` and verify that, still drained."""
        self._record_failure(name, out, target, self.plan.action, exc)
        try:
            if not drained:
                with self.step(out, "revert-drain"):
                    self.ops.drain(name)
                    drained = True
                    self._lb(name).wait_out(self.ops.host(name), self.plan.timings.drain_wait)
            with self.step(out, "revert-switch"):
                self.ops.switch(name, source.id)
            with self.step(out, "revert-up"):
                self.ops.up(name, source.id, source.disabled, timeout=self.plan.timings.health_timeout + 120)
            with self.step(out, "revert-verify"):
                self._verified(name, source, drained=True)
            with self.step(out, "revert-undrain"):
                self.ops.undrain(name)
                drained = False
            with self.step(out, "revert-serve"):
                self._serving(name, source)
            with self.step(out, "revert-lb-in"):
                self._lb(name).wait_in(self.ops.host(name), self.plan.timings.health_timeout)
            self.ops.record(
                name,
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
            out.result = "unreachable" if self.ops.unreachable(again) else "failed"
            out.problems.append(f"going back to {source.label()} failed too: {_text(again)}")
            if out.result != "unreachable":
                drained = self._let_go(name, out, drained)
        return drained

    def _restore_previous(self, name: str, out: HostOutcome, previous: str | None) -> None:
        try:
            self.ops.set_previous(name, previous)
        except Exception as exc:
            out.problems.append(f"`previous` link not restored: {_text(exc)}")

    def _let_go(self, name: str, out: HostOutcome, drained: bool, *, healthy: bool = False) -> bool:
        """Undrain before letting go of a host: the LB's own health check keeps a broken one out. A
        `healthy` one (interrupted before it switched) is waited for until the LB sends it traffic."""
        if not drained:
            return False
        try:
            with self.step(out, "undrain"):
                self.ops.undrain(name)
            try:
                lb = self._lb(name)
                if healthy:
                    with self.step(out, "lb-in"):
                        lb.wait_in(self.ops.host(name), self.plan.timings.health_timeout)
                elif (seen := lb.look(self.ops.host(name))) is not None and not seen.serving:
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
        self, name: str, out: HostOutcome, target: Release, action: str, exc: BaseException
    ) -> None:
        try:
            self.ops.record(
                name,
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

    def _reconcile_record(self, name: str, state: rc.HostState, target: Release, action: str) -> None:
        """A resumed host already on its target: write the history line a killed run never wrote."""
        last = state.last_history or {}
        if (
            last.get("rollout") == self.plan.rollout_id
            and last.get("release") == target.id
            and last.get("result") == "ok"
        ):
            return
        self.ops.record(
            name,
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
        def probe(name: str) -> HostResult:
            return HostResult(name, "ok", data={"running": self.ops.beat_running(name)})

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
            running = self._beat_running()
            if len(running) == 1:  # the usual end: one, started by a release that enables it
                self.emit("beat", settled=running[0])
                return
            states = {r.host: r.data["state"] for r in self._on(self.beat_scope, self._state_step) if r.ok}
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
            if settled is None and self.plan.beat_host:
                self.problems.append(
                    f"worker_beat runs on no host: the current release of {self.plan.beat_host} (the beat "
                    "host) does not enable it; roll out that host"
                )
            self.emit("beat", settled=settled)
        except FleetError as exc:
            self.problems.append(f"worker_beat check: {exc.what}")


def _text(exc: BaseException) -> str:
    if isinstance(exc, FleetError):
        return exc.render().replace("\n", " ")
    if isinstance(exc, Interrupted):
        return "interrupted"
    return f"{type(exc).__name__}: {exc}"
