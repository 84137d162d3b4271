"""Benchmark a VM the MIG creates on its own: from the resize request until it serves, split into the
on-VM agent's steps (boot, fetch, bootstrap, stage + pull, start + health, undrain, LB), and the
release store's cost per rollout (seal, upload, move desired, history).

One local fleet of its own (2 instances on 1.0.0, deployed by `fab`, which publishes to the store);
then RUNS times: resize 2 -> 3, time the new member's boot from its agent's log (the startup script's
output in the Compute endpoint's log), resize back to 2. Everything a real MIG would do: the startup
script runs inside the new instance, fetched from the metadata server; no operator code is involved.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.report import write_section

COMMAND = "python -m bench agent"
RUNS = 3
STEPS = ("config", "desired", "fetch", "bootstrap", "drain", "preflight", "activate", "serve")


def _config() -> Any:
    from fleet.local.config import LocalConfig

    return LocalConfig(
        name="benchagent",
        container_prefix="fleet-benchagent",
        host_prefix="benchagent",
        network="fleet-benchagent",
        subnet="10.221.0.0/24",
        ssh_base=3300,
        http_base=9300,
        lb_port=18580,
    )


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def agent_steps(log: Path, member: str, since: float) -> dict[str, float]:
    """step -> epoch seconds of the member's last boot after `since`, from the endpoint's log."""
    prefix = f"startup {member}: "
    steps: dict[str, float] = {}
    for line in log.read_text().splitlines():
        _, _, rest = line.partition(" ")
        if not rest.startswith(prefix):
            continue
        try:
            entry = json.loads(rest[len(prefix) :])
        except ValueError:
            continue
        at = _epoch(entry["ts"])
        if at < since:
            continue
        if entry["step"] == "config":
            steps = {}
        steps.setdefault(entry["step"], at)
    return steps


def boot_rows(fleet: Any, cfg: Any) -> list[tuple[str, str, str]]:
    from fleet.gcp.compute import Compute
    from fleet.local import compute_endpoint
    from functions import fleet_contract as contract

    compute = Compute(compute_endpoint.endpoint_url(cfg), op_timeout=120)
    ref = contract.MigRef.make(cfg.project, cfg.zone, compute_endpoint.mig_name(cfg))
    log = compute_endpoint.state_dir(cfg) / "compute.log"
    phases: dict[str, list[float]] = {}
    for _ in range(RUNS):
        before = {m.name for m in compute.mig_members(ref)}
        t0 = time.time()
        compute.resize(ref, len(before) + 1)
        compute.wait_stable(ref, timeout=300, poll=0.2)
        (new,) = [m.name for m in compute.mig_members(ref) if m.name not in before]
        assert fleet.lb.wait_for(new, ("UP",), timeout=120)
        t_up = time.time()
        s = agent_steps(log, new, t0)
        missing = [x for x in ("config", "fetch", "drain", "preflight", "activate", "serve") if x not in s]
        if missing:
            raise RuntimeError(f"{new}: agent steps {missing} not in {log}")
        marks = [
            ("VM created, started; startup script fetched the agent", t0, s["config"]),
            ("agent: desired release, manifest, archive, secrets", s["config"], s["fetch"]),
            ("agent: bootstrap (Docker, layout)", s["fetch"], s["drain"]),
            ("agent: stage + validate + pull images", s["drain"], s["preflight"]),
            ("agent: start + healthy (drained)", s["preflight"], s["activate"]),
            ("agent: undrain, /health 200", s["activate"], s["serve"]),
            ("LB health checks: UP", s["serve"], t_up),
            ("resize request -> serving through the LB", t0, t_up),
        ]
        for label, a, b in marks:
            phases.setdefault(label, []).append(b - a)
        compute.resize(ref, len(before))
        compute.wait_stable(ref, timeout=300, poll=0.2)
    return [
        (label, f"{statistics.median(v):.1f} s", " / ".join(f"{x:.1f}" for x in v))
        for label, v in phases.items()
    ]


def store_rows(cfg: Any) -> list[tuple[str, str, str]]:
    from fleet import inventory
    from fleet.rollout import deploy as dp
    from fleet.rollout import publish

    inv = inventory.load(str(cfg.inventory_dir))
    hosts = list(inv.hosts.values())
    cold, warm = [], []
    for i in range(RUNS):
        bundles = dp.render_all(inv, hosts, version=f"1.0.{i + 10}")
        start = time.monotonic()
        publish.publish_release(inv, bundles, action="publish", actor="bench", rollout_id=None, warn=print)
        cold.append(time.monotonic() - start)
        start = time.monotonic()
        publish.publish_release(inv, bundles, action="publish", actor="bench", rollout_id=None, warn=print)
        warm.append(time.monotonic() - start)
    return [
        (
            f"publish a new release ({len(hosts)} hosts, 2 variants): secrets pinned, sealed, uploaded, "
            "desired moved, history",
            f"{statistics.median(cold) * 1000:.0f} ms",
            " / ".join(f"{x * 1000:.0f}" for x in cold),
        ),
        (
            "publish the same release again (the generation precondition refuses each upload; "
            "the stored objects are read back and compared)",
            f"{statistics.median(warm) * 1000:.0f} ms",
            " / ".join(f"{x * 1000:.0f}" for x in warm),
        ),
    ]


def main() -> None:
    from fleet.local.instances import LocalFleet
    from fleet.local.progress import Progress

    cfg = _config()
    fleet = LocalFleet(cfg, progress=Progress(rich=False))
    fab = str(Path(sys.executable).with_name("fab"))
    load_before = os.getloadavg()[0]
    fleet.down()
    try:
        fleet.up(2)
        for task in (["bootstrap"], ["deploy", "--version", "1.0.0"]):
            subprocess.run(
                [fab, *task, "--inventory", str(cfg.inventory_dir)], capture_output=True, check=True
            )
        rows = boot_rows(fleet, cfg)
        rows += store_rows(cfg)
    finally:
        fleet.down()
    load_after = os.getloadavg()[0]
    body = [
        f"A VM the local MIG creates on its own, until it serves the fleet's release through the LB ({RUNS}"
        " runs: median, then each run). The agent's steps come from its own log (millisecond"
        f" timestamps). Load average {load_before:.1f} before, {load_after:.1f} after.",
        "",
        "| phase | median | runs |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        "The images come from the local registry on the same machine, so `pull` is far shorter than from",
        "Artifact Registry over Cloud NAT; the LB's checks are haproxy's (rise 2 at 1 s intervals here).",
        "The store's cost is paid once per successful deploy, rollout or rollback, after the hosts are done.",
    ]
    write_section(
        "agent", "A VM booting the fleet's release by itself (on-VM agent)", COMMAND, "\n".join(body)
    )


if __name__ == "__main__":
    main()
