"""The rollout journal: durable lines, torn-line tolerance, replay for resume, finding the newest."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleet.errors import FleetError
from fleet.inventory import Inventory
from fleet.rollout import journal as jr


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


def test_a_torn_tail_does_not_swallow_the_next_record(tmp_path: Path) -> None:
    """A SIGKILL mid-write leaves a line without its newline; the record the resume writes next must
    not be glued onto it (and lost with it): the resumer's pid is what refuses a second resume."""
    j = jr.Journal.create(tmp_path, "ro-3")
    j.append("plan", pid=1)
    j.append("step", host="a", step="drain", status="start")
    with open(j.path, "a") as handle:
        handle.write('{"t":"x","event":"step","host":"a","st')  # killed in the middle of a write
    again = jr.Journal(j.path)
    again.append("resume", pid=2, touched=["a"])
    again.append("step", host="a", step="lb-out", status="start")
    events = jr.read(j.path)
    assert [e["event"] for e in events] == ["plan", "step", "resume", "step"]
    r = jr.load(j.path)
    assert r.resumes == 1 and r.pid == 2 and r.steps == {"a": "lb-out"}
    assert j.path.read_text().endswith("}\n")


def test_claim_repairs_the_torn_tail_and_journals_it(tmp_path: Path) -> None:
    j = jr.Journal.create(tmp_path, "ro-4")
    j.append("plan", pid=1)
    j.close()
    with open(j.path, "a") as handle:
        handle.write('{"t":"x","ev')
    claimed = jr.Journal.claim(j.path)
    try:
        claimed.append("resume", pid=2)
        lines = j.path.read_text().splitlines()
        assert [jr.json.loads(line)["event"] for line in lines] == ["plan", "repair", "resume"]
        assert jr.json.loads(lines[1])["dropped_bytes"] == len('{"t":"x","ev')
    finally:
        claimed.close()


def test_only_one_process_claims_a_journal(tmp_path: Path) -> None:
    """Two `--resume` of the same rollout at once: the second is refused, naming the first's pid."""
    j = jr.Journal.create(tmp_path, "ro-5")
    j.append("plan", pid=1)
    j.close()
    first = jr.Journal.claim(j.path)
    first.append("resume", pid=4242)
    try:
        script = (
            "import sys; from fleet.rollout import journal as jr; from fleet.errors import FleetError\n"
            f"try:\n    jr.Journal.claim(jr.Path({str(j.path)!r}))\n"
            "except FleetError as exc:\n    print(exc.render()); sys.exit(3)\n"
        )
        other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert other.returncode == 3, other.stdout + other.stderr
        assert "already running" in other.stdout and "4242" in other.stdout
    finally:
        first.close()
    jr.Journal.claim(j.path).close()  # free again once the first one let go


def test_parallel_appends_share_fsyncs_and_each_returns_only_once_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: 64 threads journal at once; every line is written, each append returns only after an
    fsync that began after its own write, and the fsyncs are far fewer than the lines."""
    import threading

    j = jr.Journal.create(tmp_path, "ro-20261126-000000-gggg")
    synced_sizes: list[int] = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        size = os.fstat(fd).st_size  # what this fsync covers: everything written before it began
        time.sleep(0.02)  # a disk under load: 20 ms an fsync
        real_fsync(fd)
        synced_sizes.append(size)

    monkeypatch.setattr(jr.os, "fsync", slow_fsync)
    uncovered: list[str] = []

    def worker(n: int) -> None:
        j.append("step", host=f"h{n:02d}", step="up", status="start")
        lines = j.path.read_bytes().split(b"\n")
        mine = next(i for i, line in enumerate(lines) if f'"h{n:02d}"'.encode() in line)
        end = sum(len(line) + 1 for line in lines[: mine + 1])
        if not synced_sizes or max(synced_sizes) < end:
            uncovered.append(f"h{n:02d}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = jr.read(j.path)
    assert sorted(e["host"] for e in events) == [f"h{n:02d}" for n in range(64)]
    assert uncovered == []  # no append returned before its line was fsync'ed
    assert 1 <= len(synced_sizes) < 32  # shared: 64 lines, at 20 ms an fsync, in far fewer fsyncs
