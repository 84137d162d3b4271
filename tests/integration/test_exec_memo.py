"""`fab exec` over real OpenSSH behaves the same whether its inventory comes from the memo or from a full
load: results, errors, exit codes, host keys pinned (fleet/inventory/memo.py)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from fleet.inventory import memo
from fleet.local.sshd_hosts import SshdFleet, keygen
from tests.fixtures.sshd import fab

pytestmark = pytest.mark.sshd


def _exec(inv: Path, cache: str, *args: str) -> tuple[int, Any, str]:
    """(exit code, stdout, stderr) with the times taken left out."""
    r = fab("exec", "--inventory", str(inv), *args, env={"FLEET_INVENTORY_CACHE": cache})
    out: Any = re.sub(r"\b[0-9]+\.[0-9]+s\b", "T", r.stdout)
    if "--json" in args and r.stdout.strip():
        out = json.loads(r.stdout)
        for res in out["results"]:
            assert res.pop("duration") > 0 or res["status"] == "unreachable"
    return r.returncode, out, re.sub(r"\b[0-9]+\.[0-9]+s\b", "T", r.stderr)


def _memo_file(cache: Path, inv: Path) -> Path:
    return memo.memo_file(cache, inv.resolve())


def test_exec_from_the_memo_is_exec_without_it(sshd_fleet: SshdFleet, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    inv = sshd_fleet.inventory_dir
    args = ("--cmd", "echo out-$((6*7)); echo err >&2; hostname >/dev/null", "--json")
    miss = _exec(inv, str(cache), *args)
    file = _memo_file(cache, inv)
    written = file.stat()
    hit = _exec(inv, str(cache), *args)
    assert (file.stat().st_ino, file.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)  # read
    off = _exec(inv, "off", *args)
    assert miss == hit == off
    code, out, _ = hit
    assert code == 1  # h05 is down
    status = {r["host"]: r["status"] for r in out["results"]}
    assert status == {"h01": "ok", "h02": "ok", "h03": "ok", "h04": "ok", "h05": "unreachable"}
    # the table and the selection options too
    table = ("--hosts", "h01,h03", "--where", "port=" + str(sshd_fleet.hosts[2].port), "--cmd", "uname -s")
    assert _exec(inv, str(cache), *table) == _exec(inv, "off", *table)
    assert _exec(inv, str(cache), *table)[1].count("\tok\t0\t") == 1


def test_selection_errors_are_the_same(sshd_fleet: SshdFleet, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    inv = sshd_fleet.inventory_dir
    _exec(inv, cache, "--hosts", "h01", "--cmd", "true")  # the memo is written
    for args in (("--hosts", "nope"), ("--group", "nope"), ("--where", "novalue")):
        with_memo = _exec(inv, cache, *args, "--cmd", "true")
        without = _exec(inv, "off", *args, "--cmd", "true")
        assert with_memo == without
        assert with_memo[0] == 2 and with_memo[2]


def test_host_keys_stay_pinned_with_the_memo(fresh_sshd: SshdFleet, tmp_path: Path) -> None:
    """known_hosts is read at every connection, never memoized: a changed pin is refused at once."""
    cache = tmp_path / "cache"
    inv = fresh_sshd.inventory_dir
    assert _exec(inv, str(cache), "--cmd", "true", "--json")[0] == 0
    assert _memo_file(cache, inv).exists()
    kh = inv / "known_hosts"
    other = keygen(fresh_sshd.root / "impostor", "impostor").split()
    kh.write_text(kh.read_text().replace(fresh_sshd.hosts[0].host_key_pub.split()[1], other[1]))
    marker = fresh_sshd.root / "should-not-exist"
    with_memo = _exec(inv, str(cache), "--hosts", "h01", "--cmd", f"touch {marker}", "--json")
    without = _exec(inv, "off", "--hosts", "h01", "--cmd", f"touch {marker}", "--json")
    assert with_memo == without
    (res,) = with_memo[1]["results"]
    assert res["status"] == "unreachable" and "host key MISMATCH" in res["error"]
    assert not marker.exists()


def test_an_edited_inventory_is_read_again(fresh_sshd: SshdFleet, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    inv = fresh_sshd.inventory_dir
    assert _exec(inv, str(cache), "--cmd", "true", "--json")[0] == 0
    hosts = inv / "hosts.yaml"
    hosts.write_text(hosts.read_text().replace(str(fresh_sshd.hosts[1].port), "1"))  # h02 now unreachable
    code, out, _ = _exec(inv, str(cache), "--cmd", "true", "--json")
    assert code == 1
    assert {r["host"]: r["status"] for r in out["results"]} == {"h01": "ok", "h02": "unreachable"}
    assert "127.0.0.1:1 " in out["results"][1]["error"]
    assert os.stat(_memo_file(cache, inv)).st_mode & 0o777 == 0o600
