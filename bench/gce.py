"""Benchmark the GCE integration: MIG inventory load, `fab hosts` start-up, the cost of host keys from
guest attributes per connection, and (unless FLEET_BENCH_GCE_DOCKER=0) how long the local MIG takes
to reset, recreate and grow an instance until it serves the fleet's release again.

Everything goes through the real google-cloud-compute client against local endpoints.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from bench.report import write_section

COMMAND = "python -m bench gce"
MEMBERS = 50
SSHD_HOSTS = 10
RUNS = 5


def _median(fn: Callable[[], object], runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        start = time.monotonic()
        fn()
        times.append(time.monotonic() - start)
    return statistics.median(times)


def _inventory(path: Path, url: str, extra: dict[str, object] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "key").write_text("placeholder\n")
    defaults = {
        "username": "deploy",
        "data": {
            "ssh": {"key_file": "key", "proxy": "iap"},
            "gce": {
                "project": "bench-project",
                "api_endpoint": url,
                "migs": [{"zone": "europe-west1-b", "name": "dify-mig"}],
            },
            **(extra or {}),
        },
    }
    (path / "defaults.yaml").write_text(yaml.safe_dump(defaults))
    return path


def inventory_rows(tmp: Path) -> list[tuple[str, str, str]]:
    from fleet import inventory
    from standins.compute_api import ComputeApi
    from standins.compute_state import InMemoryCompute

    backend = InMemoryCompute()
    backend.add_mig("bench-project", "europe-west1-b", "dify-mig", size=MEMBERS)
    rows = []
    with ComputeApi(backend) as api:
        path = _inventory(tmp / "mig", api.url)
        inventory.load(str(path))  # warm: clients created, imports done
        api.clear_calls()
        load = _median(lambda: inventory.load(str(path)))
        calls = len(api.calls()) // RUNS
        rows.append(
            (
                f"inventory.load of a MIG with {MEMBERS} members, median of {RUNS}",
                f"{load * 1000:.0f} ms",
                f"{calls} API calls per load",
            )
        )
        fab = str(Path(sys.executable).with_name("fab"))
        cli = _median(
            lambda: subprocess.run([fab, "hosts", "--inventory", str(path)], capture_output=True, check=True),
            3,
        )
        rows.append(
            ("`fab hosts` on it (process start, imports, load, table), median of 3", f"{cli:.2f} s", "")
        )
    backend.close()
    return rows


def hostkey_rows(tmp: Path) -> list[tuple[str, str, str]]:
    from fleet import inventory
    from fleet.local.sshd_hosts import SshdFleet
    from fleet.ssh.runner import command_step, run_on
    from standins.compute_api import ComputeApi
    from standins.compute_state import InMemoryCompute

    fleet = SshdFleet(tmp / "sshd").create(SSHD_HOSTS).start()
    backend = InMemoryCompute()
    names = backend.add_mig("bench-project", "europe-west1-b", "dify-mig", size=SSHD_HOSTS)
    try:
        with ComputeApi(backend) as api:
            for name, host in zip(names, fleet.hosts, strict=True):
                kind, b64 = host.host_key_pub.split()[:2]
                backend.update_instance(
                    "bench-project", "europe-west1-b", name, guest_attributes={f"hostkeys/{kind}": b64}
                )
            path = _inventory(
                tmp / "keys",
                api.url,
            )
            doc = yaml.safe_load((path / "defaults.yaml").read_text())
            doc["username"] = fleet.user
            doc["data"]["ssh"] = {"key_file": str(fleet.key_file), "proxy": "none", "connect_retries": 0}
            doc["data"]["gce"]["discovery"] = "mig"
            (path / "defaults.yaml").write_text(yaml.safe_dump(doc))
            hosts = {
                n: {"hostname": "127.0.0.1", "port": h.port} for n, h in zip(names, fleet.hosts, strict=True)
            }
            (path / "hosts.yaml").write_text(yaml.safe_dump(hosts))
            pinned = "".join(h.known_hosts_line + "\n" for h in fleet.hosts)  # under 127.0.0.1:port
            inv = inventory.load(str(path))

            def fan_out() -> None:
                results = run_on(inv, list(inv.hosts.values()), command_step("true"))
                assert all(r.ok for r in results), [r.error for r in results if not r.ok]

            (path / "known_hosts").write_text("")
            fan_out()
            guest = _median(fan_out, 3)
            (path / "known_hosts").write_text(pinned)
            doc["data"]["ssh"]["host_keys"] = "known_hosts"
            (path / "defaults.yaml").write_text(yaml.safe_dump(doc))
            inv = inventory.load(str(path))
            fan_out()
            pinned_only = _median(fan_out, 3)
    finally:
        fleet.destroy()
        backend.close()
    return [
        (
            f"connect + `true` on {SSHD_HOSTS} sshd hosts, keys from guest attributes, median of 3",
            f"{guest:.2f} s",
            "",
        ),
        (
            "the same with the keys pinned in known_hosts only, median of 3",
            f"{pinned_only:.2f} s",
            f"guest attributes add {(guest - pinned_only) * 1000 / SSHD_HOSTS:+.0f} ms per host",
        ),
    ]


def docker_rows() -> list[tuple[str, str, str]]:
    """The local MIG: one fleet of its own (the test module's names), 2 instances on 1.0.0."""
    from fleet.gcp.compute import Compute
    from fleet.local import compute_endpoint
    from fleet.local.config import LocalConfig
    from fleet.local.instances import LocalFleet
    from fleet.local.progress import Progress
    from functions import fleet_contract as contract

    cfg = LocalConfig(
        name="benchgce",
        container_prefix="fleet-benchgce",
        host_prefix="benchgce",
        network="fleet-benchgce",
        subnet="10.220.0.0/24",
        ssh_base=3100,
        http_base=9100,
        lb_port=18480,
    )
    fleet = LocalFleet(cfg, progress=Progress(rich=False))
    fab = str(Path(sys.executable).with_name("fab"))
    rows = []
    fleet.down()
    try:
        fleet.up(2)
        for task in (["bootstrap"], ["deploy", "--version", "1.0.0"]):
            subprocess.run(
                [fab, *task, "--inventory", str(cfg.inventory_dir)], capture_output=True, check=True
            )
        compute = Compute(compute_endpoint.endpoint_url(cfg), op_timeout=120)
        ref = contract.MigRef.make(cfg.project, cfg.zone, compute_endpoint.mig_name(cfg))

        def until_stable(start: float) -> float:
            compute.wait_stable(ref, timeout=300, poll=0.2)
            return time.monotonic() - start

        start = time.monotonic()
        compute.resize(ref, 3)
        rows.append(
            (
                "resize 2 -> 3 until stable (create, bootstrap, pull, start 1.0.0, healthy)",
                f"{until_stable(start):.1f} s",
                "",
            )
        )
        new = compute.mig_members(ref)[-1]
        start = time.monotonic()
        compute.recreate(ref, [new])
        rows.append(
            (
                "recreate one member until stable (new container and key, startup deploy)",
                f"{until_stable(start):.1f} s",
                "",
            )
        )
        start = time.monotonic()
        compute.reset(cfg.project, cfg.zone, new.name)
        rows.append(
            ("reset (docker restart) until the operation is DONE", f"{time.monotonic() - start:.1f} s", "")
        )
        start = time.monotonic()
        compute.resize(ref, 2)
        rows.append(
            (
                "resize 3 -> 2 until stable (out of the LB, container removed)",
                f"{until_stable(start):.1f} s",
                "",
            )
        )
    finally:
        fleet.down()
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = inventory_rows(Path(tmp))
        rows += hostkey_rows(Path(tmp))
    if os.environ.get("FLEET_BENCH_GCE_DOCKER", "1") != "0":
        rows += docker_rows()
    load = os.getloadavg()[0]
    body = "| what | time | note |\n|---|---|---|\n" + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows)
    body += f"\nLoad average (1 min) when it finished: {load:.1f} on {os.cpu_count()} cores.\n"
    write_section(
        "gce", "GCE integration: MIG inventory, guest-attribute host keys, local MIG actions", COMMAND, body
    )
    print(body)


if __name__ == "__main__":
    main()
