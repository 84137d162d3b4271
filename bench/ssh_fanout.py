"""`fab exec` on N fresh sshd hosts beside raw OpenSSH and the Python peers, each timed as a whole process.

Every tool opens N new connections to N real sshd servers on 127.0.0.1 (each with its own host key, all
pinned in one known_hosts), runs `uname -r` on every host, and exits. Tools (each its own process):

- raw:     N parallel `ssh -o KexAlgorithms=curve25519-sha256 -o StrictHostKeyChecking=yes ...` (OpenSSH)
- fab:     `fab exec --inventory DIR --cmd 'uname -r' --json` (this project); the warm-up writes its
           inventory memo (fleet/inventory/memo.py), the rounds read it
- fab-nomemo: the same with FLEET_INVENTORY_CACHE=off (a run right after the inventory changed)
- fabric:  Fabric ThreadingGroup (bench/peers/fabric_group.py), paramiko RejectPolicy
- nornir:  Nornir threaded runner + a Fabric task (bench/peers/nornir_fabric.py), RejectPolicy
- pyinfra: `pyinfra INVENTORY exec -- uname -r`, ssh_strict_host_key_checking=yes

The peers run from a separate venv (`.nox/bench-peers`, pinned by bench/peers/requirements.txt) so the
product's lock never changes; no tool may accept an unknown host key. After one warm-up run of each tool,
rounds are interleaved (the order rotates each round) so drift in machine load hits every tool alike.
Per run: wall time (perf_counter around the child), client CPU (user+sys of the child and everything it
waited for, from os.wait4) and peak RSS (the child's ru_maxrss; for raw: the largest single ssh process).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report import write_section
from fleet.errors import HostSetupError
from fleet.local.sshd_hosts import SshdFleet
from fleet.paths import CHECKOUT

SIZES = tuple(int(n) for n in os.environ.get("BENCH_SSH_SIZES", "50,100").split(","))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
TOOLS = tuple(os.environ.get("BENCH_SSH_TOOLS", "raw,fab,fab-nomemo,fabric,nornir,pyinfra").split(","))
COMMAND = "uname -r"
REPO = CHECKOUT
PEERS_DIR = REPO / "bench" / "peers"
PEERS_VENV = REPO / ".nox" / "bench-peers"
PEERS_REQUIREMENTS = PEERS_DIR / "requirements.txt"


@dataclass
class Run:
    wall: float
    cpu: float  # user + sys seconds of the client process(es)
    rss_kb: int  # peak resident set of the (largest) client process


def peers_python() -> Path:
    """The peers' venv interpreter; (re)created with uv when the pinned requirements changed."""
    python = PEERS_VENV / "bin" / "python"
    stamp = PEERS_VENV / ".requirements"
    wanted = PEERS_REQUIREMENTS.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    uv = shutil.which("uv")
    if uv is None:
        raise SystemExit("bench ssh needs `uv` to build the peers' venv (.nox/bench-peers)")
    subprocess.run([uv, "venv", "-q", "--clear", "--python", "3.11", str(PEERS_VENV)], check=True)
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "-q",
            "--compile-bytecode",
            "--python",
            str(python),
            "-r",
            str(PEERS_REQUIREMENTS),
        ],
        check=True,
    )
    stamp.write_text(wanted)
    return python


def _spawn(
    argv: list[str], out: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start one child writing stdout+stderr to `out`; returns (Popen, fd). Keep the Popen: one that is
    garbage-collected is reaped by subprocess's own clean-up, and its rusage lost to os.wait4."""
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, cwd=REPO, env=env)
    return p, fd


