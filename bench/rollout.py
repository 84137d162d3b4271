"""Benchmark the rollout engine: `fab rollout` of 4 hosts, batch 1, on a local fleet of its own, with a
light load through the LB. Reports the engine's overhead over the floor, measured in the same run:

    floor  = the parallel `docker compose pull` of the staging phase (slowest host)
           + per host: the LB taking it out (haproxy's fall x inter), `docker compose up`, the time
             until every service is healthy, the LB taking it back (rise x inter), min-ready
    wall   = `fab rollout` from process start to exit (start-up, plan, lock, stage, batches, unlock)
    overhead = wall - floor: everything the engine itself adds (SSH round trips, marks, drain flag,
             switch, probes, history, journal, lock, beat checks, process start-up). Target <= 10%.

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.report import write_section
from fleet.loadgen import LoadGen
from fleet.local.config import LocalConfig
from fleet.local.engine import ensure_engine
from fleet.local.instances import LocalFleet
from fleet.local.progress import Progress

COMMAND = "python -m bench rollout"
N = 4
REPO = Path(__file__).resolve().parent.parent
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


def fab(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    fab_bin = str(Path(sys.executable).with_name("fab"))
    return subprocess.run([fab_bin, *args], cwd=REPO, env=env, capture_output=True, text=True, check=False)


def checked(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    if r.returncode != 0:
        raise SystemExit(
            f"bench rollout: {r.args[1:]} exited {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        )
    return r


def _epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def analyse(events: list[dict[str, Any]], min_ready: float) -> dict[str, Any]:
    steps: dict[str, dict[str, float]] = defaultdict(dict)
    for e in events:
        if e.get("event") == "step" and e.get("status") == "done":
            steps[e["host"]][e["step"]] = steps[e["host"]].get(e["step"], 0.0) + float(e["seconds"])
    pull = max(s.get("pull", 0.0) for s in steps.values())
    per_host = {h: sum(s.get(k, 0.0) for k in FLOOR_STEPS) + min_ready for h, s in steps.items()}
    return {"steps": steps, "pull": pull, "per_host": per_host, "floor": pull + sum(per_host.values())}


def main() -> None:
    fleet = LocalFleet(BENCH, progress=Progress(rich=False))
    ensure_engine(fleet.config)
    fleet.up(N)
    inv = str(fleet.inventory_dir)
    journal_dir = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    env = {**os.environ, "FLEET_JOURNAL_DIR": str(journal_dir), "FLEET_OPERATOR": "bench@local"}
    try:
        checked(fab(env, "bootstrap", "--inventory", inv))
        checked(fab(env, "deploy", "--inventory", inv, "--version", "1.0.0"))
        frontend = f"http://127.0.0.1:{BENCH.lb_port}"
        # light: the generator shares the 2 cores with the operator process being measured
        load = LoadGen(frontend, threads=1, rate=10, max_seconds=900).start()
        loadavg_before = os.getloadavg()[0]
        started_at = time.time()
        t0 = time.monotonic()
        r = fab(
            env,
            "rollout",
            "--inventory",
            inv,
            "--version",
            "1.1.0",
            "--yes",
            "--json",
            "--canary",
            "0",
            "--batch",
            "1",
        )
        wall = time.monotonic() - t0
        ended_at = time.time()
        loadavg_after = os.getloadavg()[0]
        traffic = load.stop()
        checked(r)
        report = json.loads(r.stdout)
        path = next(journal_dir.rglob("*.jsonl"))
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        plan = next(e for e in events if e["event"] == "plan")
        min_ready = float(plan["timings"]["min_ready"])
        a = analyse(events, min_ready)
        first, last = _epoch(events[0]["t"]), _epoch(events[-1]["t"])
    finally:
        fleet.down()

    floor = a["floor"]
    overhead = wall - floor
    pct = 100 * overhead / floor
    steps = a["steps"]

    def mean(step: str) -> str:
        values = [s[step] for s in steps.values() if step in s]
        return f"{statistics.mean(values):.2f}" if values else "-"

    rows = [
        ("`fab rollout` wall time (process start to exit)", f"{wall:.1f}"),
        ("floor: staging pull, slowest host (parallel)", f"{a['pull']:.1f}"),
        (
            f"floor: per host LB out + compose up + healthy + LB in + min-ready {min_ready:g}s, x{N}",
            f"{sum(a['per_host'].values()):.1f}",
        ),
        ("floor total", f"{floor:.1f}"),
        ("**engine overhead** (wall - floor)", f"**{overhead:.1f} ({pct:.1f}%)**"),
        (
            "  of which: process start, plan, lock (before the journal's first line)",
            f"{first - started_at:.1f}",
        ),
        (
            "  of which: unlock, summary, process exit (after the journal's last line)",
            f"{ended_at - last:.1f}",
        ),
        (
            "  of which: inside the run (stage checks and upload, per-host commands, beat checks)",
            f"{overhead - (first - started_at) - (ended_at - last):.1f}",
        ),
    ]
    body = [
        f"Rollout 1.0.0 -> 1.1.0 of {N} local instances, `--canary 0 --batch 1` ({N} batches), "
        f"a light load (one client, ~10 requests/s) through haproxy the whole time, counting failures "
        f"(the zero-downtime proof at ~80 requests/s is tests/integration/test_rollout.py).",
        "",
        "| | seconds |",
        "|---|---:|",
        *[f"| {label} | {value} |" for label, value in rows],
        "",
        f"Target: overhead <= 10% of the floor: **{'met' if pct <= 10 else 'NOT met'}** ({pct:.1f}%). "
        f"Outcome `{report['outcome']}`; load: {traffic.summary()}. "
        f"Machine load average (1 min) {loadavg_before:.1f} before, {loadavg_after:.1f} after: the 2 cores "
        "are shared, and the CPU-bound parts (process start-up, imports) stretch with it.",
        "",
        "Mean seconds per host and step (floor steps first, then the engine's own):",
        "",
        "| " + " | ".join((*FLOOR_STEPS, "soak", "stage", "pull", *ENGINE_STEPS)) + " |",
        "|" + "---:|" * (len(FLOOR_STEPS) + 3 + len(ENGINE_STEPS)),
        "| " + " | ".join(mean(s) for s in (*FLOOR_STEPS, "soak", "stage", "pull", *ENGINE_STEPS)) + " |",
        "",
        "`soak` is min-ready plus one /health probe and one look at the LB; only min-ready is floor.",
        "`stage` (Docker probe, disk check, upload, `compose config`) runs on every host in parallel "
        "before the first batch.",
    ]
    text = "\n".join(body)
    print(text)
    write_section("rollout", f"Rollout engine: {N} hosts, batch 1", COMMAND, text)


if __name__ == "__main__":
    main()
