"""The rollout engine at scale: `fab rollout` over 50, 100 and 200 lightweight hosts, 25% batches.

Hosts are real OpenSSH servers on 127.0.0.1 (fleet/local/sshd_hosts.py, host keys pinned), each with
its own release layout. Their sessions find BENCHMARK-ONLY stand-ins for `docker` and `curl` first on
PATH (bench/instant_docker/, set through sshd_config SetEnv): no container starts, Docker and nginx
answer at once, so what is left of the wall time is the configured waits and the engine. Everything
else a host does is the real thing: the shell scripts of fleet/commands/, sftp uploads, tar,
sha256sum, flock, grep over /proc, the fleet lock (in the Compute REST stand-in,
standins/compute_api.py, in this process), the journal on this machine's disk. The hosts' own CPU
(every sshd and what it runs) is measured in a cgroup of their own (bench/hostcpu.py).

The operator is the real command, run as a child process so its start-up counts and its RSS is the
operator's: `fab rollout --inventory DIR --version 1.1.0 --canary 0 --batch 25% --yes --json`, after a
`fab deploy --version 1.0.0` (not timed) that gives every host a release to move from.

    floor    = per batch, the waits the inventory configures and no engine can skip: the LB taking
               the drained host out (lb.kind none: drain_wait = check_interval x unhealthy_threshold +
               draining_timeout), taking it back (check_interval x healthy_threshold), min-ready;
               hosts of a batch wait in parallel, batches one after the other
    wall     = the `fab rollout` process from spawn to exit
    overhead = wall - floor. Target at 200 hosts: <= 10% of the floor; operator RSS <= 300 MB.

Peak RSS is the child's ru_maxrss (os.wait4); peak threads are sampled from /proc/PID/status every
50 ms. `fab status --json` and `fab facts --json` are timed on the same hosts after the rollout.
BENCH_ENGINE_SIZES picks the fleet sizes (default 50,100,200).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench.hostcpu import HostCpu
from bench.report import write_section
from bench.ssh_fanout import start_fleet
from fleet.local.inventory_writer import local_vars, required_secrets, schema_variables
from fleet.local.sshd_hosts import SshdFleet
from fleet.paths import CHECKOUT

COMMAND = "python -m bench engine_scale"
SIZES = tuple(int(n) for n in os.environ.get("BENCH_ENGINE_SIZES", "50,100,200").split(","))
STANDINS = CHECKOUT / "bench" / "instant_docker"
PROJECT = "bench-engine"
OLD, NEW = "1.0.0", "1.1.0"
BATCH = "25%"
# the local fleet's waits (fleet/local/inventory_writer.py: haproxy checks every 1 s, fall 2, rise 2,
# min-ready 1 s), through lb.kind none: the only LB mode that needs no service to ask
LB: dict[str, Any] = {
    "kind": "none",
    "check_interval": 1.0,
    "healthy_threshold": 2,
    "unhealthy_threshold": 2,
    "draining_timeout": 1.0,
}
ROLLOUT = {"max_failures": 0, "min_ready": 1, "health_timeout": 45}
DRAIN_WAIT = float(LB["check_interval"] * LB["unhealthy_threshold"] + LB["draining_timeout"])
RISE_WAIT = float(LB["check_interval"] * LB["healthy_threshold"])
# per-host steps of the engine itself (fleet/rollout/inplace.py), then the waits
ENGINE_STEPS = ("state", "mark", "drain", "switch", "up", "verify", "undrain", "serve", "record", "unmark")
WAIT_STEPS = ("lb-out", "lb-in", "soak")
CORES = os.cpu_count() or 1
PATH = f"{STANDINS}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# --------------------------------------------------------------------------- hosts


def session_env(name: str, host_dir: Path) -> dict[str, str]:
    """What each benchmark sshd puts in its sessions: the stand-ins first on PATH, their state, and a
    HOME of its own (a plain deploy user's: this machine's root ~/.bashrc runs `pyenv init`, which
    bash sources for every SSH command and which costs ~0.2 s a command)."""
    for sub in ("home", "instant-docker"):
        (host_dir / sub).mkdir(exist_ok=True)
    return {
        "HOME": str(host_dir / "home"),
        "PATH": PATH,
        "INSTANT_DOCKER_STATE": str(host_dir / "instant-docker"),
        "INSTANT_APP_DIR": str(host_dir / "app"),
    }


def write_inventory(fleet: SshdFleet, compute_url: str) -> None:
    """Per host its own layout and compose project; the release's variables and (file) secrets; the LB
    kind and waits above; the fleet lock in the Compute stand-in's project. The first host has the
    beat role (worker_beat runs there), as the local fleet's first member does."""
    inv = fleet.inventory_dir
    hosts = yaml.safe_load((inv / "hosts.yaml").read_text())
    for i, (name, spec) in enumerate(hosts.items()):
        roles = ["app", "beat"] if i == 0 else ["app"]
        spec["data"] = {"app": {"dir": str(fleet.root / name / "app"), "project": name}, "roles": roles}
        layout = fleet.root / name / "app"
        for sub in ("releases", "volumes", "state"):  # what `fab bootstrap` prepares (fleet.commands)
            (layout / sub).mkdir(parents=True, exist_ok=True)
        (layout / "releases").chmod(0o750)
        (layout / "history.jsonl").touch()
    (inv / "hosts.yaml").write_text(yaml.safe_dump(hosts, sort_keys=False))
    schema = schema_variables()
    secret_dir = inv / "secrets"
    secret_dir.mkdir(mode=0o700, exist_ok=True)
    refs = {}
    for key in required_secrets(schema):
        (secret_dir / key).write_text(secrets.token_hex(24) + "\n")
        (secret_dir / key).chmod(0o600)
        refs[key] = {"file": f"secrets/{key}"}
    defaults = yaml.safe_load((inv / "defaults.yaml").read_text())
    data = defaults["data"]
    data["ssh"].update({"connect_timeout": 10, "connect_retries": 2, "keepalive": 15})
    data.update(
        {
            "lb": dict(LB),
            "rollout": dict(ROLLOUT),
            "vars": local_vars(schema) | {"DIFY_VERSION": OLD},
            "secrets": refs,
            "gce": {"project": PROJECT, "api_endpoint": compute_url},
        }
    )
    (inv / "defaults.yaml").write_text(yaml.safe_dump(defaults, sort_keys=False))


