"""How a rollout looks while it runs and when it ends: a live table on a terminal (batches, each host's
current step, elapsed time), one plain line per event otherwise (logs, CI), and the summary table.
Progress goes to stderr, so stdout stays clean for `--json`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fleet.view import console as ui

if TYPE_CHECKING:
    from fleet.rollout import Plan, Report

RESULT_STYLE = {
    "updated": "green",
    "unchanged": "green",
    "reverted": "yellow",
    "rolled-back": "yellow",
    "interrupted": "yellow",
    "failed": "red",
    "unreachable": "red",
}
OUTCOME_TEXT = {
    "succeeded": "succeeded",
    "rolled-back": "ROLLED BACK",
    "paused": "PAUSED",
    "interrupted": "INTERRUPTED",
    "failed": "FAILED",
}


@dataclass
class _Row:
    host: str
    batch: int
    change: str
    step: str = "waiting"
    result: str = ""
    started: float | None = None
    ended: float | None = None
    notes: list[str] = field(default_factory=list)


class RolloutView:
    """An observer for fleet.rollout.Engine events."""

    def __init__(self, plan: Plan, *, live: bool | None = None, stream: Any = None) -> None:
        self.plan = plan
        self.live_enabled = sys.stderr.isatty() if live is None else live
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.phase = "plan"
        self.rows = {
            name: _Row(
                name,
                job.batch,
                f"{job.source.version if job.source else 'none'} -> {job.target.version}",
            )
            for name, job in plan.jobs.items()
        }
        self._live: Any = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> RolloutView:
        if self.live_enabled:
            from rich.live import Live

            self._live = Live(
                self._render(), console=ui.console(stderr=True), refresh_per_second=4, transient=False
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(None, None, None)
            self._live = None

    # ------------------------------------------------------------------ events

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        now = time.monotonic()
        row = self.rows.get(str(event.get("host")))
        line: str | None = None
        if kind == "stage":
            self.phase = f"stage {event.get('status')}"
            line = f"stage on {len(self.rows)} host(s): {event.get('status')}"
            if event.get("failed"):
                line += f" (failed: {', '.join(event['failed'])})"
        elif kind == "batch":
            phase = "rollback " if event.get("phase") == "rollback" else ""
            self.phase = f"{phase}batch {int(event.get('index', 0)) + 1}/{len(self.plan.batches)}"
            line = f"{self.phase} {event.get('status')}: {', '.join(event.get('hosts') or [])}"
        elif kind == "fleet-rollback":
            line = f"fleet rollback {event.get('status')}" + (
                f": {', '.join(event['hosts'])}" if event.get("hosts") else ""
            )
        elif kind == "beat":
            if event.get("stopped") or event.get("started"):
                what = "stopped on" if event.get("stopped") else "started on"
                line = f"worker_beat {what} {event.get('stopped') or event.get('started')}"
        elif kind == "step" and row is not None:
            step = str(event.get("step"))
            if row.started is None and step not in ("stage", "pull"):
                row.started = now
            if event.get("status") == "start":
                row.step = step
                line = f"{row.host}: {step}"
            elif event.get("status") == "failed":
                row.step = f"{step} FAILED"
                row.notes.append(str(event.get("error") or ""))
                line = f"{row.host}: {step} failed: {event.get('error')}"
        elif kind == "host" and row is not None:
            row.result = str(event.get("result"))
            row.step = "-"
            row.ended = now
            line = f"{row.host}: {row.result}" + (f" ({event.get('error')})" if event.get("error") else "")
        if self._live is not None:
            self._live.update(self._render())
        elif line is not None:
            self.stream.write(f"[{now - self.started:7.1f}s] {ui.safe(line)}\n")
            self.stream.flush()

    # ------------------------------------------------------------------ rendering

    def _render(self) -> Any:
        from rich.console import Group
        from rich.markup import escape
        from rich.table import Table
        from rich.text import Text

        now = time.monotonic()
        head = Text.from_markup(
            f"[bold]{self.plan.action} {escape(self.plan.label)}[/]  {self.plan.rollout_id}  "
            f"{escape(self.phase)}  {now - self.started:.0f}s"
        )
        table = Table(show_lines=False, expand=False)
        for col in ("batch", "host", "change", "step", "elapsed", "result"):
            table.add_column(col)
        for row in sorted(self.rows.values(), key=lambda r: (r.batch, r.host)):
            elapsed = ""
            if row.started is not None:
                elapsed = f"{(row.ended or now) - row.started:.1f}s"
            style = RESULT_STYLE.get(row.result)
            result = f"[{style}]{escape(row.result)}[/]" if style else escape(row.result)
            table.add_row(
                str(row.batch + 1), row.host, escape(row.change), escape(ui.safe(row.step)), elapsed, result
            )
        return Group(head, table)


def print_plan(plan: Plan) -> None:
    print(f"{plan.action} {plan.label}  (id {plan.rollout_id}, inventory {plan.inventory})")
    t = plan.timings
    print(
        f"  {len(plan.jobs)} host(s) in {len(plan.batches)} batch(es), failure budget {plan.budget}, "
        f"on failure: {plan.on_failure}; drain wait <= {t.drain_wait:g}s, min ready {t.min_ready:g}s, "
        f"health timeout {t.health_timeout:g}s"
    )
    for i, names in enumerate(plan.batches):
        parts = []
        for name in names:
            job = plan.jobs[name]
            src = job.source.label() if job.source else "none"
            parts.append(f"{name} {src} -> {job.target.label()}")
        print(f"  batch {i + 1}: " + "; ".join(parts))
    if plan.unchanged:
        print(f"  already on target: {', '.join(plan.unchanged)}")
    if plan.migration is not None:
        print_migration(plan.migration, "before batch 1")
    sys.stdout.flush()


def print_migration(mig: Any, when: str) -> None:
    """A pending migration (fleet.rollout.restore.Migration): what runs where, after which restore point."""
    print(f"  migration: database schema {mig.label()}, once, {when}, under the fleet lock")
    print(f"    restore point first: {mig.restore}")
    print(
        f"    then on {mig.host}: docker compose run --rm --no-deps -T --entrypoint {mig.command[0]} "
        f"api {' '.join(mig.command[1:])}  (release {mig.release}, timeout {mig.timeout}s)"
    )


def print_migration_result(mig: Any) -> None:
    """How a migration phase ended (Report.migration, DeployReport.migration: a dict)."""
    if mig is None:
        return
    point = mig.get("restore_point") or {}
    print(
        f"migration {' + '.join(mig.get('from') or [])} -> {mig.get('to')} on {mig.get('host')}: "
        f"{mig.get('status')}" + (f"; restore point {point.get('id')} ({point.get('kind')})" if point else "")
    )
    if point.get("restore_command"):
        print(f"  restore with: {ui.safe(point['restore_command'])}")


def print_budgets(budgets: Any) -> None:
    """The database connections the release opens at the fleet's largest size (fleet.release.budget)."""
    if not budgets:
        return
    print("database connections at the fleet's largest size:")
    for b in budgets:
        for line in b.render():
            print(line)
    for b in budgets:
        if b.warning():
            print(f"WARNING: {b.warning()}")
    sys.stdout.flush()


def print_summary(report: Report) -> None:
    def rel(rid: str | None, version: str | None) -> str:
        return f"{version or '?'} ({rid})" if rid else "none"

    rows = []
    for h in report.hosts:
        notes = [n for n in ([h.error] if h.error else []) + h.problems if n]
        if h.drained is None:
            notes.append("drain state UNKNOWN")
        elif h.drained:
            notes.append("LEFT DRAINED")
        rows.append(
            [
                h.host,
                rel(h.from_release, h.from_version),
                rel(h.to_release, h.to_version),
                h.result,
                f"{h.duration:.1f}s",
                "; ".join(notes),
            ]
        )
    ui.table(
        f"{report.action} {report.label}: {OUTCOME_TEXT.get(report.outcome, report.outcome)} "
        f"({report.duration:.1f}s, {report.failures} failure(s), budget {report.budget})",
        ["host", "from", "to", "result", "duration", "notes"],
        rows,
    )
    print_migration_result(report.migration)
    for problem in report.problems:
        print(f"note: {ui.safe(problem)}")
    if report.resume_command:
        print(f"resume with: {report.resume_command}")
    sys.stdout.flush()
