"""The proof of `fab rollout --strategy replace` on real Docker (issue 15 item 5): a local fleet of 4
instances behind its MIG (the local Compute endpoint, containers recreated from instance templates,
each new VM booted by the agent), with load through the LB, three scenarios:

  a) replace rollout 1.0.0 -> 1.1.0: succeeds, 0 failed requests, every member on the new template;
  b) replace rollout 1.1.0 -> 1.2.0-broken (its /health answers 503 forever): the canary fails, is
     recreated from the previous template; exit 3, outcome rolled-back, the other members not started,
     the whole MIG on the previous template, 0 failed requests;
  c) replace rollout 1.1.0 -> 1.0.0, the operator SIGKILLed once the second batch's MIG call is in its
     journal (after the canary, during a batch), then `fab rollout --resume`: succeeds, the same rollout
     id, 0 failed requests across both, the MIG and every member on the new template, none RECREATING.

Every condition is checked here: a failed one is printed and the command exits 1 (it is a proof, not a
timer), and docs/PERFORMANCE.md is written only when all hold. The fleet is its own (name, network,
ports), brought up and taken down by this command (also on failure). Run it under the fleet lock when
others share the machine: `flock /work/fleetlock.lock python -m bench replace_fleet`.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.report import write_section
from fleet.paths import CHECKOUT

COMMAND = "python -m bench replace_fleet"
N = 4
CANARY, BATCH = 1, 2  # batches [1, 2, 1]
HEALTH_TIMEOUT = 300  # a fresh VM takes ~30 s here, more on a loaded machine
BROKEN_TIMEOUT = 120  # the broken canary is judged failed after this (and its way back must fit in it)
THREADS, RATE = 4, 20
MIN_REQUESTS = 100


class ProofFailed(Exception):
    pass


# --------------------------------------------------------------------------- journal (pure)


def _epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def batch_times(events: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[str], float | None]]:
    """(label, hosts, seconds) of every batch the journal started, in order; seconds None when the
    batch has no `done` (the operator died in it). A resumed batch is a batch again."""
    rows: list[tuple[str, list[str], float | None]] = []
    open_at: dict[tuple[int, str], int] = {}
    for e in events:
        if e.get("event") != "batch":
            continue
        key = (int(e["index"]), str(e.get("phase", "forward")))
        label = f"{key[1]} {key[0]}"
        if e.get("status") == "start":
            if key in open_at:  # started again (a resume): the earlier one never finished
                i = open_at.pop(key)
                rows[i] = (rows[i][0], rows[i][1], None)
            open_at[key] = len(rows)
            rows.append((label, list(e.get("hosts") or []), _epoch(e["t"])))
        elif e.get("status") == "done" and key in open_at:
            i = open_at.pop(key)
            start = rows[i][2]
            rows[i] = (label, rows[i][1], None if start is None else _epoch(e["t"]) - start)
    for i in open_at.values():
        rows[i] = (rows[i][0], rows[i][1], None)
    return rows


def step_seconds(events: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Every ended step's seconds (done or failed), by step name (all hosts)."""
    found: dict[str, list[float]] = {}
    for e in events:
        if e.get("event") == "step" and e.get("status") in ("done", "failed") and "seconds" in e:
            found.setdefault(str(e["step"]), []).append(float(e["seconds"]))
    return found


