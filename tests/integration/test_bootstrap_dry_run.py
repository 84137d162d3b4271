"""`fab bootstrap --dry-run` over real OpenSSH: facts, then the diff, and nothing on the host changes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fleet.commands.bootstrap import DAEMON_JSON, SYSCTL_FILE
from fleet.local.sshd_hosts import SshdFleet
from tests.fixtures.sshd import fab

pytestmark = pytest.mark.sshd


def dry_run(fleet: SshdFleet, *extra: str) -> tuple[int, dict[str, Any]]:
    r = fab("bootstrap", "--inventory", str(fleet.inventory_dir), "--dry-run", "--json", *extra)
    try:
        return r.returncode, json.loads(r.stdout)
    except ValueError:
        pytest.fail(f"not JSON (exit {r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}")


def items(report: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {i["item"]: i for i in report["items"]}


def test_dry_run_reports_facts_and_diff_and_changes_nothing(fresh_sshd: SshdFleet) -> None:
    app = fresh_sshd.root / "app"
    etc_before = {p: Path(p).exists() for p in (DAEMON_JSON, SYSCTL_FILE)}

    code, payload = dry_run(fresh_sshd)

    # the layout does not exist yet: something would change (exit 3); the sshd hosts are this machine,
    # so a Docker installed here whose daemon is stopped (and no systemd to start it) would fail: exit 1
    failing = {i["item"] for h in payload["hosts"] for i in h["items"] if i["state"] == "would fail"}
    docker_cli = shutil.which("docker")
    daemon_down = not docker_cli or subprocess.run([docker_cli, "info"], capture_output=True).returncode != 0
    assert failing <= ({"docker engine running"} if daemon_down else set()), payload
    assert code == (1 if failing else 3), payload
    assert payload["dry_run"] is True and [h["host"] for h in payload["hosts"]] == ["h01", "h02"]
    for host in payload["hosts"]:
        assert host["status"] == "ok" and host["would_change"] > 0
        facts, diff = host["facts"], items(host)
        assert facts["user_id"] == str(os.getuid()) and facts["dirs"][str(app)] is None
        assert diff[f"dir {app}"] == {
            "item": f"dir {app}",
            "state": "would change",
            "current": "absent",
            "wanted": f"owner {fresh_sshd.user}",
        }
        assert diff[f"dir {app}/releases"]["wanted"] == f"owner {fresh_sshd.user}, mode 750"
        assert diff["history file"]["state"] == "would change"
        # the sshd hosts are this machine: Docker is whatever it has (installed, or would be)
        path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
        has_docker = bool(shutil.which("docker", path=path) and shutil.which("dockerd", path=path))
        docker = diff["docker engine"]
        if has_docker:
            assert docker["state"] == "ok" and facts["docker_cli"], docker
        else:
            assert docker["state"] in ("would change", "would fail") and docker["current"] == "absent"
        sysctls = diff["sysctls"]
        assert sysctls["wanted"] == "net.core.somaxconn=4096, net.ipv4.ip_local_port_range=10240 65000"
        assert "live net.core.somaxconn=" in sysctls["current"]
    assert not app.exists()  # nothing was created
    assert {p: Path(p).exists() for p in (DAEMON_JSON, SYSCTL_FILE)} == etc_before


def test_dry_run_sees_a_prepared_layout_as_ok(fresh_sshd: SshdFleet) -> None:
    app = fresh_sshd.root / "app"
    for sub in ("", "releases", "volumes", "state"):
        (app / sub).mkdir(parents=True, exist_ok=True)
    (app / "releases").chmod(0o700)  # bootstrap wants 0750
    (app / "history.jsonl").touch()

    _code, payload = dry_run(fresh_sshd, "--hosts", "h01")

    diff = items(payload["hosts"][0])
    for sub in ("", "/volumes", "/state"):
        assert diff[f"dir {app}{sub}"]["state"] == "ok", diff[f"dir {app}{sub}"]
    assert diff[f"dir {app}/releases"] == {
        "item": f"dir {app}/releases",
        "state": "would change",
        "current": f"owner {fresh_sshd.user}, mode 700",
        "wanted": f"owner {fresh_sshd.user}, mode 750",
    }
    assert diff["history file"]["state"] == "ok"
    assert oct((app / "releases").stat().st_mode & 0o777) == "0o700"  # still as it was


def test_dry_run_exits_1_when_a_host_is_unreachable(fresh_sshd: SshdFleet) -> None:
    fresh_sshd.stop_host("h02")

    code, payload = dry_run(fresh_sshd)

    assert code == 1
    by_host = {h["host"]: h for h in payload["hosts"]}
    assert by_host["h02"]["status"] == "unreachable" and by_host["h02"]["error"]
    assert by_host["h01"]["status"] == "ok" and by_host["h01"]["items"]