# --------------------------------------------------------------------------- the operator process


@dataclass
class Child:
    argv: list[str]
    wall: float
    code: int
    rss_kb: int  # peak resident set (ru_maxrss)
    cpu: float  # user + sys seconds
    threads: int  # peak, sampled
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def _sample_threads(pid: int, stop: threading.Event, peak: list[int]) -> None:
    path = Path(f"/proc/{pid}/status")
    while not stop.is_set():
        try:
            for line in path.read_text().splitlines():
                if line.startswith("Threads:"):
                    peak[0] = max(peak[0], int(line.split()[1]))
                    break
        except (OSError, ValueError):
            pass
        stop.wait(0.05)


def fab(env: dict[str, str], *args: str) -> Child:
    """`fab ARGS` as a child of its own: wall from spawn to exit, rusage from os.wait4, threads sampled."""
    argv = [str(Path(sys.executable).with_name("fab")), *args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen(
            argv, cwd=CHECKOUT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
        stop, peak = threading.Event(), [0]
        sampler = threading.Thread(target=_sample_threads, args=(child.pid, stop, peak), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        stop.set()
        sampler.join()
        out.seek(0)
        err.seek(0)
        return Child(
            argv,
            wall,
            child.returncode,
            usage.ru_maxrss,
            usage.ru_utime + usage.ru_stime,
            peak[0],
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


def checked(c: Child, what: str) -> Child:
    if c.code != 0:
        raise SystemExit(
            f"bench engine_scale: {what} exited {c.code}\n{c.stdout[-3000:]}\n{c.stderr[-3000:]}"
        )
    return c


def answered(c: Child, good: Any, errors: list[str]) -> int:
    """How many hosts of a `--json` host listing came back ok and `good`; the others are printed and
    their errors kept (a host that fails is a result, not a reason to lose the run)."""
    try:
        rows = c.json()["hosts"]
    except (ValueError, KeyError, TypeError):
        raise SystemExit(f"bench engine_scale: {c.argv[1]} exited {c.code}: {c.stderr[-3000:]}") from None
    bad = [r for r in rows if r["status"] != "ok" or not good(r)]
    for r in bad:
        print(f"    {c.argv[1]}: {r['host']}: {r['status']}: {r.get('error')}", flush=True)
        errors.append(f"`fab {c.argv[1]}` {r['host']}: {str(r.get('error')).splitlines()[0][:160]}")
    return len(rows) - len(bad)


# --------------------------------------------------------------------------- one fleet size


def _epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


@dataclass
class Result:
    n: int
    rollout: Child
    status: Child
    facts: Child
    batches: list[dict[str, float]]  # per batch: hosts, wall, floor, and the waits as timed
    phases: dict[str, float]  # seconds: before the journal, stage, batches, between, after
    steps: dict[str, list[float]] = field(default_factory=dict)  # step -> per-host seconds
    loadavg: tuple[float, float] = (0.0, 0.0)
    status_ok: int = 0  # hosts `fab status` showed on the new release, healthy, undrained, no drift
    facts_ok: int = 0  # hosts `fab facts` read
    events: int = 0  # lines of the rollout's journal (each one written and fsync'd under one lock)
    errors: list[str] = field(default_factory=list)  # hosts `fab status`/`fab facts` could not read
    host_cpu: float | None = None  # CPU seconds of the sshd hosts (sessions, commands) during the rollout

    @property
    def floor(self) -> float:
        return sum(b["floor"] for b in self.batches)

    @property
    def overhead(self) -> float:
        return self.rollout.wall - self.floor

    @property
    def pct(self) -> float:
        return 100 * self.overhead / self.floor


def read_journal(journal_dir: Path, started_at: float, ended_at: float) -> tuple[Any, ...]:
    path = next(journal_dir.rglob("ro-*.jsonl"))
    events = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    plan = next(e for e in events if e["event"] == "plan")
    timings = plan["timings"]
    floor = float(timings["drain_wait"]) + RISE_WAIT + float(timings["min_ready"])
    steps: dict[str, list[float]] = defaultdict(list)
    by_host: dict[str, dict[str, float]] = defaultdict(dict)
    for e in events:
        if e.get("event") == "step" and e.get("status") == "done":
            steps[e["step"]].append(float(e["seconds"]))
            by_host[e["host"]][e["step"]] = float(e["seconds"])
    batches = []
    starts = {e["index"]: _epoch(e["t"]) for e in events if e["event"] == "batch" and e["status"] == "start"}
    for e in events:
        if e["event"] == "batch" and e["status"] == "done":
            hosts = e["hosts"]
            batches.append(
                {
                    "hosts": len(hosts),
                    "wall": _epoch(e["t"]) - starts[e["index"]],
                    "floor": floor,
                    **{f"max {s}": max(by_host[h].get(s, 0.0) for h in hosts) for s in WAIT_STEPS},
                }
            )
    stage = [_epoch(e["t"]) for e in events if e["event"] == "stage"]
    first, last = _epoch(events[0]["t"]), _epoch(events[-1]["t"])
    in_batches = sum(b["wall"] for b in batches)
    phases = {
        "before": first - started_at,  # start-up, inventory, render, preflight over SSH, lock
        "stage": stage[-1] - stage[0],
        "batches": in_batches,
        "between": (last - first) - (stage[-1] - stage[0]) - in_batches,  # beat scan/settle, journal
        "after": ended_at - last,  # unlock, report, exit
    }
    if plan["batches"] and len(batches) != len(plan["batches"]):
        raise SystemExit(f"bench engine_scale: {len(batches)} of {len(plan['batches'])} batches done")
    return batches, phases, dict(steps), len(events)


def measure(n: int) -> Result:
    root = Path(tempfile.mkdtemp(prefix=f"bench-engine-{n}-"))
    from standins.compute_api import ComputeApi
    from standins.compute_state import InMemoryCompute

    backend = InMemoryCompute(action_seconds=0.01, op_seconds=0.01)
    backend.add_project(PROJECT)
    api = ComputeApi(backend).start()
    fleet: SshdFleet | None = None
    hosts_cpu = HostCpu("fleet-bench-hosts")
    try:
        fleet = start_fleet(root, n, session_env=session_env, sftp=True)
        hosts_cpu.add(h.process.pid for h in fleet.hosts if h.process is not None)
        write_inventory(fleet, api.url)
        inv = str(fleet.inventory_dir)
        journal = root / "journal"
        env = {
            **os.environ,
            "FLEET_JOURNAL_DIR": str(journal),
            "FLEET_OPERATOR": "bench@local",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        print(f"  N={n}: fab deploy {OLD} (set-up, not timed)", flush=True)
        deploy = fab(env, "deploy", "--inventory", inv, "--version", OLD, "--json")
        try:
            done = deploy.json()
        except ValueError:
            done = {"ok": False, "hosts": []}
        if deploy.code != 0 or not done["ok"]:
            why = [f"{h['host']}: {h['result']}: {h['error']}" for h in done["hosts"] if h.get("error")]
            raise SystemExit(
                f"bench engine_scale: fab deploy exited {deploy.code}, stopped at {done.get('stopped_at')}:\n"
                + "\n".join(why[:10] or [deploy.stderr[-3000:]])
            )
        before = os.getloadavg()[0]
        cpu_before = hosts_cpu.seconds()
        started_at = time.time()
        print(f"  N={n}: fab rollout {NEW} --canary 0 --batch {BATCH}", flush=True)
        ro = fab(
            env,
            *("rollout", "--inventory", inv, "--version", NEW, "--canary", "0", "--batch", BATCH),
            *("--yes", "--json"),
        )
        ended_at = time.time()
        cpu_after = hosts_cpu.seconds()
        after = os.getloadavg()[0]
        checked(ro, "fab rollout")
        report = ro.json()
        results = {h["result"] for h in report["hosts"]}
        if report["outcome"] != "succeeded" or results != {"updated"} or len(report["hosts"]) != n:
            failed = [f"{h['host']}: {h['result']}: {h['error']}" for h in report["hosts"] if h["error"]]
            raise SystemExit(
                f"bench engine_scale: rollout {report['outcome']}: {results} {report['problems']}\n"
                + "\n".join(failed[:10])
            )
        batches, phases, steps, events = read_journal(journal, started_at, ended_at)
        errors: list[str] = []
        print(f"  N={n}: rollout {ro.wall:.1f} s; fab status, fab facts", flush=True)
        status = fab(env, "status", "--inventory", inv, "--json")
        status_ok = answered(
            status, lambda r: r.get("version") == NEW and not r["drift"] and not r["drained"], errors
        )
        facts = fab(env, "facts", "--inventory", inv, "--json")
        facts_ok = answered(facts, lambda h: h["facts"].get("release_version") == NEW, errors)
        load = (before, after)
        host_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
        return Result(
            n, ro, status, facts, batches, phases, steps, load, status_ok, facts_ok, events, errors, host_cpu
        )
    finally:
        if fleet is not None:
            fleet.destroy()
        hosts_cpu.close()
        api.stop()
        backend.close()
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- the section


def _ms(values: list[float]) -> str:
    return f"{1000 * statistics.mean(values):.0f} / {1000 * max(values):.0f}" if values else "-"


def report(results: list[Result]) -> str:
    def row(label: str, f: Any) -> str:
        return f"| {label} | " + " | ".join(f(r) for r in results) + " |"

    per_batch = DRAIN_WAIT + RISE_WAIT + ROLLOUT["min_ready"]
    lines = [
        f"`fab rollout --version {NEW} --canary 0 --batch {BATCH} --yes --json` (no canary: 4 batches of "
        f"25%) over N real sshd hosts on 127.0.0.1, after a `fab deploy --version {OLD}` (not timed). "
        "The hosts' `docker` and `curl` are **benchmark-only instant stand-ins** (bench/instant_docker/: no "
        "container starts; Docker and the host's nginx answer at once), so the wall time is the configured "
        "waits plus the engine. Everything else is real: the commands of fleet/commands/ over SSH "
        "(pinned host keys), sftp uploads, tar, sha256sum, flock, grep over /proc, the journal (fsync) "
        "on this machine's disk, the fleet lock in the Compute REST stand-in (standins/compute_api.py) "
        "with no instance labels (plain SSH hosts: no gce.instance). LB: `lb.kind: none` (nothing to "
        "ask, so the engine waits what the health check needs), with the local fleet's cadence: checks every "
        f"{LB['check_interval']:g} s, fall {LB['unhealthy_threshold']}, rise {LB['healthy_threshold']}, "
        f"draining {LB['draining_timeout']:g} s, min-ready {ROLLOUT['min_ready']} s: per batch "
        f"{DRAIN_WAIT:g} s out + {RISE_WAIT:g} s in + {ROLLOUT['min_ready']} s min-ready = "
        f"**{per_batch:g} s of floor**. Workers: the default (one per host, at most 100).",
        "",
        "| | " + " | ".join(f"{r.n} hosts" for r in results) + " |",
        "|---|" + "---:|" * len(results),
        row("`fab rollout` wall (spawn to exit)", lambda r: f"{r.rollout.wall:.1f} s"),
        row(
            "floor (configured waits, batches in sequence)",
            lambda r: f"{r.floor:.1f} s ({len(r.batches)} batches)",
        ),
        row("**engine overhead** (wall - floor)", lambda r: f"**{r.overhead:.1f} s ({r.pct:.0f}%)**"),
        row("overhead per host", lambda r: f"{1000 * r.overhead / r.n:.0f} ms"),
        row(
            "- start-up, plan, preflight, lock (before the journal)", lambda r: f"{r.phases['before']:.1f} s"
        ),
        row(
            "- stage: state, upload, `compose config`, pull on every host",
            lambda r: f"{r.phases['stage']:.1f} s",
        ),
        row(
            "- batches: their wall - their floor (per batch)",
            lambda r: (
                f"{r.phases['batches'] - r.floor:.1f} s "
                f"({(r.phases['batches'] - r.floor) / max(1, len(r.batches)):.1f} s)"
            ),
        ),
        row("- worker_beat scan and settle, journal end", lambda r: f"{r.phases['between']:.1f} s"),
        row("- unlock, report, exit (after the journal)", lambda r: f"{r.phases['after']:.1f} s"),
        row(
            "journal events (each durable before the engine moves on; fsyncs shared by group commit)",
            lambda r: f"{r.events}",
        ),
        row("operator peak RSS (ru_maxrss)", lambda r: f"{r.rollout.rss_kb / 1024:.0f} MiB"),
        row("operator peak threads (sampled every 50 ms)", lambda r: f"{r.rollout.threads}"),
        row("operator CPU (user + sys)", lambda r: f"{r.rollout.cpu:.1f} s"),
        row(
            "hosts' CPU during the rollout (every sshd, session and command; a cgroup of their own)",
            lambda r: "not measured" if r.host_cpu is None else f"{r.host_cpu:.1f} s",
        ),
        row(
            f"operator + hosts CPU / {CORES} cores (the least busy time of this machine)",
            lambda r: "-" if r.host_cpu is None else f"{(r.rollout.cpu + r.host_cpu) / CORES:.1f} s",
        ),
        row(
            "`fab status --json`: wall, RSS, threads",
            lambda r: (
                f"{r.status.wall:.1f} s, {r.status.rss_kb / 1024:.0f} MiB, {r.status.threads} "
                f"({r.status_ok}/{r.n} ok)"
            ),
        ),
        row(
            "`fab facts --json`: wall, RSS, threads",
            lambda r: (
                f"{r.facts.wall:.1f} s, {r.facts.rss_kb / 1024:.0f} MiB, {r.facts.threads} "
                f"({r.facts_ok}/{r.n} ok)"
            ),
        ),
        row(
            "machine load average (1 min), before / after the rollout",
            lambda r: f"{r.loadavg[0]:.1f} / {r.loadavg[1]:.1f}",
        ),
        "",
        "Per-host step timers from the rollout's journal, mean / max in ms (hosts of a batch run in "
        "parallel, so these include waiting for the GIL and the SSH transport threads). The engine's own "
        "steps; then the waits, whose floor part is "
        f"lb-out {DRAIN_WAIT:g} s, lb-in {RISE_WAIT:g} s, soak {ROLLOUT['min_ready']} s "
        "(+ one /health probe):",
        "",
        "| step | " + " | ".join(f"{r.n} hosts" for r in results) + " |",
        "|---|" + "---:|" * len(results),
        *[row(s, lambda r, s=s: _ms(r.steps.get(s, []))) for s in (*ENGINE_STEPS, *WAIT_STEPS)],
        "",
        f"Per batch (wall from the journal's batch start to done; floor {per_batch:g} s each):",
        "",
        "| hosts | "
        + " | ".join(f"batch {i + 1}" for i in range(max(len(r.batches) for r in results)))
        + " |",
        "|---|" + "---:|" * max(len(r.batches) for r in results),
        *[
            f"| {r.n} | " + " | ".join(f"{b['wall']:.1f} s ({b['hosts']} hosts)" for b in r.batches) + " |"
            for r in results
        ],
    ]
    big = max(results, key=lambda r: r.n)
    if big.n >= 200:
        met_o = big.pct <= 10
        met_r = big.rollout.rss_kb / 1024 <= 300
        lines += [
            "",
            "Targets at 200 hosts (issue 17): overhead <= 10% of the floor: "
            f"**{'met' if met_o else 'NOT met'}** ({big.pct:.0f}%); operator RSS <= 300 MB: "
            f"**{'met' if met_r else 'NOT met'}** "
            f"({big.rollout.rss_kb / 1024:.0f} MiB).",
        ]
    lines += [
        "",
        "All hosts share this machine's cores with the operator. What the hosts spend (every sshd "
        "connection and session, the shell of each command, the process scan in every `switch`, the "
        "stand-ins) is in the row of the hosts' CPU, measured in a cgroup of their own; on a real fleet "
        "it runs on each host's own cores, in parallel. Together with the operator's CPU it bounds the "
        "overhead from below on this machine: the row `operator + hosts CPU / cores` is time the cores "
        "were busy however the engine ordered its work, and the waits (the floor) leave them idle. The "
        "scan in `switch` (fleet/commands/rollout.py `compose_idle`: is another `docker compose` of the "
        "project running?) was `pgrep -f`, which reads several /proc files of every process of the "
        "machine (~3 sshd processes per host here): ~36 ms of system CPU per call (~15,000 "
        "system calls, `strace -c` beside this benchmark at 200 hosts); it is now one `grep` over "
        "/proc/*/cmdline, about a fifth of that.",
        *(
            ["", "Hosts `fab status` / `fab facts` could not read (their first error line):", ""]
            + [f"- {r.n} hosts: {e}" for r in results for e in r.errors[:5]]
            if any(r.errors for r in results)
            else []
        ),
        "",
        "The 2 cores are shared with other work (see the load average): CPU-bound parts (SSH handshakes "
        "and crypto, Python start-up and imports) stretch with it.",
    ]
    return "\n".join(lines)


def main() -> None:
    results = []
    for n in SIZES:
        results.append(measure(n))
        print(report(results), flush=True)
    write_section(
        "engine_scale",
        f"Rollout engine at scale: {', '.join(str(n) for n in SIZES)} hosts, 25% batches",
        COMMAND,
        report(results),
    )


if __name__ == "__main__":
    main()