def host_results(events: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The last result the journal recorded per host."""
    return {str(e["host"]): str(e.get("result")) for e in events if e.get("event") == "host"}


def journal_problems(
    events: Sequence[Mapping[str, Any]],
    *,
    outcome: str,
    results: Mapping[str, str] | None = None,
    resumed: int = 0,
    forward_batches: int | None = None,
) -> list[str]:
    """What is wrong with a finished replace rollout's journal: it starts with the plan (strategy
    replace), ends with `end` and `outcome`, was resumed exactly `resumed` times, each host's last
    result is `results`' (when given), and forward batches started = `forward_batches` (when given)."""
    if not events:
        return ["the journal is empty"]
    problems: list[str] = []
    first, last = events[0], events[-1]
    if first.get("event") != "plan":
        problems.append(f"the journal starts with {first.get('event')!r}, not the plan")
    elif first.get("strategy") != "replace":
        problems.append(f"the plan's strategy is {first.get('strategy')!r}, not replace")
    if last.get("event") != "end":
        problems.append(f"the journal ends with {last.get('event')!r}, not `end`")
    elif last.get("outcome") != outcome:
        problems.append(f"the journal's outcome is {last.get('outcome')!r}, not {outcome!r}")
    seen = sum(1 for e in events if e.get("event") == "resume")
    if seen != resumed:
        problems.append(f"the journal shows {seen} resume(s), not {resumed}")
    if results is not None:
        got = host_results(events)
        for host, want in sorted(results.items()):
            if got.get(host, "not-started") != want:
                problems.append(f"{host}: the journal's result is {got.get(host, 'none')!r}, not {want!r}")
    if forward_batches is not None:
        started = {
            int(e["index"])
            for e in events
            if e.get("event") == "batch"
            and e.get("status") == "start"
            and e.get("phase", "forward") == "forward"
        }
        if len(started) != forward_batches:
            problems.append(f"{len(started)} forward batch(es) started, not {forward_batches}")
    return problems


def killed_problems(events: Sequence[Mapping[str, Any]]) -> list[str]:
    """The journal a SIGKILL left: a plan, no `end`, and the canary batch done before it."""
    if not events or events[0].get("event") != "plan":
        return ["the killed run's journal has no plan"]
    problems = []
    if any(e.get("event") == "end" for e in events):
        problems.append("the killed run's journal has an `end`: it was not killed mid-rollout")
    done = {int(e["index"]) for e in events if e.get("event") == "batch" and e.get("status") == "done"}
    if 0 not in done:
        problems.append("the killed run had not finished the canary batch")
    return problems


def forward_mig_calls(events: Sequence[Mapping[str, Any]]) -> int:
    """How many forward batches have had their MIG call (template set, instances recreated) journaled."""
    return sum(1 for e in events if e.get("event") == "mig" and e.get("step") == "forward")


def expected_templates(events: Sequence[Mapping[str, Any]], side: str) -> dict[str, str]:
    """{host: the instance template of its `side` (target or source) release}, from the plan and the
    `template` events. Hosts can differ: the worker_beat host's release (beat enabled) is its own."""
    plan = events[0] if events and events[0].get("event") == "plan" else {}
    made = {str(e["release"]): str(e["template"]) for e in events if e.get("event") == "template"}
    return {
        str(j["host"]): made.get(str(j[side]["id"]), f"(no template for {j[side]['id']})")
        for j in plan.get("jobs", [])
        if j.get(side)
    }


def fleet_template(events: Sequence[Mapping[str, Any]], side: str) -> str | None:
    """The template the MIG itself should be left on: that of the release most hosts other than the
    worker_beat host have on `side` (a VM the MIG creates must not run a second beat)."""
    if not events or events[0].get("event") != "plan":
        return None
    beat = events[0].get("beat_host")
    by_host = expected_templates(events, side)
    pool = [t for h, t in by_host.items() if h != beat] or list(by_host.values())
    return Counter(pool).most_common(1)[0][0] if pool else None


# --------------------------------------------------------------------------- the run


@dataclass
class Scenario:
    name: str
    what: str
    seconds: float = 0.0
    exit_codes: list[int] = field(default_factory=list)
    traffic: Any = None
    loadavg: tuple[float, float] = (0.0, 0.0)
    events: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def check(self, ok: bool, text: str) -> None:
        if not ok:
            self.problems.append(text)


