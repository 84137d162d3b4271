"""Benchmark the local fleet: cold image build from nothing, warm `up` of 4 instances, `down`.

Targets (issue 3): warm up of 4 instances under 10 s, cold build under 3 minutes. The cold build
removes every local image first (set FLEET_BENCH_COLD=0 to skip it when images are already built).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

from bench.report import write_section
from fleet.local import images
from fleet.local.config import LocalConfig
from fleet.local.engine import ensure_engine
from fleet.local.instances import LocalFleet
from fleet.local.progress import Progress

COMMAND = "python -m bench local_fleet"
WARM_RUNS = 3
N = 4
# a fleet of its own (names, network, ports, LB, inventory), so the benchmark's up/down cycles never
# touch the default fleet that tests or an operator may be using at the same time
BENCH = LocalConfig(
    name="bench",
    container_prefix="fleet-bench",
    host_prefix="bench",
    network="fleet-bench",
    subnet="10.214.0.0/24",
    ssh_base=2600,
    http_base=8600,
    lb_port=18080,
)


def _timed(fn: Callable[[], object]) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def main() -> None:
    fleet = LocalFleet(BENCH, progress=Progress(rich=False))
    cold = os.environ.get("FLEET_BENCH_COLD", "1") != "0"
    ensure_engine(fleet.config)
    rows: list[tuple[str, str, str, str]] = []

    if cold:
        fleet.down()
        images.clean(fleet.config, fleet.progress)  # global: every fleet's images (running ones keep theirs)
        seconds = _timed(lambda: images.build_all(fleet.config, fleet.progress))
        rows.append(
            (
                "cold build from nothing (debootstrap, 12 images, registry push, tarball)",
                f"{seconds:.1f}",
                "< 180",
                "yes" if seconds < 180 else "NO",
            )
        )
    else:
        images.build_all(fleet.config, fleet.progress)

    ups, downs = [], []
    for _ in range(WARM_RUNS):
        fleet.down()
        ups.append(_timed(lambda: fleet.up(N)))
        downs.append(_timed(fleet.down))
    up_med, down_med = statistics.median(ups), statistics.median(downs)
    rows.append(
        (
            f"warm `up` of {N} instances (sshd + inner dockerd ready, inventory, LB), median of {WARM_RUNS}",
            f"{up_med:.1f}",
            "< 10",
            "yes" if up_med < 10 else "NO",
        )
    )
    rows.append(
        (
            f"`down` of {N} instances + LB, median of {WARM_RUNS}",
            f"{down_med:.1f}",
            "",
            "",
        )
    )

    # single-instance operations on a running fleet
    fleet.up(N, build=False)
    holder: dict[str, str] = {}
    ops = [
        (
            "`add_instance` (one more; the others untouched)",
            lambda: holder.update(name=fleet.add_instance().name),
        ),
        (
            "`restart_instance` (docker restart = reboot, until ready)",
            lambda: fleet.restart_instance(holder["name"]),
        ),
        (
            "`recreate_instance` (new disk and host key, until ready)",
            lambda: fleet.recreate_instance(holder["name"]),
        ),
        ("`remove_instance`", lambda: fleet.remove_instance(holder["name"])),
    ]
    for label, op in ops:
        rows.append((label, f"{_timed(op):.1f}", "", ""))
    fleet.down()

    body = ["| step | seconds | target | met |", "|---|---:|---:|---|"]
    body += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    body.append("")
    up_runs = ", ".join(f"{u:.1f}" for u in ups)
    down_runs = ", ".join(f"{d:.1f}" for d in downs)
    body.append(f"Warm up runs: {up_runs} s; down runs: {down_runs} s.")
    text = "\n".join(body)
    print(text)
    write_section("local_fleet", "Local fleet: build, up, down", COMMAND, text)


if __name__ == "__main__":
    main()
