"""SSH and shell edges over real OpenSSH: `@revoked` and `@cert-authority` lines in known_hosts, and
terminal escape sequences in host output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet.errors import HostSetupError
from fleet.local.sshd_hosts import SshdFleet, keygen
from tests.fixtures.sshd import fab

pytestmark = pytest.mark.sshd


def _exec(fleet: SshdFleet, *args: str) -> dict[str, dict[str, object]]:
    r = fab("exec", "--inventory", str(fleet.inventory_dir), *args, "--json")
    assert r.stdout, r.stderr
    return {x["host"]: x for x in json.loads(r.stdout)["results"]}


def test_revoked_host_key_refused_and_named_other_hosts_unaffected(fresh_sshd: SshdFleet) -> None:
    kh = fresh_sshd.inventory_dir / "known_hosts"
    h01 = fresh_sshd.hosts[0]
    kind, b64 = h01.host_key_pub.split()[:2]
    # h01's key stays pinned (lines 1-2), and line 3 revokes it for every host
    kh.write_text(kh.read_text() + f"@revoked * {kind} {b64}\n")
    marker = fresh_sshd.root / "ran"
    res = _exec(fresh_sshd, "--cmd", f"touch {marker}-$(hostname)-$$")
    assert res["h02"]["status"] == "ok", res["h02"]
    assert res["h01"]["status"] == "unreachable"
    err = str(res["h01"]["error"])
    assert "REVOKED" in err and f"{kh}:3" in err and "SHA256:" in err, err
    assert "InvalidHostKey" not in err and "hint:" in err
    assert len(list(fresh_sshd.root.glob("ran-*"))) == 1  # only h02 ran it


def test_revoked_key_for_one_host_pattern_only(fresh_sshd: SshdFleet) -> None:
    kh = fresh_sshd.inventory_dir / "known_hosts"
    h01, h02 = fresh_sshd.hosts
    kind, b64 = h01.host_key_pub.split()[:2]
    # revoked under h02's name only: h01 (which really has that key) is unaffected
    kh.write_text(kh.read_text() + f"@revoked [127.0.0.1]:{h02.port} {kind} {b64}\n")
    res = _exec(fresh_sshd, "--cmd", "true")
    assert res["h01"]["status"] == "ok" and res["h02"]["status"] == "ok", res


def test_cert_authority_line_rejected_clearly(fresh_sshd: SshdFleet) -> None:
    kh = fresh_sshd.inventory_dir / "known_hosts"
    ca = keygen(fresh_sshd.root / "host_ca", "host-ca").split()
    lines = kh.read_text().splitlines()
    # h01 is vouched for only by a CA; h02 keeps its pin (line 1)
    kh.write_text(f"{lines[1]}\n@cert-authority [127.0.0.1]:* {ca[0]} {ca[1]}\n")
    res = _exec(fresh_sshd, "--cmd", "true")
    assert res["h02"]["status"] == "ok", res["h02"]
    assert res["h01"]["status"] == "unreachable"
    err = str(res["h01"]["error"])
    assert "@cert-authority" in err and f"{kh}:2" in err and "not supported" in err, err
    assert fresh_sshd.hosts[0].known_hosts_line in err  # the hint: pin the host's own key
    assert "InvalidHostKey" not in err


def test_cert_authority_line_does_not_break_pinned_hosts(fresh_sshd: SshdFleet) -> None:
    kh = fresh_sshd.inventory_dir / "known_hosts"
    ca = keygen(fresh_sshd.root / "host_ca", "host-ca").split()
    kh.write_text(f"@cert-authority * {ca[0]} {ca[1]}\n" + kh.read_text())
    res = _exec(fresh_sshd, "--cmd", "true")
    assert {h: r["status"] for h, r in res.items()} == {"h01": "ok", "h02": "ok"}, res


HOSTILE = r"printf 'a\033]0;pwned\007b\033[2J\033[31mred\302\233c\n'; printf 'e\033[1mrr\n' >&2"


def test_escape_sequences_in_exec_output_neutralised(fresh_sshd: SshdFleet) -> None:
    r = fab("exec", "--inventory", str(fresh_sshd.inventory_dir), "--hosts", "h01", "--cmd", HOSTILE)
    assert r.returncode == 0, r.stderr
    for ch in ("\x1b", "\x07", "\x9b", "\r"):
        assert ch not in r.stdout and ch not in r.stderr, (ch, r.stdout)
    assert "a\\x1b]0;pwned\\x07b\\x1b[2J\\x1b[31mred\\x9bc" in r.stdout


def test_escape_sequences_in_failed_exec_output_neutralised(fresh_sshd: SshdFleet) -> None:
    r = fab(
        "exec",
        "--inventory",
        str(fresh_sshd.inventory_dir),
        "--hosts",
        "h01",
        "--cmd",
        "printf 'boom\\033[2J\\033]8;;http://x\\007\\n' >&2; exit 3",
    )
    assert r.returncode == 1
    assert "\x1b" not in r.stdout + r.stderr and "\x07" not in r.stdout + r.stderr
    assert "boom\\x1b[2J" in r.stdout


def test_escape_sequences_kept_raw_but_json_escaped(fresh_sshd: SshdFleet) -> None:
    r = fab(
        "exec", "--inventory", str(fresh_sshd.inventory_dir), "--hosts", "h01", "--cmd", HOSTILE, "--json"
    )
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout and "\\u001b" in r.stdout
    (res,) = json.loads(r.stdout)["results"]
    assert res["stdout"] == "a\x1b]0;pwned\x07b\x1b[2J\x1b[31mred\x9bc"  # raw
    assert res["stderr"] == "e\x1b[1mrr"


def test_health_probe_on_a_real_host_uses_a_private_temp_file(fresh_sshd: SshdFleet) -> None:
    """The /health probe (its body goes to a mktemp file, not /tmp/.fleet-health.$$) against a real
    shell and curl: status and version parsed, the temp file removed."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from fleet.commands.health import health_command, parse_health
    from fleet.inventory import load, select
    from fleet.ssh.runner import command_step, run_on

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"status": "ok", "version": "9.9.9"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None: ...

    server = HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        inv = load(str(fresh_sshd.inventory_dir))
        tmpdir, shim = fresh_sshd.root / "tmp", fresh_sshd.root / "bin"
        tmpdir.mkdir()
        shim.mkdir()
        # a curl that records where it was told to write the body, then runs the real one
        (shim / "curl").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {shim}/args\nexec /usr/bin/curl "$@"\n')
        (shim / "curl").chmod(0o755)
        script = (
            f"export TMPDIR={tmpdir} PATH={shim}:$PATH\n" + health_command(server.server_address[1]).script
        )
        (res,) = run_on(inv, select(inv, hosts=["h01"]), command_step(script))
    finally:
        server.shutdown()
    assert res.ok, res
    assert parse_health(res.stdout) == (200, "9.9.9")
    args = (shim / "args").read_text().splitlines()
    body_file = args[args.index("-o") + 1]
    assert body_file.startswith(f"{tmpdir}/")  # mktemp's name (in TMPDIR), not a fixed /tmp one
    assert list(tmpdir.iterdir()) == []  # and removed


def test_a_test_fleet_that_fails_to_start_leaves_no_sshd_running(tmp_path: Path) -> None:
    fleet = SshdFleet(tmp_path / "fleet").create(2)
    broken = fleet.root / fleet.hosts[1].name / "sshd_config"
    broken.write_text(broken.read_text() + "NoSuchOption yes\n")  # sshd refuses to start on it
    with pytest.raises(HostSetupError, match=f"sshd for {fleet.hosts[1].name} exited"):
        fleet.start()
    # the good host's sshd was stopped (and reaped) too; before, its Popen stayed and the server ran on.
    # (Not probed by port: under xdist another worker's test server may take the freed port at once.)
    assert [h.process for h in fleet.hosts] == [None, None]