class Proof:
    def __init__(self) -> None:
        from fleet.local.config import LocalConfig

        self.cfg = LocalConfig(
            name="replproof",
            container_prefix="fleet-replproof",
            host_prefix="replproof",
            network="fleet-replproof",
            subnet="10.226.0.0/24",
            ssh_base=3400,
            http_base=9400,
            lb_port=18780,
        )
        self.work = Path(tempfile.mkdtemp(prefix="bench-replace-fleet-"))
        self.fab_bin = str(Path(sys.executable).with_name("fab"))

    # ----------------------------------------------------------------- helpers

    @property
    def inv(self) -> str:
        return str(self.fleet.inventory_dir / "mig")

    def env(self, journal: Path) -> dict[str, str]:
        return {**os.environ, "FLEET_JOURNAL_DIR": str(journal), "FLEET_OPERATOR": "bench@local"}

    def argv(self, *args: str) -> list[str]:
        return [self.fab_bin, *args, "--inventory", self.inv]

    def fab(self, journal: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            cwd=CHECKOUT,
            env=self.env(journal),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def checked(self, r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
        if r.returncode != 0:
            raise ProofFailed(f"{r.args[1:]} exited {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        return r

    def journal(self, directory: Path) -> list[dict[str, Any]]:
        from fleet.rollout.journal import read

        paths = sorted(directory.rglob("*.jsonl"))
        if len(paths) != 1:
            raise ProofFailed(f"expected one journal under {directory}, found {len(paths)}")
        return read(paths[0])

    def load(self) -> Any:
        from fleet.scenarios.loadgen import LoadGen

        return LoadGen(
            f"http://127.0.0.1:{self.cfg.lb_port}", threads=THREADS, rate=RATE, max_seconds=1200
        ).start()

    def members(self) -> dict[str, tuple[str, str, str]]:
        """{name: (template, status, action)} of the MIG's members, from the Compute endpoint."""
        return {
            m.name: (m.version.instance_template.rsplit("/", 1)[-1], m.instance_status, m.current_action)
            for m in self.compute.managed_instances(self.ref)
        }

    def mig_template(self) -> str:
        return str(self.compute.mig(self.ref).instance_template).rsplit("/", 1)[-1]

    def settle(self, timeout: float = 120) -> dict[str, tuple[str, str, str]]:
        """The members once the MIG is stable and none has an action left (or as they are at timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            members = self.members()
            if (
                all(a == "NONE" for _, _, a in members.values())
                and self.compute.mig(self.ref).status.is_stable
            ):
                return members
            if time.monotonic() > deadline:
                return members
            time.sleep(1)

    def on_templates(self, s: Scenario, mig: str | None, members: Mapping[str, str], what: str) -> None:
        """The MIG on `mig`, each of its N members on its own template in `members`, RUNNING, with
        nothing left to do."""
        found = self.settle()
        s.check(mig is not None, f"no {what} template for the MIG in the journal")
        s.check(len(found) == N, f"the MIG has {len(found)} members, not {N}: {found}")
        s.check(self.mig_template() == mig, f"the MIG's template is {self.mig_template()}, not {what} {mig}")
        for name, (tpl, status, action) in sorted(found.items()):
            want = members.get(name)
            s.check(tpl == want, f"{name} is on {tpl}, not its {what} {want}")
            s.check((status, action) == ("RUNNING", "NONE"), f"{name} is {status} with action {action}")

    def traffic(self, s: Scenario, report: Any, versions: set[str]) -> None:
        s.traffic = report
        s.check(
            report.failed == 0,
            f"{report.failed} failed requests: {report.summary()} {report.first_failures[:5]}",
        )
        s.check(report.requests >= MIN_REQUESTS, f"only {report.requests} requests: {report.summary()}")
        s.check(
            set(report.versions) <= versions,
            f"answered by {sorted(report.versions)}, expected only {sorted(versions)}",
        )

    def rollout(self, journal: Path, version: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.fab(
            journal,
            "rollout", "--version", version, "--strategy", "replace", "--yes", "--json",
            "--canary", str(CANARY), "--batch", str(BATCH), *extra,
        )  # fmt: skip

    @staticmethod
    def report_of(r: subprocess.CompletedProcess[str], s: Scenario) -> dict[str, Any]:
        try:
            return dict(json.loads(r.stdout))
        except ValueError:
            s.problems.append(f"no JSON report (exit {r.returncode}): {r.stdout[-1500:]} {r.stderr[-1500:]}")
            return {}

    # ----------------------------------------------------------------- scenarios

    def scenario_a(self) -> Scenario:
        s = Scenario("a", f"replace rollout 1.0.0 -> 1.1.0 of {N} members")
        journal = self.work / "a"
        load, before = self.load(), os.getloadavg()[0]
        t0 = time.monotonic()
        r = self.rollout(journal, "1.1.0", "--health-timeout", str(HEALTH_TIMEOUT))
        s.seconds = time.monotonic() - t0
        time.sleep(2)  # a last look through the LB after the rollout returned
        self.traffic(s, load.stop(), {"1.0.0", "1.1.0"})
        s.loadavg = (before, os.getloadavg()[0])
        s.exit_codes = [r.returncode]
        report = self.report_of(r, s)
        s.check(r.returncode == 0, f"exit {r.returncode}, not 0: {r.stderr[-1500:]}")
        s.check(report.get("outcome") == "succeeded", f"outcome {report.get('outcome')!r}")
        hosts = {h["host"]: h["result"] for h in report.get("hosts", [])}
        s.check(len(hosts) == N and set(hosts.values()) == {"updated"}, f"host results {hosts}")
        s.check(bool(s.traffic.versions.get("1.1.0")), "no request was answered by 1.1.0")
        s.events = self.journal(journal)
        s.problems += journal_problems(
            s.events, outcome="succeeded", results=dict.fromkeys(hosts, "updated"), forward_batches=3
        )
        self.on_templates(
            s, fleet_template(s.events, "target"), expected_templates(s.events, "target"), "1.1.0"
        )
        return s

    def scenario_b(self) -> Scenario:
        s = Scenario("b", "replace rollout 1.1.0 -> 1.2.0-broken (its /health 503 forever)")
        journal = self.work / "b"
        previous = self.mig_template()
        load, before = self.load(), os.getloadavg()[0]
        t0 = time.monotonic()
        r = self.rollout(journal, "1.2.0-broken", "--health-timeout", str(BROKEN_TIMEOUT))
        s.seconds = time.monotonic() - t0
        time.sleep(2)
        self.traffic(s, load.stop(), {"1.1.0"})
        s.loadavg = (before, os.getloadavg()[0])
        s.exit_codes = [r.returncode]
        report = self.report_of(r, s)
        # as the SSH strategy's broken canary (tests/integration/test_rollout.py): exit 3, rolled-back,
        # the canary rolled back, every other host not started
        s.check(r.returncode == 3, f"exit {r.returncode}, not 3: {r.stderr[-1500:]}")
        s.check(report.get("outcome") == "rolled-back", f"outcome {report.get('outcome')!r}")
        hosts = {h["host"]: h for h in report.get("hosts", [])}
        results = sorted(h["result"] for h in hosts.values())
        s.check(results == ["not-started"] * (N - 1) + ["rolled-back"], f"host results {results}")
        canary = [n for n, h in hosts.items() if h["result"] == "rolled-back"]
        if canary:
            s.notes.append(f"canary {canary[0]}: {hosts[canary[0]].get('error')}")
        s.events = self.journal(journal)
        want = {n: h["result"] for n, h in hosts.items()}
        s.problems += journal_problems(s.events, outcome="rolled-back", results=want, forward_batches=1)
        s.check(
            fleet_template(s.events, "source") == previous,
            f"the fleet's 1.1.0 template is {fleet_template(s.events, 'source')}, the MIG was on {previous}",
        )
        self.on_templates(s, previous, expected_templates(s.events, "source"), "previous (1.1.0)")
        return s

    def scenario_c(self) -> Scenario:
        s = Scenario("c", "replace rollout 1.1.0 -> 1.0.0, SIGKILL during batch 2, then `--resume`")
        journal = self.work / "c"
        load, before = self.load(), os.getloadavg()[0]
        t0 = time.monotonic()
        args = ["--health-timeout", str(HEALTH_TIMEOUT)]
        argv = self.argv("rollout", "--version", "1.0.0", "--strategy", "replace", "--yes", "--json")
        argv += ["--canary", str(CANARY), "--batch", str(BATCH), *args]
        proc = subprocess.Popen(
            argv,
            cwd=CHECKOUT,
            env=self.env(journal),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        killed_at = None
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and proc.poll() is None:
                paths = list(journal.rglob("*.jsonl"))
                if paths:
                    from fleet.rollout.journal import read

                    if forward_mig_calls(read(paths[0])) >= 2:  # the second batch's recreate went out
                        time.sleep(3)  # into its wait: its members are being recreated
                        proc.send_signal(signal.SIGKILL)
                        killed_at = time.monotonic() - t0
                        break
                time.sleep(0.2)
        finally:
            if proc.poll() is None and killed_at is None:
                proc.kill()
            _, err = proc.communicate(timeout=60)
        s.exit_codes = [proc.returncode]
        if killed_at is None:
            s.problems.append(
                f"the operator was not killed mid-rollout (exit {proc.returncode}): {err[-1500:]}"
            )
        else:
            s.notes.append(f"SIGKILL {killed_at:.1f} s after the start")
        killed = self.journal(journal)
        s.problems += killed_problems(killed)
        s.check(proc.returncode == -signal.SIGKILL, f"the operator exited {proc.returncode}, not by SIGKILL")
        r = self.fab(journal, "rollout", "--resume", "--yes", "--json", *args)
        s.seconds = time.monotonic() - t0
        time.sleep(2)
        self.traffic(s, load.stop(), {"1.0.0", "1.1.0"})
        s.loadavg = (before, os.getloadavg()[0])
        s.exit_codes.append(r.returncode)
        report = self.report_of(r, s)
        s.check(r.returncode == 0, f"--resume exit {r.returncode}, not 0: {r.stderr[-1500:]}")
        s.check(report.get("outcome") == "succeeded", f"--resume outcome {report.get('outcome')!r}")
        s.check(
            report.get("rollout_id") == killed[0].get("rollout_id"),
            f"--resume ran {report.get('rollout_id')}, not the killed {killed[0].get('rollout_id')}",
        )
        s.events = self.journal(journal)
        s.problems += journal_problems(s.events, outcome="succeeded", resumed=1)
        lock = self.fab(journal, "lock.status", "--json")
        s.check(
            lock.returncode == 0 and not json.loads(lock.stdout or "{}").get("held"),
            "the fleet lock is still held",
        )
        self.on_templates(
            s, fleet_template(s.events, "target"), expected_templates(s.events, "target"), "1.0.0"
        )
        return s

    # ----------------------------------------------------------------- main

    def run(self) -> list[Scenario]:
        from fleet.gcp.compute import Compute
        from fleet.local import compute_endpoint
        from fleet.local.engine import ensure_engine
        from fleet.local.instances import LocalFleet
        from fleet.local.progress import Progress
        from functions import fleet_contract as contract

        self.fleet = LocalFleet(self.cfg, progress=Progress(rich=False))
        ensure_engine(self.cfg)
        self.fleet.down()  # leftovers of an interrupted run
        try:
            t0 = time.monotonic()
            self.fleet.up(N)
            setup = self.work / "setup"
            self.checked(self.fab(setup, "bootstrap", "--json"))
            self.checked(self.fab(setup, "deploy", "--version", "1.0.0", "--json"))
            self.setup_seconds = time.monotonic() - t0
            url = compute_endpoint.endpoint_url(self.cfg)
            if url is None:
                raise ProofFailed("the fleet's Compute endpoint does not run")
            self.compute = Compute(url, op_timeout=60)
            self.ref = contract.MigRef.make(
                self.cfg.project, self.cfg.zone, compute_endpoint.mig_name(self.cfg)
            )
            scenarios = []
            for step in (self.scenario_a, self.scenario_b, self.scenario_c):
                s = step()
                print(summary_line(s), flush=True)
                for p in s.problems:
                    print(f"   FAILED: {p}", flush=True)
                scenarios.append(s)
            return scenarios
        finally:
            if os.environ.get("FLEET_LOCAL_KEEP") != "1":
                self.fleet.down()


def summary_line(s: Scenario) -> str:
    traffic = s.traffic.summary() if s.traffic is not None else "no load report"
    verdict = "ok" if not s.problems else f"{len(s.problems)} condition(s) FAILED"
    return f"({s.name}) {s.what}: {s.seconds:.1f} s, exit {s.exit_codes}; {traffic}; {verdict}"


def section(scenarios: Sequence[Scenario], setup_seconds: float) -> str:
    body = [
        f"A local fleet of its own (`replproof`, {N} instance containers behind the local MIG and haproxy) "
        f"is brought up, bootstrapped and deployed to 1.0.0 ({setup_seconds:.0f} s), then three "
        f"`fab rollout --strategy replace --canary {CANARY} --batch {BATCH}` runs (batches of 1, 2, 1 "
        f"members), each while a load generator sends ~{RATE} requests/s through the LB "
        f"({THREADS} threads) and counts every failure. Each member of a batch is a new container "
        "made by the MIG from the release's instance template, booted by the agent (image pull, compose up) "
        "and judged by its guest attributes and the LB. Every condition below was checked by the command.",
        "",
        "| scenario | wall s | exit | requests | failed | answered by | load avg (1 min) before / after |",
        "|---|---:|---|---:|---:|---|---|",
    ]
    for s in scenarios:
        t = s.traffic
        versions = ", ".join(f"{v}: {n}" for v, n in sorted(t.versions.items()))
        body.append(
            f"| ({s.name}) {s.what} | {s.seconds:.0f} | {', '.join(map(str, s.exit_codes))} | {t.requests} | "
            f"{t.failed} | {versions} | {s.loadavg[0]:.1f} / {s.loadavg[1]:.1f} |"
        )
    body += [
        "",
        "Checked: (a) exit 0, every host `updated`, the MIG and its 4 members on 1.1.0's template; "
        "(b) exit 3 and outcome `rolled-back` as the SSH strategy's broken canary (the canary "
        "`rolled-back`, the 3 others "
        "`not-started`, journal ending `rolled-back` after one forward batch), the MIG and every member on "
        "1.1.0's template again; (c) the killed run's journal has no `end` and its canary batch done, "
        "`--resume` exits 0 with the same rollout id and one `resume` in the journal, the lock is free, "
        "the MIG and every member on 1.0.0's template, RUNNING, none RECREATING. 0 failed requests in each "
        "(in (c) one load run spans the killed run and the resume).",
        "",
        "Batches from the journal (seconds from its `start` to its `done`; none: the operator died in it):",
        "",
        "| scenario | batch | hosts | seconds |",
        "|---|---|---:|---:|",
    ]
    for s in scenarios:
        for label, hosts, seconds in batch_times(s.events):
            shown = "killed in it" if seconds is None else f"{seconds:.1f}"
            body.append(f"| ({s.name}) | {label} | {len(hosts)} | {shown} |")
    body += ["", "Steps per host from the journal, done or failed (mean / max seconds, count):", ""]
    body += ["| scenario | " + " | ".join(STEPS) + " |", "|---|" + "---:|" * len(STEPS)]
    for s in scenarios:
        found = step_seconds(s.events)
        cells = [
            f"{statistics.mean(found[k]):.1f} / {max(found[k]):.1f} ({len(found[k])})" if k in found else "-"
            for k in STEPS
        ]
        body.append(f"| ({s.name}) | " + " | ".join(cells) + " |")
    body += [
        "",
        "`stage`: the release's templates exist and the host is a member; `replace`: from the batch's "
        "`applyUpdatesToInstances` until the new VM runs the template with no action left, the agent reports "
        "the release and the LB says HEALTHY (for the broken canary: until `--health-timeout` "
        f"{BROKEN_TIMEOUT} s); `bounce`: the failed canary recreated from the previous template until "
        "healthy; "
        "`soak`: min-ready, then the LB must still say HEALTHY.",
    ]
    notes = [n for s in scenarios for n in (f"({s.name}) {x}" for x in s.notes)]
    if notes:
        body += ["", *[f"- {n}" for n in notes]]
    return "\n".join(body)


STEPS = ("stage", "replace", "soak", "bounce")


def main() -> None:
    proof = Proof()
    try:
        scenarios = proof.run()
    except ProofFailed as exc:
        print(f"bench replace_fleet: FAILED: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    failed = [(s.name, p) for s in scenarios for p in s.problems]
    if failed:
        print("bench replace_fleet: the proof FAILED:", file=sys.stderr)
        for name, p in failed:
            print(f"  ({name}) {p}", file=sys.stderr)
        raise SystemExit(1)
    text = section(scenarios, proof.setup_seconds)
    print(text)
    write_section(
        "replace_fleet", f"`--strategy replace` on the local fleet: {N} instances under load", COMMAND, text
    )


if __name__ == "__main__":
    main()
