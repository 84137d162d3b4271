"""How one command runs over a pinned connection: exit codes, both streams, stdin, timeouts, and the
connection breaking under a command (fleet/ssh/session.py)."""

from __future__ import annotations

import time

import pytest

from fleet.inventory import load, select
from fleet.local.sshd_hosts import SshdFleet
from fleet.ssh.runner import HostContext, HostResult, run_on

pytestmark = pytest.mark.sshd


def _run(fleet: SshdFleet, fn: object) -> HostResult:
    inv = load(str(fleet.inventory_dir))
    (result,) = run_on(inv, select(inv, hosts=["h01"]), fn)  # type: ignore[arg-type]
    return result


def test_exit_code_streams_and_stdin_unchanged(sshd_fleet: SshdFleet) -> None:
    def step(ctx: HostContext) -> HostResult:
        r = ctx.run("echo out-$((6*7)); echo err >&2; head -c 300000 /dev/zero | tr '\\0' x; exit 3")
        fed = ctx.run("tr a-z A-Z", stdin="hello\n")
        # the shell exits (and sshd sends its exit status) before a child still holding stdout writes
        late = ctx.run("(sleep 0.5; echo late; echo late-err >&2) & echo early; exit 4")
        # more stdin than one SSH window while the command answers as it reads: must not deadlock
        echoed = ctx.run("cat; echo done >&2", stdin="y" * 3_000_000, timeout=60)
        data = {
            "exited": r.exited,
            "stdout": r.stdout,
            "stderr": r.stderr,
            "fed": fed.stdout,
            "late": (late.exited, late.stdout, late.stderr),
            "echoed": (len(echoed.stdout), echoed.stderr, echoed.exited),
        }
        return HostResult(host=ctx.host.name, status="ok", data=data)

    result = _run(sshd_fleet, step)
    assert result.ok, result.error
    assert result.data["exited"] == 3
    assert result.data["stdout"].startswith("out-42\n") and result.data["stdout"].count("x") == 300000
    assert result.data["stderr"] == "err\n"
    assert result.data["fed"] == "HELLO\n"
    assert result.data["late"] == (4, "early\nlate\n", "late-err\n")  # all the output, not what came first
    assert result.data["echoed"] == (3_000_000, "done\n", 0)


def test_timeout_still_ends_a_command(sshd_fleet: SshdFleet) -> None:
    def step(ctx: HostContext) -> HostResult:
        ctx.run("sleep 20", timeout=1)
        return HostResult(host=ctx.host.name, status="ok")

    started = time.monotonic()
    result = _run(sshd_fleet, step)
    assert time.monotonic() - started < 10
    assert result.status == "failed" and "CommandTimedOut" in (result.error or "")


def test_a_connection_lost_mid_command_is_unreachable_not_a_failed_command(sshd_fleet: SshdFleet) -> None:
    """The host's sshd session dies under the command (as when the host goes away): no exit status
    came, so it is the connection that broke, not a command that exited -1."""

    def step(ctx: HostContext) -> HostResult:
        ctx.run("kill -9 $PPID; sleep 5", timeout=30)
        return HostResult(host=ctx.host.name, status="ok")

    result = _run(sshd_fleet, step)
    assert result.status == "unreachable" and "EOFError" in (result.error or ""), result
