"""`fab exec` on N fresh sshd hosts, timed as a whole process, beside raw parallel OpenSSH.

Both sides open N new connections (sshd re-executes per connection, ~0.25 s CPU each on this kind of
machine), run `true`, and exit; runs alternate so drift in machine load hits both alike.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import write_section
from fleet.local.sshd_hosts import SshdFleet
from fleet.paths import CHECKOUT

SIZES = (10, 50)
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
REPO = CHECKOUT


def raw_ssh(fleet: SshdFleet) -> float:
    inv = fleet.inventory_dir
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                "ssh",
                "-q",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"UserKnownHostsFile={inv / 'known_hosts'}",
                "-o",
                "KexAlgorithms=curve25519-sha256",
                "-o",
                "ControlMaster=no",
                "-i",
                str(inv / "id_ed25519"),
                "-p",
                str(h.port),
                f"{fleet.user}@127.0.0.1",
                "true",
            ],
            stdin=subprocess.DEVNULL,
        )
        for h in fleet.hosts
    ]
    codes = [p.wait() for p in procs]
    elapsed = time.perf_counter() - started
    if any(codes):
        raise SystemExit(f"raw ssh failed: {codes}")
    return elapsed


def fab_exec(fleet: SshdFleet) -> float:
    fab = Path(sys.executable).with_name("fab")
    started = time.perf_counter()
    r = subprocess.run(
        [str(fab), "exec", "--inventory", str(fleet.inventory_dir), "--cmd", "true", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if r.returncode != 0:
        raise SystemExit(f"fab exec failed: {r.stderr}\n{r.stdout[-2000:]}")
    return elapsed


def cli_startup() -> list[float]:
    fab = Path(sys.executable).with_name("fab")
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        subprocess.run([str(fab), "--list"], cwd=REPO, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    rows = []
    for n in SIZES:
        with tempfile.TemporaryDirectory() as tmp:
            fleet = SshdFleet(Path(tmp)).create(n).start()
            try:
                fab_exec(fleet)  # warm the page cache for both sides once
                raw_ssh(fleet)
                fab_t, raw_t = [], []
                for _ in range(ROUNDS):
                    raw_t.append(raw_ssh(fleet))
                    fab_t.append(fab_exec(fleet))
            finally:
                fleet.destroy()
        f, r = statistics.median(fab_t), statistics.median(raw_t)
        rows.append((n, f, r, f / r, min(fab_t), max(fab_t), min(raw_t), max(raw_t)))
        print(f"N={n}: fab exec median {f:.3f}s, raw ssh median {r:.3f}s, ratio {f / r:.3f}", flush=True)
    startup = cli_startup()
    print(f"fab --list median {statistics.median(startup):.3f}s", flush=True)
    body = [
        f"{ROUNDS} alternating rounds per size; each round opens N fresh SSH connections, runs `true`,"
        " and exits.",
        "Raw side: N parallel `ssh -o KexAlgorithms=curve25519-sha256 ... true` processes (OpenSSH client).",
        "fab side: one `fab exec --inventory DIR --cmd true --json` process (start-up included).",
        "",
        "| hosts | fab exec median | raw ssh median | ratio | fab min..max | raw min..max |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n, f, r, ratio, fmin, fmax, rmin, rmax in rows:
        body.append(
            f"| {n} | {f:.3f} s | {r:.3f} s | {ratio:.3f}x "
            f"| {fmin:.3f}..{fmax:.3f} s | {rmin:.3f}..{rmax:.3f} s |"
        )
    body += [
        "",
        f"CLI start-up, `fab --list`: median {statistics.median(startup):.3f} s "
        f"(min {min(startup):.3f}, max {max(startup):.3f}, {ROUNDS} runs).",
        "",
        "Target: ratio at 50 hosts <= 1.15x; `fab --list` < 0.3 s.",
    ]
    write_section(
        "ssh_fanout", "SSH fan-out: `fab exec` vs raw parallel ssh", "nox -s bench -- ssh", "\n".join(body)
    )


if __name__ == "__main__":
    main()
