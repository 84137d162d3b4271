"""Benchmark the self-healing loop on a local fleet of its own: time from failure to healthy.

Each heal run breaks one instance's api (stopped, and it does not come back on a reboot) and times,
from the break: the incident, autoheal's reset, the second incident, the recreate, the new instance
UP in the load balancer, the incidents closed and the notifications posted. One scale run times the
scale-out under load and the scale-in under a light load, and counts failed requests.

The figures depend on the alert path's settings (written next to them) and mostly on how long a new
instance's startup script takes (bootstrap + pull + compose up), i.e. on the machine's load.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.report import write_section
from fleet.local.config import LocalConfig
from fleet.local.instances import LocalFleet
from fleet.local.progress import Progress
from fleet.paths import CHECKOUT
from fleet.scenarios.alertpath import AlertPath, AlertPathSettings
from fleet.scenarios.monitor import MonitorSettings
from fleet.scenarios.selfheal import HealReport, run_heal, run_scale, wait_stable

COMMAND = "python -m bench selfheal"
REPO = CHECKOUT
INSTANCES = 3
HEAL_RUNS = int(os.environ.get("FLEET_BENCH_HEAL_RUNS", "2"))
VERSION = "1.0.0"
# a fleet of its own, so breaking and resizing never touches the default fleet or the tests' fleets
CONFIG = LocalConfig(
    name="healbench",
    container_prefix="fleet-hb",
    host_prefix="hb",
    network="fleet-hb",
    subnet="10.223.0.0/24",
    ssh_base=3200,
    http_base=9200,
    lb_port=18680,
)
SETTINGS = AlertPathSettings(monitor=MonitorSettings(load_high=3.0, load_low=1.0))
HIGH_RATE, LOW_RATE = 24.0, 2.0


def fab(*args: str) -> None:
    fab_bin = Path(sys.executable).with_name("fab")
    subprocess.run([str(fab_bin), *args, "--inventory", str(CONFIG.inventory_dir)], cwd=REPO, check=True)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _heal_table(runs: list[HealReport]) -> str:
    labels = [label for label, _ in runs[0].timings()]
    head = (
        "| seconds from the break | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " | median |"
    )
    rows = [head, "|---|" + "---:|" * (len(runs) + 1)]
    for n, label in enumerate(labels):
        values = [r.timings()[n][1] for r in runs]
        seen = [v for v in values if v is not None]
        median = statistics.median(seen) if seen else None
        rows.append(f"| {label} | " + " | ".join(_fmt(v) for v in values) + f" | {_fmt(median)} |")
    return "\n".join(rows)


def main() -> None:
    fleet = LocalFleet(CONFIG, progress=Progress(rich=False))
    s = SETTINGS
    m = s.monitor
    try:
        fleet.up(INSTANCES)
        fab("bootstrap")
        fab("deploy", "--version", VERSION)
        with AlertPath(CONFIG, s) as path:
            wait_stable(path)
            runs = []
            for i in range(HEAL_RUNS):
                victim = CONFIG.host_name(INSTANCES - (i % (INSTANCES - 1)))  # never the beat host
                started = time.monotonic()
                runs.append(run_heal(path, fleet, victim))
                print(f"heal run {i + 1} on {victim}: {time.monotonic() - started:.1f} s", flush=True)
                wait_stable(path)
            scale = run_scale(path, fleet, high_rate=HIGH_RATE, low_rate=LOW_RATE)
            wait_stable(path)
    finally:
        if os.environ.get("FLEET_LOCAL_KEEP") != "1":
            fleet.down()

    ladder = ", ".join(f"{d} ({r})" for d, r in runs[0].decisions)
    healthy = [r.healthy_at - r.broken_at for r in runs]
    scale_rows = "\n".join(f"| {label} | {_fmt(v)} |" for label, v in scale.timings())
    high, low = scale.high_load, scale.low_load
    load = os.getloadavg()[0]
    body = f"""A local fleet of {INSTANCES} instances on release {VERSION}, its own alert path running
(`fleet/scenarios/alertpath.py`). Settings: uptime check every {m.period:g} s (timeout {m.timeout:g} s),
incident after {m.fail_after} failed checks, second incident after {m.escalate_after}, closed after
{m.pass_after} passes, renotify every {m.renotify:g} s; autoheal initial delay {s.heal_initial_delay} s,
settle {s.heal_settle} s; the LB checks every 1 s (rise 2, fall 2). Load average when it ended:
{load:.1f} (the machine is shared; a new instance's startup script dominates and slows down with it).

**Failure to healthy: {statistics.median(healthy):.1f} s** (median of {len(runs)} runs; each: the api
stopped so that a reboot does not bring it back, autoheal's ladder was {ladder}).

{_heal_table(runs)}

Scale (load through the LB, thresholds {m.load_high:g} / {m.load_low:g} requests/s per serving instance,
{m.load_rounds} checks; high load {HIGH_RATE:g}/s, light load {LOW_RATE:g}/s):

| step | seconds |
|---|---:|
{scale_rows}

High load: {high.summary() if high else "-"}.
Light load during the scale-in: {low.summary() if low else "-"}.
"""
    write_section("selfheal", "Self-healing: failure to healthy, scale out and in", COMMAND, body)
    print(body)


if __name__ == "__main__":
    main()
