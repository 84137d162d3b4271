"""A rollout's host step over the host's already-open connection, beside a raw OpenSSH ControlMaster
round trip (issue 17, requirement 4).

fab side: one Nornir built for one sshd host (what a rollout holds), a first step opens the connection;
each timed step is `run_step` of a step running `true` through `HostContext.run` (the Nornir run, the
channel, the command, the result). Raw side: a ControlMaster (ControlPersist) to the same host, each
timed round trip is a whole `ssh -o ControlPath=... host true` process multiplexed over it. Both sides
alternate, so drift in machine load hits both alike.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.report import write_section
from fleet.inventory import load, select
from fleet.local.sshd_hosts import SshdFleet
from fleet.ssh.runner import HostContext, HostResult, build_nornir, run_step

ROUNDS = int(os.environ.get("BENCH_STEP_ROUNDS", "30"))


def step(ctx: HostContext) -> HostResult:
    r = ctx.run("true")
    return HostResult(host=ctx.host.name, status="ok" if r.exited == 0 else "failed")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fleet = SshdFleet(Path(tmp)).create(1).start()
        control = Path(tmp) / "cm.sock"
        h = fleet.hosts[0]
        base = [
            "ssh",
            "-q",
            "-F",
            os.devnull,
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={fleet.inventory_dir / 'known_hosts'}",
            "-o",
            "KexAlgorithms=curve25519-sha256",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"ControlPath={control}",
            "-i",
            str(fleet.key_file),
            "-p",
            str(h.port),
        ]
        target = f"{fleet.user}@127.0.0.1"
        inv = load(str(fleet.inventory_dir))
        nr = build_nornir(inv, select(inv, hosts=[h.name]))
        try:
            subprocess.run(
                [*base, "-o", "ControlMaster=yes", "-o", "ControlPersist=120", "-f", "-N", "--", target],
                check=True,
            )
            assert run_step(nr, step)[0].ok  # opens the connection, as a rollout's first step does
            fab_t, raw_t = [], []
            load_before = os.getloadavg()[0]
            for _ in range(ROUNDS):
                started = time.perf_counter()
                (result,) = run_step(nr, step)
                fab_t.append(time.perf_counter() - started)
                if not result.ok:
                    raise SystemExit(f"step failed: {result}")
                started = time.perf_counter()
                subprocess.run([*base, "-o", "ControlMaster=no", "--", target, "true"], check=True)
                raw_t.append(time.perf_counter() - started)
            load_after = os.getloadavg()[0]
        finally:
            nr.close_connections()
            subprocess.run([*base, "-O", "exit", "--", target], capture_output=True)
            fleet.destroy()
    f, r = statistics.median(fab_t), statistics.median(raw_t)
    line = (
        f"| {f * 1000:.1f} ms | {min(fab_t) * 1000:.1f}..{max(fab_t) * 1000:.1f} ms | {r * 1000:.1f} ms "
        f"| {min(raw_t) * 1000:.1f}..{max(raw_t) * 1000:.1f} ms | {f / r:.2f}x |"
    )
    print(line, flush=True)
    body = "\n".join(
        [
            f"{ROUNDS} alternating rounds on one sshd host (load average {load_before:.2f} before, "
            f"{load_after:.2f} after).",
            "fab: `run_step` of a step running `true` over the host's open connection (Nornir run, channel,"
            " command, result). raw: a whole `ssh -o ControlPath=... host true` over a ControlMaster.",
            "",
            "| fab step median | fab min..max | raw ControlMaster median | raw min..max | ratio |",
            "|---:|---:|---:|---:|---:|",
            line,
            "",
            "Target (issue 17): a step over the reused connection <= 2x the ControlMaster round trip.",
        ]
    )
    write_section(
        "step_latency",
        "Host step over a reused connection vs OpenSSH ControlMaster",
        "nox -s bench -- step_latency",
        body,
    )


if __name__ == "__main__":
    main()
