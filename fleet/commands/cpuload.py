"""CPU load on a host, for rehearsing CPU-driven scaling: busy loops that end on their own.

`start_load` starts WORKERS busy loops (each keeps one CPU busy), detached from the session that
started them (setsid: an SSH session or a console that ends leaves them running) and bounded by
`timeout`, so a forgotten load stops by itself. Their pids go to PID_FILE, and `stop_load` kills
exactly those processes, nothing found by name. Both run as root (`sudo -n` over SSH as the deploy
user) because the pid file lives under /run.
"""

from __future__ import annotations

from fleet.commands.base import Command, q
from fleet.errors import FleetError

PID_FILE = "/run/fleet-cpuload.pids"
MAX_WORKERS = 16
MAX_SECONDS = 3600
BUSY_LOOP = "while :; do :; done"


def start_load(workers: int, seconds: int) -> Command:
    """Keep `workers` CPUs busy for at most `seconds` (in the background; returns at once)."""
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= MAX_WORKERS:
        raise FleetError(f"cpu load workers {workers!r} not within 1..{MAX_WORKERS}", where="cpu load")
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not 1 <= seconds <= MAX_SECONDS:
        raise FleetError(f"cpu load seconds {seconds!r} not within 1..{MAX_SECONDS}", where="cpu load")
    # the inner sh records its own pid, then becomes `timeout` (same pid): killing it ends the loop
    worker = f"echo $$ >> {q(PID_FILE)}; exec timeout {seconds} sh -c {q(BUSY_LOOP)}"
    script = (
        f"i=0; while [ $i -lt {workers} ]; do i=$((i+1)); "
        f"setsid -f sh -c {q(worker)} </dev/null >/dev/null 2>&1; done; "
        f"echo started {workers}"
    )
    return Command(script, f"start {workers} CPU busy loop(s) for at most {seconds}s", sudo=True)


def stop_load() -> Command:
    """Stop the busy loops `start_load` started (the pids it recorded; ones already ended are fine)."""
    script = (
        f"if [ -f {q(PID_FILE)} ]; then "
        f'for p in $(cat {q(PID_FILE)}); do kill "$p" 2>/dev/null || true; done; rm -f {q(PID_FILE)}; fi; '
        "echo stopped"
    )
    return Command(script, "stop the CPU busy loops", sudo=True)
