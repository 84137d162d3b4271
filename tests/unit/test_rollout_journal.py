"""The rollout journal: durable lines, torn-line tolerance, replay for resume, finding the newest."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleet import journal as jr
from fleet.errors import FleetError
from fleet.inventory import Inventory


def test_append_read_and_replay(tmp_path: Path) -> None:
    j = jr.Journal.create(tmp_path, "ro-20261126-000000-aaaa")
    j.append("plan", pid=123, jobs=[], batches=[])
    j.append("stage", status="start")
    j.append("step", host="a", step="stage", status="start")
    j.append("stage", status="done")
    j.append("step", host="a", step="drain", status="start")
    j.append("host", host="a", result="updated")
    j.append("step", host="b", step="up", status="start")
    events = jr.read(j.path)
    assert [e["event"] for e in events] == ["plan", "stage", "step", "stage", "step", "host", "step"]
    assert all(e["t"].endswith("Z") for e in events)
    r = jr.replay(j.rollout_id, events)
    assert r.plan is not None and r.pid == 123 and r.staged and r.outcome is None and not r.finished
    assert r.steps == {"a": "drain", "b": "up"} and r.results == {"a": "updated"}
    assert r.touched == ["a", "b"]


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    j = jr.Journal.create(tmp_path, "ro-1")
    j.append("plan", pid=1)
    with open(j.path, "a") as handle:
        handle.write('{"t":"x","event":"st')  # SIGKILL in the middle of a write
    assert [e["event"] for e in jr.read(j.path)] == ["plan"]


def test_outcomes_resumes_and_fleet_rollback(tmp_path: Path) -> None:
    j = jr.Journal.create(tmp_path, "ro-2")
    j.append("plan", pid=1)
    j.append("fleet-rollback", status="start", hosts=["c", "b"])
    j.append("end", outcome="interrupted")
    r = jr.load(j.path)
    assert r.outcome == "interrupted" and not r.finished and r.reverting == ["c", "b"]
    j.append("resume", pid=2)
    j.append("fleet-rollback", status="start", hosts=["b", "a"])
    r = jr.load(j.path)
    assert r.outcome is None and r.resumes == 1 and r.pid == 2 and r.reverting == ["c", "b", "a"]
    j.append("end", outcome="rolled-back")
    assert jr.load(j.path).finished


def test_find_newest_or_by_id(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="no rollout to resume"):
        jr.find(tmp_path)
    first = jr.Journal.create(tmp_path, "ro-20261126-000001-aaaa")
    second = jr.Journal.create(tmp_path, "ro-20261126-000002-bbbb")
    os.utime(first.path, (1, 1))
    assert jr.find(tmp_path) == second.path
    assert jr.find(tmp_path, "ro-20261126-000001-aaaa") == first.path
    with pytest.raises(FleetError, match="ro-20261126-000002-bbbb"):
        jr.find(tmp_path, "ro-nope")
    with pytest.raises(FleetError, match="invalid rollout id"):
        jr.find(tmp_path, "../etc/passwd")
    with pytest.raises(FleetError, match="already exists"):
        jr.Journal.create(tmp_path, "ro-20261126-000002-bbbb")


def test_inventories_with_the_same_name_do_not_share_journals(tmp_path: Path) -> None:
    a = Inventory("inventory", tmp_path / "a" / "inventory", {}, {}, {})
    b = Inventory("inventory", tmp_path / "b" / "inventory", {}, {}, {})
    assert jr.fleet_dir(a, tmp_path) != jr.fleet_dir(b, tmp_path)
    assert jr.fleet_dir(a, tmp_path).name.startswith("inventory-")


def test_pid_alive_only_for_live_fleet_processes() -> None:
    assert not jr.pid_alive(None)
    assert not jr.pid_alive(os.getpid())  # ourselves: we are the resumer
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)  # fleet"])
    try:
        cmdline = Path(f"/proc/{proc.pid}/cmdline")
        deadline = time.monotonic() + 10
        while b"fleet" not in cmdline.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)  # between fork and exec the child still shows our own command line
        assert jr.pid_alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert not jr.pid_alive(proc.pid)
