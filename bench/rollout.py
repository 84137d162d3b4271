"""Benchmark the rollout engine: a rollout of 4 hosts, batch 1, on a local fleet of its own, with a
light load through the LB, through the library call `fab rollout` makes (fleet.rollout.service). Two
runs (1.0.0 -> 1.1.0, then back to 1.0.0); each reports the engine's overhead over the floor,
measured in the same run:

    floor  = the parallel `docker compose pull` of the staging phase (slowest host)
           + per host: the LB taking it out (haproxy's fall x inter), `docker compose up`, the time
             until every service is healthy, the LB taking it back (rise x inter), min-ready
    wall   = the rollout call from start to return (plan, lock, stage, batches, unlock); `fab`'s own
             process start-up is not in it (docs/PERFORMANCE.md measures that for `fab --list`)
    overhead = wall - floor: everything the engine itself adds (SSH round trips, labels, drain flag,
             switch, probes, history, journal, lock, beat checks). Target <= 10%.

Floor components are the engine's own step timers (each one is exactly one raw command or wait),
read from the rollout's journal.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.report import write_section
from fleet.local.config import LocalConfig
from fleet.local.engine import ensure_engine
from fleet.local.instances import LocalFleet
from fleet.local.progress import Progress
from fleet.paths import CHECKOUT
from fleet.rollout import Report
from fleet.scenarios.loadgen import LoadGen, LoadReport

COMMAND = "python -m bench rollout"
N = 4
REPO = CHECKOUT
# a fleet of its own, so the benchmark never touches the default fleet or the tests' fleet
BENCH = LocalConfig(
    name="rollout-bench",
    container_prefix="fleet-rb",
    host_prefix="rb",
    network="fleet-rb",
    subnet="10.216.0.0/24",
    ssh_base=2760,
    http_base=8760,
    lb_port=18280,
)
FLOOR_STEPS = ("lb-out", "up", "verify", "lb-in")
ENGINE_STEPS = ("state", "mark", "drain", "switch", "undrain", "serve", "record", "unmark")
SHOWN = (*FLOOR_STEPS, "soak", "stage", "pull", *ENGINE_STEPS)


def fab(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    fab_bin = str(Path(sys.executable).with_name("fab"))
    return subprocess.run([fab_bin, *args], cwd=REPO, env=env, capture_output=True, text=True, check=False)


def rollout(inv: str, version: str) -> Report:
    """`fab rollout --inventory INV --version VERSION --yes --canary 0 --batch 1`, as the call it makes."""
    from fleet.rollout import service

    outcome = service.rollout(inv, version=version, canary=0, batch="1")
    if outcome.report is None:
        raise SystemExit(f"bench rollout: nothing to do rolling out {version}")
    if outcome.report.exit_code != 0:
        raise SystemExit(
            f"bench rollout: {version} ended {outcome.report.outcome}: {outcome.report.problems}"
        )
    return outcome.report


def deploy(inv: str, version: str) -> None:
    from fleet.rollout import deploy as dp

    report = dp.deploy_release(inv, version=version)
    if not report.ok:
        raise SystemExit(f"bench rollout: deploy {version} failed: {[o.as_dict() for o in report.outcomes]}")


def checked(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    if r.returncode != 0:
        raise SystemExit(
            f"bench rollout: {r.args[1:]} exited {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        )
    return r


def _epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


@dataclass
class Run:
    change: str
    wall: float
    pull: float
    per_host: float
    before_journal: float  # plan, lock
    after_journal: float  # unlock
    steps: dict[str, dict[str, float]]
    outcome: str
    traffic: LoadReport
    loadavg: tuple[float, float]

    @property
    def floor(self) -> float:
        return self.pull + self.per_host

    @property
    def overhead(self) -> float:
        return self.wall - self.floor

    @property
    def pct(self) -> float:
        return 100 * self.overhead / self.floor

    def mean(self, step: str) -> str:
        values = [s[step] for s in self.steps.values() if step in s]
        return f"{statistics.mean(values):.2f}" if values else "-"


def measure(inv: str, journal_dir: Path, old: str, new: str) -> Run:
    for stale in journal_dir.rglob("*.jsonl"):
        stale.unlink()
    # light: the generator shares the 2 cores with the operator process being measured
    load = LoadGen(f"http://127.0.0.1:{BENCH.lb_port}", threads=1, rate=10, max_seconds=900).start()
    before = os.getloadavg()[0]
    started_at = time.time()
    t0 = time.monotonic()
    report = rollout(inv, new)
    wall = time.monotonic() - t0
    ended_at = time.time()
    after = os.getloadavg()[0]
    traffic = load.stop()
    events = [json.loads(x) for x in next(journal_dir.rglob("*.jsonl")).read_text().splitlines() if x.strip()]
    min_ready = float(next(e for e in events if e["event"] == "plan")["timings"]["min_ready"])
    steps: dict[str, dict[str, float]] = defaultdict(dict)
    for e in events:
        if e.get("event") == "step" and e.get("status") == "done":
            steps[e["host"]][e["step"]] = steps[e["host"]].get(e["step"], 0.0) + float(e["seconds"])
    return Run(
        change=f"{old} -> {new}",
        wall=wall,
        pull=max(s.get("pull", 0.0) for s in steps.values()),
        per_host=sum(sum(s.get(k, 0.0) for k in FLOOR_STEPS) + min_ready for s in steps.values()),
        before_journal=_epoch(events[0]["t"]) - started_at,
        after_journal=ended_at - _epoch(events[-1]["t"]),
        steps=steps,
        outcome=report.outcome,
        traffic=traffic,
        loadavg=(before, after),
    )


def main() -> None:
    fleet = LocalFleet(BENCH, progress=Progress(rich=False))
    ensure_engine(fleet.config)
    fleet.up(N)
    inv = str(fleet.inventory_dir)
    journal_dir = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    # the rollouts run in this process: the journal and the operator come from its environment
    os.environ.update({"FLEET_JOURNAL_DIR": str(journal_dir), "FLEET_OPERATOR": "bench@local"})
    try:
        checked(fab(dict(os.environ), "bootstrap", "--inventory", inv))
        deploy(inv, "1.0.0")
        runs = [
            measure(inv, journal_dir, "1.0.0", "1.1.0"),
            measure(inv, journal_dir, "1.1.0", "1.0.0"),
        ]
    finally:
        fleet.down()

    def cells(f: Any) -> str:
        return " | ".join(f(r) for r in runs)

    rows = [
        ("rollout wall time (the library call `fab rollout` makes)", cells(lambda r: f"{r.wall:.1f}")),
        ("floor: staging pull, slowest host (hosts in parallel)", cells(lambda r: f"{r.pull:.1f}")),
        (
            f"floor: per host LB out + compose up + healthy + LB in + min-ready, x{N}",
            cells(lambda r: f"{r.per_host:.1f}"),
        ),
        ("floor total", cells(lambda r: f"{r.floor:.1f}")),
        ("**engine overhead** (wall - floor)", cells(lambda r: f"**{r.overhead:.1f} ({r.pct:.1f}%)**")),
        (
            "- plan, lock (before the journal's first line)",
            cells(lambda r: f"{r.before_journal:.1f}"),
        ),
        ("- unlock (after its last line)", cells(lambda r: f"{r.after_journal:.1f}")),
        (
            "- inside the run (staging checks and upload, per-host commands, beat checks)",
            cells(lambda r: f"{r.overhead - r.before_journal - r.after_journal:.1f}"),
        ),
        (
            "machine load average (1 min), before / after",
            cells(lambda r: f"{r.loadavg[0]:.1f} / {r.loadavg[1]:.1f}"),
        ),
    ]
    pcts = [r.pct for r in runs]
    body = [
        f"Rollouts of {N} local instances with `--canary 0 --batch 1` ({N} batches of one host), while one "
        "client sends ~10 requests/s through haproxy and counts failures (the zero-downtime proof at "
        "~80 requests/s is tests/integration/test_rollout.py). Waits are the local inventory's: haproxy "
        "checks every 1 s (fall 2, rise 2), min-ready 1 s.",
        "",
        "| | " + " | ".join(r.change for r in runs) + " |",
        "|---|" + "---:|" * len(runs),
        *[f"| {label} | {value} |" for label, value in rows],
        "",
        f"Target: overhead <= 10% of the floor: **{'met' if max(pcts) <= 10 else 'NOT met'}** "
        f"({', '.join(f'{p:.1f}%' for p in pcts)}). Outcomes: {', '.join(r.outcome for r in runs)}; "
        "load: " + "; ".join(r.traffic.summary() for r in runs) + ".",
        "The 2 cores are shared with other work: the CPU-bound parts (the Compute "
        "client's import, SSH handshakes) stretch with the load average.",
        "",
        "Mean seconds per host and step (floor steps first, then the engine's own):",
        "",
        "| run | " + " | ".join(SHOWN) + " |",
        "|---|" + "---:|" * len(SHOWN),
        *[f"| {r.change} | " + " | ".join(r.mean(s) for s in SHOWN) + " |" for r in runs],
        "",
        "`soak` is min-ready plus one look at the LB; only min-ready is floor. `stage` (state under the "
        "lock, upload, `compose config`) runs on every host in parallel before the first batch; Docker "
        "and disk are checked while planning. `unmark` runs off the critical path.",
    ]
    text = "\n".join(body)
    print(text)
    write_section("rollout", f"Rollout engine: {N} hosts, batch 1", COMMAND, text)


if __name__ == "__main__":
    main()
