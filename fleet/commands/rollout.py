"""Remote commands of the rollout engine (pure: built as data, run by fleet.rollout)."""

from __future__ import annotations

from fleet.commands import release as rc
from fleet.commands.base import Command, q, release_id, sh
from fleet.commands.health import health_command
from fleet.errors import FleetError

BEAT = "worker_beat"


def beat_running(layout: rc.Layout) -> Command:
    """Prints the ids of running worker_beat containers of the project (one per line)."""
    return Command(
        sh(
            "docker",
            "ps",
            "-q",
            "--filter",
            f"label=com.docker.compose.project={layout.project}",
            "--filter",
            f"label=com.docker.compose.service={BEAT}",
            "--filter",
            "status=running",
        ),
        "list running worker_beat containers",
    )


def beat_stop(layout: rc.Layout) -> Command:
    """Stop and remove worker_beat (gracefully: its stop grace period applies) before it starts elsewhere."""
    ids = sh(
        "docker",
        "ps",
        "-aq",
        "--filter",
        f"label=com.docker.compose.project={layout.project}",
        "--filter",
        f"label=com.docker.compose.service={BEAT}",
    )
    script = (
        f'ids=$({ids}); if [ -n "$ids" ]; then docker stop $ids >/dev/null && docker rm $ids >/dev/null; fi'
    )
    return Command(script, "stop worker_beat")


def beat_start(layout: rc.Layout, rid: str) -> Command:
    """Start only worker_beat of release `rid` (the rest of the project is left as it runs)."""
    lines = [*rc.compose_lock(layout), sh(*rc.compose_argv(layout, rid, "up", "-d", "--no-deps", BEAT))]
    return Command("\n".join(lines), f"start worker_beat of {rid}")


def compose_idle(layout: rc.Layout, seconds: int = 60) -> Command:
    """Wait until no other `docker compose` runs for the project: an operator killed mid-`up` may have
    left one running on the host, and two at once fight over the same containers.

    One `grep` over every process's command line (/proc/PID/cmdline: the arguments NUL-separated,
    which `.` matches in GNU grep's -a mode), the same match as `pgrep -f 'compose -p PROJECT '` at a
    fifth of its cost: pgrep reads several /proc files of every process, ~36 ms of system CPU per call
    beside issue 17's 200-host benchmark. A grep whose `.` does not match NUL (checked first)
    falls back to pgrep. ([c] keeps the match off this very script and the search itself.)"""
    if not isinstance(seconds, int) or seconds <= 0:
        raise FleetError(f"invalid wait {seconds!r}")
    pattern = q(f"[c]ompose.-p.{layout.project}.")
    fallback = q(f"[c]ompose -p {layout.project} ")
    script = (
        "if printf 'a\\000b' | grep -qaE 'a.b' 2>/dev/null; then "
        f"running() {{ grep -qsaE -- {pattern} /proc/[0-9]*/cmdline; }}; "
        f"else running() {{ pgrep -f -- {fallback} >/dev/null 2>&1; }}; fi; "
        "i=0; while running; do i=$((i+1)); "
        f"if [ $i -gt {seconds * 2} ]; then echo 'another docker compose for this project still runs' >&2; "
        "exit 1; fi; sleep 0.5; done"
    )
    return Command(script, "wait for other docker compose runs to end")


def switch_when_idle(layout: rc.Layout, rid: str) -> Command:
    """`compose_idle` then the atomic switch of `current`, in one round trip."""
    return Command(
        f"{compose_idle(layout).script}\n{rc.switch(layout, rid).script}", f"switch current to {rid}"
    )


UNDRAIN_FAILED = 97


def undrain_then_probe(layout: rc.Layout, port: int) -> Command:
    """Remove the drain flag (exit 97 if that fails), then probe /health through nginx: one round trip."""
    probe = health_command(port)
    return Command(
        f"{rc.undrain(layout).script} || exit {UNDRAIN_FAILED}\n{probe.script}", "undrain and probe"
    )


def set_previous(layout: rc.Layout, rid: str | None) -> Command:
    """Point `previous` at releases/<id> again (or remove it): a reverted host is left exactly as it
    was before the rollout, so a later `fab rollback` does not go to the release that failed."""
    if rid is None:
        return Command(f"rm -f {q(layout.previous)}", "clear the previous link")
    target = f"releases/{release_id(rid)}"
    script = "\n".join(
        (
            "set -eu",
            f"cd {q(layout.root)}",
            f"[ -d {q(target)} ] || {{ echo 'release {rid} is gone' >&2; exit 3; }}",
            f"ln -sfn {q(target)} .previous.new",
            "mv -T .previous.new previous",
        )
    )
    return Command(script, f"set previous to {rid}")


def release_record(layout: rc.Layout, rid: str) -> Command:
    """The release.json of a staged release (names of secrets only, never values)."""
    return Command(f"cat {q(layout.release(rid) + '/release.json')}", f"read release {rid}")
