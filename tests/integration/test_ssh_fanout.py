"""The operator core over real OpenSSH: fan-out, unreachable hosts, pinned host keys, quoting."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fleet.commands.facts import facts_command
from fleet.inventory import load, select
from fleet.local.sshd_hosts import SshdFleet, keygen
from fleet.ssh.connection import ssh_params
from fleet.ssh.runner import HostContext, HostResult, build_nornir, command_step, run_on, run_step
from tests.fixtures.sshd import fab

pytestmark = pytest.mark.sshd


def test_fan_out_to_all_with_one_host_down(sshd_fleet: SshdFleet) -> None:
    r = fab(
        "exec",
        "--inventory",
        str(sshd_fleet.inventory_dir),
        "--cmd",
        "echo out-$((6*7)); echo err >&2",
        "--json",
    )
    assert r.returncode == 1, r.stderr  # one host is down
    results = {x["host"]: x for x in json.loads(r.stdout)["results"]}
    assert set(results) == {"h01", "h02", "h03", "h04", "h05"}
    for name in ("h01", "h02", "h03", "h04"):
        assert results[name]["status"] == "ok" and results[name]["exit_code"] == 0
        assert results[name]["stdout"] == "out-42" and results[name]["stderr"] == "err"
        assert results[name]["duration"] > 0
    assert results["h05"]["status"] == "unreachable" and results["h05"]["exit_code"] is None
    assert "cannot connect" in results["h05"]["error"]


def test_all_reachable_exits_zero_and_prints_table(sshd_fleet: SshdFleet) -> None:
    r = fab(
        "exec",
        "--inventory",
        str(sshd_fleet.inventory_dir),
        "--group",
        "sshd",
        "--hosts",
        "h01,h02,h03",
        "--cmd",
        "uname -s",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("\tok\t0\t") == 3 and "3 host(s): 3 ok, 0 failed, 0 unreachable" in r.stdout


def test_failed_command_is_reported_with_exit_code(sshd_fleet: SshdFleet) -> None:
    r = fab(
        "exec",
        "--inventory",
        str(sshd_fleet.inventory_dir),
        "--hosts",
        "h02",
        "--cmd",
        "echo boom >&2; exit 7",
        "--json",
    )
    assert r.returncode == 1
    (res,) = json.loads(r.stdout)["results"]
    assert (res["status"], res["exit_code"], res["stderr"]) == ("failed", 7, "boom")


def test_facts_over_ssh(sshd_fleet: SshdFleet) -> None:
    r = fab("facts", "--inventory", str(sshd_fleet.inventory_dir), "--hosts", "h01,h02", "--json")
    assert r.returncode == 0, r.stderr
    hosts = json.loads(r.stdout)["hosts"]
    assert [h["host"] for h in hosts] == ["h01", "h02"]
    for h in hosts:
        assert h["status"] == "ok" and h["facts"]["kernel"] and h["facts"]["disk_free_mb"] > 0


def test_connection_reuse_counts_ssh_handshakes(sshd_fleet: SshdFleet) -> None:
    inv = load(str(sshd_fleet.inventory_dir))
    hosts = select(inv, hosts=["h03"])
    nr = build_nornir(inv, hosts)
    seen: list[object] = []

    def step(ctx: HostContext) -> HostResult:
        seen.append(ctx.conn.client.get_transport())
        ctx.run("true")
        return HostResult(host=ctx.host.name, status="ok")

    try:
        run_step(nr, step)
        run_step(nr, step)
        run_step(nr, step)
    finally:
        nr.close_connections()
    assert len(seen) == 3 and seen[0] is seen[1] is seen[2]  # one SSH transport for three steps


def test_unknown_host_key_refused(fresh_sshd: SshdFleet) -> None:
    kh = fresh_sshd.inventory_dir / "known_hosts"
    lines = kh.read_text().splitlines()
    kh.write_text(lines[1] + "\n")  # h01's key is no longer pinned
    marker = fresh_sshd.root / "ran"
    r = fab("exec", "--inventory", str(fresh_sshd.inventory_dir), "--cmd", f"touch {marker}", "--json")
    assert r.returncode == 1
    res = {x["host"]: x for x in json.loads(r.stdout)["results"]}
    assert res["h01"]["status"] == "unreachable" and res["h02"]["status"] == "ok"
    err = res["h01"]["error"]
    h01 = fresh_sshd.hosts[0]
    assert "unknown host key ssh-ed25519 SHA256:" in err and f"[127.0.0.1]:{h01.port}" in err
    assert h01.known_hosts_line in err  # tells the operator exactly what to pin
    assert kh.read_text() == lines[1] + "\n"  # nothing was added behind the operator's back
    assert marker.exists()  # h02 ran it


def test_mismatched_host_key_refused(fresh_sshd: SshdFleet) -> None:
    kh = fresh_sshd.inventory_dir / "known_hosts"
    other = keygen(fresh_sshd.root / "impostor", "impostor").split()
    h01 = fresh_sshd.hosts[0]
    original = kh.read_text()
    kh.write_text(original.replace(h01.host_key_pub.split()[1], other[1]))
    marker = fresh_sshd.root / "should-not-exist"
    r = fab(
        "exec",
        "--inventory",
        str(fresh_sshd.inventory_dir),
        "--hosts",
        "h01",
        "--cmd",
        f"touch {marker}",
        "--json",
    )
    assert r.returncode == 1
    (res,) = json.loads(r.stdout)["results"]
    assert res["status"] == "unreachable" and "host key MISMATCH" in res["error"]
    assert "offered ssh-ed25519 SHA256:" in res["error"] and "pinned ssh-ed25519 SHA256:" in res["error"]
    assert not marker.exists()


def test_missing_known_hosts_file_refused(fresh_sshd: SshdFleet) -> None:
    (fresh_sshd.inventory_dir / "known_hosts").unlink()
    r = fab("exec", "--inventory", str(fresh_sshd.inventory_dir), "--cmd", "true", "--json")
    assert r.returncode == 1
    for res in json.loads(r.stdout)["results"]:
        assert res["status"] == "unreachable" and "no known_hosts file" in res["error"]


@pytest.mark.parametrize(
    "args",
    [
        ["--hosts", "h01;touch {m}"],
        ["--hosts", "h01,$(touch {m})"],
        ["--group", "`touch {m}`"],
        ["--where", "name=h01'; touch {m}; echo '"],
    ],
)
def test_metacharacters_in_selection_never_executed(
    sshd_fleet: SshdFleet, tmp_path: Path, args: list[str]
) -> None:
    marker = tmp_path / "pwned"
    argv = [a.format(m=marker) for a in args]
    r = fab("exec", "--inventory", str(sshd_fleet.inventory_dir), *argv, "--cmd", "true")
    assert r.returncode == 2 and r.stdout == ""
    assert "unknown host" in r.stderr or "unknown group" in r.stderr or "no host matches" in r.stderr
    assert not marker.exists()


def test_hostile_app_dir_reaches_remote_shell_quoted(sshd_fleet: SshdFleet, tmp_path: Path) -> None:
    """A value that is valid for the schema but hostile to a shell is passed as one quoted word."""
    inv = load(str(sshd_fleet.inventory_dir))
    hostile = str(tmp_path / "$(touch PWNED)` touch PWNED2`;touch PWNED3")
    step = command_step(facts_command(hostile).shell())
    results = run_on(inv, select(inv, hosts=["h01"]), step)
    assert results[0].ok, results[0]
    assert not list(tmp_path.glob("PWNED*")) and not list(Path.home().glob("PWNED*"))
    assert "release=" in results[0].stdout


def test_malformed_inventory_rejected_precisely(tmp_path: Path) -> None:
    inv = tmp_path / "broken"
    inv.mkdir()
    (inv / "hosts.yaml").write_text(
        "web-1:\n  hostname: 10.0.0.1\n  data:\n    ssh:\n      proxy: none\n      keepalive: often\n"
    )
    r = fab("exec", "--inventory", str(inv), "--cmd", "true")
    assert r.returncode == 2 and r.stdout == ""
    assert f"{inv}/hosts.yaml: host 'web-1'" in r.stderr and "field data.ssh.keepalive" in r.stderr


def test_ssh_params_match_generated_known_hosts(sshd_fleet: SshdFleet) -> None:
    inv = load(str(sshd_fleet.inventory_dir))
    names = {ssh_params(h, inv).known_hosts_name for h in inv.hosts.values()}
    pinned = {line.split()[0] for line in (sshd_fleet.inventory_dir / "known_hosts").read_text().splitlines()}
    assert names == pinned


def test_host_stopping_mid_run_reported_unreachable(fresh_sshd: SshdFleet) -> None:
    inv = load(str(fresh_sshd.inventory_dir))
    nr = build_nornir(inv, list(inv.hosts.values()))
    try:
        assert all(r.ok for r in run_step(nr, command_step("true")))
        # kill h02's server and its live connection (the listener's children), then run again on the
        # kept connection
        listener = fresh_sshd.hosts[1].process
        assert listener is not None
        children = subprocess.run(
            ["pgrep", "-P", str(listener.pid)], capture_output=True, text=True
        ).stdout.split()
        assert children, "the open connection should have an sshd child process"
        fresh_sshd.stop_host("h02")
        subprocess.run(["kill", "-9", *children], check=False)
        second = {r.host: r for r in run_step(nr, command_step("true"))}
    finally:
        nr.close_connections()
    assert second["h02"].status == "unreachable" and second["h01"].ok