def timed(argvs: list[list[str]], env: dict[str, str] | None = None, expect: int = 0) -> Run:
    """Run every argv at once; wall until the last exits, CPU summed, RSS the largest child's."""
    with tempfile.NamedTemporaryFile(prefix="bench-ssh-", suffix=".out") as out:
        started = time.perf_counter()
        children = [_spawn(argv, Path(out.name), env) for argv in argvs]
        cpu, rss, codes = 0.0, 0, []
        for child, fd in children:
            _, status, usage = os.wait4(child.pid, 0)
            child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
            os.close(fd)
            codes.append(os.waitstatus_to_exitcode(status))
            cpu += usage.ru_utime + usage.ru_stime
            rss = max(rss, usage.ru_maxrss)
        wall = time.perf_counter() - started
        text = Path(out.name).read_text(errors="replace")
    release = platform.release()
    if any(codes) or text.count(release) < expect:
        raise SystemExit(
            f"{argvs[0][:3]} failed: exit codes {sorted(set(codes))}, {text.count(release)}/{expect} "
            f"hosts answered\n{text[-3000:]}"
        )
    return Run(wall, cpu, rss)


def raw_argv(fleet: SshdFleet, port: int) -> list[str]:
    inv = fleet.inventory_dir
    return [
        "ssh",
        "-q",
        "-F",
        os.devnull,
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={inv / 'known_hosts'}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "KexAlgorithms=curve25519-sha256",
        "-o",
        "ControlMaster=no",
        "-o",
        "IdentitiesOnly=yes",
        "-i",
        str(fleet.key_file),
        "-p",
        str(port),
        "--",
        f"{fleet.user}@127.0.0.1",
        COMMAND,
    ]


def tool_runners(fleet: SshdFleet, spec: Path) -> dict[str, Callable[[], Run]]:
    n = len(fleet.hosts)
    fab = str(Path(sys.executable).with_name("fab"))
    peers = str(peers_python())
    peer_env = {**os.environ, "BENCH_PEER_SPEC": str(spec), "PYTHONDONTWRITEBYTECODE": "1"}
    pyinfra = str(Path(peers).with_name("pyinfra"))
    inv = str(fleet.inventory_dir)
    fab_argv = [fab, "exec", "--inventory", inv, "--cmd", COMMAND, "--json"]
    # the inventory memo (fleet/inventory/memo.py) beside the fleet, removed with it; written by the
    # warm-up run, so the rounds measure an unchanged inventory; fab-nomemo: the first run after a change
    memo_env = {**os.environ, "FLEET_INVENTORY_CACHE": str(fleet.root / "inventory-memo")}
    nomemo_env = {**os.environ, "FLEET_INVENTORY_CACHE": "off"}
    return {
        "raw": lambda: timed([raw_argv(fleet, h.port) for h in fleet.hosts], expect=n),
        "fab": lambda: timed([fab_argv], memo_env, n),
        "fab-nomemo": lambda: timed([fab_argv], nomemo_env, n),
        "fabric": lambda: timed([[peers, str(PEERS_DIR / "fabric_group.py"), str(spec)]], peer_env, n),
        "nornir": lambda: timed([[peers, str(PEERS_DIR / "nornir_fabric.py"), str(spec)]], peer_env, n),
        "pyinfra": lambda: timed(
            [[pyinfra, "-y", str(PEERS_DIR / "pyinfra_inventory.py"), "exec", "--", *COMMAND.split()]],
            peer_env,
            n,
        ),
    }


def write_spec(fleet: SshdFleet) -> Path:
    spec = fleet.root / "hosts.json"
    spec.write_text(
        json.dumps(
            {
                "user": fleet.user,
                "key_file": str(fleet.key_file),
                "known_hosts": str(fleet.inventory_dir / "known_hosts"),
                "command": COMMAND,
                "hosts": [[h.name, h.port] for h in fleet.hosts],
            }
        )
    )
    return spec


def start_fleet(root: Path, n: int, attempts: int = 3, **create: Any) -> SshdFleet:
    """N sshd; again with new ports when one was taken between free_port() and sshd's bind (other
    processes on a shared machine open ports too). `create`: SshdFleet.create's keywords."""
    for attempt in range(attempts):
        fleet = SshdFleet(root / f"try{attempt}").create(n, **create)
        try:
            return fleet.start()
        except HostSetupError as exc:
            fleet.destroy()
            if attempt + 1 == attempts:
                raise
            print(f"  retrying with new ports: {exc.what}", flush=True)
    raise AssertionError("unreachable")


def measure(n: int) -> tuple[dict[str, list[Run]], tuple[float, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        fleet = start_fleet(Path(tmp), n)
        try:
            runners = tool_runners(fleet, write_spec(fleet))
            for tool in TOOLS:  # warm-up: page cache, bytecode
                runners[tool]()
            load_before = os.getloadavg()[0]
            runs: dict[str, list[Run]] = {t: [] for t in TOOLS}
            for r in range(ROUNDS):
                order = TOOLS[r % len(TOOLS) :] + TOOLS[: r % len(TOOLS)]
                for tool in order:
                    runs[tool].append(runners[tool]())
                    print(f"  N={n} round {r + 1} {tool}: {runs[tool][-1].wall:.3f}s", flush=True)
            load_after = os.getloadavg()[0]
        finally:
            fleet.destroy()
    return runs, (load_before, load_after)


def cli_startup() -> list[float]:
    fab = Path(sys.executable).with_name("fab")
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        subprocess.run([str(fab), "--list"], cwd=REPO, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return times


def table(n: int, runs: dict[str, list[Run]], load: tuple[float, float]) -> list[str]:
    raw = statistics.median(r.wall for r in runs["raw"]) if "raw" in runs else None
    lines = [
        f"**{n} hosts** (load average {load[0]:.2f} before, {load[1]:.2f} after the rounds)",
        "",
        "| tool | wall median | min..max | vs raw | client CPU median | CPU per host | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for tool, rs in runs.items():
        wall = statistics.median(r.wall for r in rs)
        cpu = statistics.median(r.cpu for r in rs)
        rss = statistics.median(r.rss_kb for r in rs)
        ratio = f"{wall / raw:.2f}x" if raw else "-"
        lines.append(
            f"| {LABELS.get(tool, tool)} | {wall:.2f} s "
            f"| {min(r.wall for r in rs):.2f}..{max(r.wall for r in rs):.2f} s "
            f"| {ratio} | {cpu:.2f} s | {cpu / n * 1000:.0f} ms | {rss / 1024:.0f} MiB |"
        )
    return lines


# what the profile of `fab exec` on 50 hosts found (CPU clocks: process_time laps, thread_time
# cProfile over all threads, gc callbacks), and what became of it
PROFILE = (
    "Where `fab exec`'s CPU goes (50 hosts, issue 17 item 2): (1) start-up, CPU on one core before the"
    " first connection while the other core idles (raw OpenSSH has none): Fabric's command line with"
    " invoke and paramiko ~0.2 s, invoke's task parse and the task modules ~0.04 s (two deep copies of"
    " every task's parser context, ~20 ms), Nornir with ruamel.yaml ~0.03 s, and, when the inventory is"
    " validated, pydantic: importing it ~0.11 s, its schema machinery and the 32 section models ~0.09 s,"
    " loading and validating 50 hosts ~0.01 s; (2) the fan-out, ~9 ms of client CPU per host in threads"
    " (7 ms one host at a time: connect 4.3 ms, command 2.5 ms), less than a raw `ssh` process. The"
    " fan-out is CPU-bound on the 2 cores (client and 50 sshd), so its wall follows total CPU, not"
    " scheduling. Cut here: pydantic, for an unchanged inventory: `fab exec` keeps a memo of the"
    " validated inventory (each host's merged data and connection parameters, keyed by the inventory"
    " files' bytes, the environment and the source of the modules that made it; docs/inventory.md) and"
    " on a hit neither imports pydantic nor builds the models; start-up CPU before the first connection"
    " 0.39 s with the memo against 0.58 s without (medians of 7, load 17; `fab-nomemo` above is the run"
    " right after an inventory change). Earlier: the cyclic garbage collector walked every object"
    " start-up made, ~80 ms of CPU per run; it is off during start-up and inventory loading and those"
    " objects are frozen before the task runs (~22 ms left). Measured and not kept: starting every"
    " worker thread before the first host (the last connection began 0.5 s after the first; with all"
    " started at once wall and CPU did not improve), other GIL switch intervals (more CPU), a known_hosts"
    " index (the lookups cost 2 ms for 50 hosts). Removed earlier: re-parsing the project's sources on"
    " every start (PYTHONDONTWRITEBYTECODE; `nox` compiles them), a Fabric Config, an invoke Runner with"
    " two output threads and a timer per command (fleet/ssh/session.py), three parses of the private key"
    " per host, paramiko's byte-by-byte MAC comparison (AES-GCM preferred), the pure-Python YAML parser,"
    " and InitNornir's entry-point scans. What is left before the first connection is the imports of"
    " Fabric, invoke, paramiko and Nornir, which every peer but pyinfra pays too."
)

LABELS = {
    "raw": "raw OpenSSH, one `ssh` per host (curve25519)",
    "fab": "`fab exec` (this project)",
    "fab-nomemo": "`fab exec`, inventory memo off (a run after an inventory change)",
    "fabric": "Fabric ThreadingGroup",
    "nornir": "Nornir threaded + Fabric task",
    "pyinfra": "pyinfra `exec`",
}


def versions() -> str:
    out = subprocess.run(
        [
            str(peers_python()),
            "-c",
            "from importlib.metadata import version as v; "
            "print(*(v(p) for p in ('fabric', 'nornir', 'pyinfra', 'paramiko')))",
        ],
        capture_output=True,
        text=True,
    ).stdout.split()
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    return f"peers: {' '.join(versions_line(out))}; raw: {ssh}"


def versions_line(out: list[str]) -> list[str]:
    names = ["fabric", "nornir", "pyinfra", "paramiko"]
    return [f"{name} {v}" for name, v in zip(names, out, strict=False) if v]


def main() -> None:
    body = [
        "Each tool opens N fresh SSH connections to N real sshd servers on 127.0.0.1 (host keys pinned in"
        f" one known_hosts; every tool refuses unknown keys), runs `{COMMAND}` on every host and exits;"
        f" timed as a whole process. One warm-up run per tool, then {ROUNDS} interleaved rounds"
        " (the order rotates)."
        " Client CPU: user+sys of the tool's process(es) from os.wait4; peak RSS: the process's ru_maxrss"
        " (raw: the largest single `ssh`). Peers run from `.nox/bench-peers` (bench/peers/requirements.txt),"
        " `fab` from the bench session's environment; both have their bytecode compiled (this machine sets"
        " PYTHONDONTWRITEBYTECODE, so an uncompiled tool would re-parse its sources on every start)."
        f" Load average when the run started: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores.",
        *(
            [
                "",
                "The machine was shared during this run (load average above its core count): every tool's"
                " wall is inflated and the ratios move from run to run; compare tools within one table only.",
            ]
            if os.getloadavg()[0] > (os.cpu_count() or 1)
            else []
        ),
        "",
        versions(),
        "",
    ]
    for n in SIZES:
        runs, load = measure(n)
        body += [*table(n, runs, load), ""]
        print("\n".join(table(n, runs, load)), flush=True)
    startup = cli_startup()
    body += [
        f"CLI start-up, `fab --list`: median {statistics.median(startup):.3f} s "
        f"(min {min(startup):.3f}, max {max(startup):.3f}, {ROUNDS} runs).",
        "",
        "Targets (issue 17): `fab exec` <= 1.15x raw at 50 and 100 hosts, ahead of every peer, client CPU per"
        " host <= pyinfra's; `fab --list` < 0.3 s.",
        "",
        PROFILE,
    ]
    write_section(
        "ssh_fanout",
        "SSH fan-out: `fab exec` vs raw OpenSSH and Python peers",
        "nox -s bench -- ssh",
        "\n".join(body),
    )


if __name__ == "__main__":
    main()
