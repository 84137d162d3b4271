"""The fleet lock in Compute project metadata, through the real google-cloud-compute client against
the local Compute REST endpoint (fingerprint compare-and-swap as Compute does it)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fleet import rollout as ro
from fleet.errors import FleetError
from fleet.gcp.compute import Compute, ComputeError
from fleet.inventory import Inventory
from fleet.rollout import journal as jr
from fleet.rollout.lock import FleetLock, Heartbeat, LockHeld, LockLost
from fleet.rollout.pacing import Timings
from functions.fleet_contract import LOCK_METADATA_KEY, is_held, lock_to_json, parse_lock
from standins.compute_api import ComputeApi
from standins.compute_state import InMemoryCompute

T0 = datetime(2026, 11, 26, 7, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def endpoint() -> Iterator[tuple[ComputeApi, InMemoryCompute]]:
    backend = InMemoryCompute(action_seconds=0.05, op_seconds=0.01)
    backend.add_project("p", {"other-key": "kept"})
    api = ComputeApi(backend).start()
    yield api, backend
    api.stop()
    backend.close()


def store(api: ComputeApi, clock: Clock | None = None, warnings: list[str] | None = None) -> FleetLock:
    return FleetLock(
        Compute(api.url),
        "p",
        "prod",
        clock=clock or Clock(),
        warn=(warnings.append if warnings is not None else None),
    )


def stored(api: ComputeApi) -> str | None:
    return Compute(api.url).project_metadata("p")[0].get(LOCK_METADATA_KEY)


def test_acquire_then_a_second_rollout_is_refused_with_the_owner(
    endpoint: tuple[ComputeApi, InMemoryCompute],
) -> None:
    api, _ = endpoint
    clock = Clock()
    lock = store(api, clock).acquire("alice@box", "hotfix 1.1.1", "ro-a", ttl=300)
    assert lock.expires - lock.created == timedelta(seconds=300)
    assert parse_lock(stored(api)) == lock  # what we hold is exactly what is stored
    assert Compute(api.url).project_metadata("p")[0]["other-key"] == "kept"  # other metadata untouched
    with pytest.raises(LockHeld) as err:
        store(api, clock).acquire("bob@other", "", "ro-b", ttl=300)
    text = err.value.render()
    assert (
        "alice@box" in text and "ro-a" in text and "hotfix 1.1.1" in text and "lock.release --force" in text
    )
    assert parse_lock(stored(api)) == lock  # the refusal changed nothing


def test_the_same_rollout_takes_its_lock_back_on_resume(endpoint: tuple[ComputeApi, InMemoryCompute]) -> None:
    api, _ = endpoint
    clock = Clock()
    first = store(api, clock).acquire("alice@box", "", "ro-a", ttl=300)
    clock.now += timedelta(seconds=10)
    again = store(api, clock).acquire("alice@box", "", "ro-a", ttl=300)
    assert again.rollout_id == first.rollout_id and again.expires > first.expires


def test_expired_lock_taken_over_with_a_warning(endpoint: tuple[ComputeApi, InMemoryCompute]) -> None:
    api, _ = endpoint
    clock = Clock()
    store(api, clock).acquire("alice@box", "", "ro-a", ttl=60)
    clock.now += timedelta(seconds=61)
    warnings: list[str] = []
    mine = store(api, clock, warnings).acquire("bob@other", "", "ro-b", ttl=60)
    assert mine.owner == "bob@other"
    assert len(warnings) == 1 and "expired" in warnings[0] and "alice@box" in warnings[0]


def test_garbled_value_is_replaced_with_a_warning(endpoint: tuple[ComputeApi, InMemoryCompute]) -> None:
    api, backend = endpoint
    backend.add_project("p", {LOCK_METADATA_KEY: "{not json"})
    warnings: list[str] = []
    st = store(api).status()
    assert st.lock is None and not st.held and st.problem
    store(api, warnings=warnings).acquire("bob@other", "", "ro-b")
    assert warnings and "unreadable" in warnings[0]


def test_renew_and_lost_lock(endpoint: tuple[ComputeApi, InMemoryCompute]) -> None:
    api, _ = endpoint
    clock = Clock()
    s = store(api, clock)
    lock = s.acquire("alice@box", "", "ro-a", ttl=60)
    clock.now += timedelta(seconds=30)
    renewed = s.renew(lock, ttl=60)
    assert renewed.expires == T0 + timedelta(seconds=90) and renewed.created == lock.created
    assert s.release(owner="bob@other", force=True) is not None  # somebody forces it away
    with pytest.raises(LockLost, match="released"):
        s.renew(renewed, ttl=60)


def test_release_rules(endpoint: tuple[ComputeApi, InMemoryCompute]) -> None:
    api, _ = endpoint
    s = store(api)
    assert s.release(owner="alice@box") is None  # nothing held
    lock = s.acquire("alice@box", "", "ro-a")
    with pytest.raises(LockHeld, match="not yours"):
        s.release(owner="bob@other")
    assert s.release(lock=parse_lock(lock_to_json(lock))) == lock
    assert stored(api) is None
    s.acquire("alice@box", "", "ro-a")
    assert s.release(owner="bob@other", force=True) is not None and stored(api) is None


def test_compare_and_swap_loses_to_a_concurrent_writer(endpoint: tuple[ComputeApi, InMemoryCompute]) -> None:
    """Two operators read the free lock at the same time; the second write carries a stale fingerprint,
    is refused by Compute (412), re-reads and finds the first one's lock."""
    api, _ = endpoint
    compute = Compute(api.url)
    a, b = store(api), FleetLock(compute, "p", "prod", clock=Clock())
    real_read = b._read
    raced = False

    def read_then_race() -> tuple[dict[str, str], str, object, object]:
        nonlocal raced
        result = real_read()
        if not raced:
            raced = True
            a.acquire("alice@box", "", "ro-a")  # lands between b's read and b's write
        return result  # type: ignore[return-value]

    b._read = read_then_race  # type: ignore[method-assign]
    with pytest.raises(LockHeld, match="alice@box"):
        b.acquire("bob@other", "", "ro-b")
    assert [c.status for c in api.calls("projects.setCommonInstanceMetadata")] == [200, 412]


def test_heartbeat_renews_and_notices_a_lost_lock(endpoint: tuple[ComputeApi, InMemoryCompute]) -> None:
    api, _ = endpoint
    s = FleetLock(Compute(api.url), "p", "prod")
    lock = s.acquire("alice@box", "", "ro-a", ttl=30)
    hb = Heartbeat(s, lock, ttl=30, interval=0.05).start()
    deadline = time.monotonic() + 10

    def writes() -> int:
        return len(api.calls("projects.setCommonInstanceMetadata"))

    while writes() < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writes() >= 3 and hb.lost is None  # acquire + renewals
    assert parse_lock(stored(api)).rollout_id == "ro-a"  # type: ignore[union-attr]
    s.release(owner="bob@other", force=True)
    while hb.lost is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert isinstance(hb.lost, LockLost)
    hb.stop()
    assert not is_held(parse_lock(stored(api)), datetime.now(UTC))


# --------------------------------------------------------------------------- one process per rollout


def test_the_same_rollout_from_another_live_process_is_refused(
    endpoint: tuple[ComputeApi, InMemoryCompute],
) -> None:
    """Resume on the same rollout id from a second process (same operator) while the first one still
    holds the lock: refused with the holder's details, not taken over (both would renew it)."""
    api, _ = endpoint
    mine = FleetLock(Compute(api.url), "p", "prod").acquire("alice@box", "", "ro-a", ttl=300)
    script = (
        "import sys\nfrom fleet.gcp.compute import Compute\n"
        "from fleet.rollout.lock import FleetLock, LockHeld\n"
        f"try:\n    FleetLock(Compute({api.url!r}), 'p', 'prod').acquire('alice@box', '', 'ro-a')\n"
        "except LockHeld as exc:\n    print(exc.render()); sys.exit(3)\n"
    )
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert other.returncode == 3, other.stdout + other.stderr
    assert (
        "ro-a" in other.stdout
        and f"pid {os.getpid()}" in other.stdout
        and socket.gethostname() in other.stdout
    )
    assert parse_lock(stored(api)) == mine  # untouched


def test_a_dead_holder_of_our_rollout_is_taken_over_and_can_no_longer_renew(
    endpoint: tuple[ComputeApi, InMemoryCompute],
) -> None:
    """A killed run of this rollout on this machine: its resume takes the live lock back at once."""
    api, _ = endpoint
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = FleetLock(Compute(api.url), "p", "prod", holder=f"{socket.gethostname()}:{proc.pid}:dead")
    old = dead.acquire("alice@box", "", "ro-a", ttl=300)
    warnings: list[str] = []
    new = FleetLock(Compute(api.url), "p", "prod", warn=warnings.append).acquire("alice@box", "", "ro-a")
    assert new.holder != old.holder and warnings and str(proc.pid) in warnings[0]
    with pytest.raises(LockLost):
        dead.renew(old)


# --------------------------------------------------------------------------- heartbeat faults


def test_heartbeat_survives_any_renewal_error(endpoint: tuple[ComputeApi, InMemoryCompute]) -> None:
    """A garbled answer (not a FleetError inside the client) used to kill the renewal thread silently."""
    api, _ = endpoint
    s = FleetLock(Compute(api.url), "p", "prod")
    lock = s.acquire("alice@box", "", "ro-a", ttl=4)
    api.inject("projects.setCommonInstanceMetadata", status=200, times=2, raw="<html>proxy error</html>")
    warnings: list[str] = []
    hb = Heartbeat(s, lock, ttl=4, interval=0.2, warn=warnings.append).start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            now_stored = parse_lock(stored(api))
            if now_stored is not None and now_stored.expires > lock.expires:
                break
            time.sleep(0.05)
        assert now_stored is not None and now_stored.expires > lock.expires, (hb.errors, warnings)
        assert hb.lost is None and hb.problem() is None
        assert len(hb.errors) == 2 and len(warnings) == 2 and "retry" in warnings[0]
    finally:
        hb.stop()


def test_heartbeat_gives_up_before_the_lock_expires(endpoint: tuple[ComputeApi, InMemoryCompute]) -> None:
    """Compute refuses every renewal: the rollout is told while the lock is still ours, not after."""
    api, _ = endpoint
    s = FleetLock(Compute(api.url), "p", "prod")
    # a TTL of 8 s gives up 1.6 s before expiry (ttl / 5): a loaded machine's stalls stay well inside it
    lock = s.acquire("alice@box", "", "ro-a", ttl=8)
    api.inject("projects.setCommonInstanceMetadata", status=503, times=1000)
    hb = Heartbeat(s, lock, ttl=8, interval=0.2).start()
    try:
        deadline = time.monotonic() + 20
        while hb.problem() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert hb.problem() is not None and "renew" in str(hb.problem())
        assert datetime.now(UTC) < lock.expires  # noticed with time to spare
    finally:
        hb.stop()


def test_a_hanging_compute_call_is_cut_short_of_the_ttl(endpoint: tuple[ComputeApi, InMemoryCompute]) -> None:
    """Renewal calls are bounded well below the TTL: a Compute front end that stops answering
    cannot keep the heartbeat stuck past the lock's expiry."""
    api, _ = endpoint
    s = FleetLock(Compute(api.url), "p", "prod")
    lock = s.acquire("alice@box", "", "ro-a", ttl=8)  # calls bounded at ttl / 8, gives up at ttl / 5 left
    api.inject("projects.get", status=200, times=1000, delay=20)
    hb = Heartbeat(s, lock, ttl=8, interval=0.2).start()
    try:
        deadline = time.monotonic() + 20
        while hb.problem() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert hb.problem() is not None and datetime.now(UTC) < lock.expires
        time.sleep(3)
        assert any("cannot reach" in e or "timed out" in e.lower() for e in hb.errors), hb.errors
    finally:
        started = time.monotonic()
        hb.stop()
        assert time.monotonic() - started < 5


def test_compute_calls_have_a_timeout(endpoint: tuple[ComputeApi, InMemoryCompute]) -> None:
    api, _ = endpoint
    api.inject("projects.get", status=200, times=1, delay=10)
    started = time.monotonic()
    with pytest.raises(ComputeError):
        Compute(api.url, call_timeout=0.5).project_metadata("p")
    assert time.monotonic() - started < 5


# --------------------------------------------------------------------------- execute: resume and lock loss


def _resumable(directory: Path) -> ro.Plan:
    """The journal of an interrupted rollout with nothing left to do on hosts (the engine is stubbed)."""
    plan = ro.Plan(
        "ro-20261126-000000-abcd",
        "rollout",
        "inv",
        "1.1.0",
        {},
        [],
        {},
        0,
        "pause",
        Timings(1, 1, 1),
        "alice@box",
    )
    j = jr.Journal.create(directory, plan.rollout_id)
    j.append("plan", pid=1, **plan.as_dict())
    j.append("end", outcome="interrupted")
    j.close()
    return plan


def _run(api: ComputeApi, directory: Path, holder: str | None = None, ttl: float = 300, **kw: Any) -> ro.Run:
    inv = Inventory("inv", directory / "inventory", {}, {}, {})
    lock = FleetLock(Compute(api.url), "p", "prod", holder=holder)
    return ro.Run(
        inv=inv,
        nr=None,
        lock=lock,
        lb=lambda h: None,
        marks=ro.Marks(None),
        journal_dir=directory,
        ttl=ttl,
        **kw,
    )  # type: ignore[arg-type]


def test_two_concurrent_resumes_of_one_rollout(
    endpoint: tuple[ComputeApi, InMemoryCompute], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one `--resume` runs, a second one of the same rollout is refused: on this machine by the
    journal's flock (naming the first one's pid), from a copy of the journal elsewhere by the lock
    (naming the holder process)."""
    api, _ = endpoint
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    plan = _resumable(here)
    path = jr.find(here, plan.rollout_id)
    elsewhere.mkdir()
    shutil.copy(path, elsewhere / path.name)
    running, finish = threading.Event(), threading.Event()
    calls: list[int] = []

    def engine_run(self: ro.Engine, **_kw: Any) -> ro.Report:
        calls.append(1)
        if len(calls) == 1:
            running.set()
            finish.wait(30)
        return self._report("succeeded", 0, time.monotonic(), 0.0)

    monkeypatch.setattr(ro.Engine, "run", engine_run)
    first: list[Any] = []
    thread = threading.Thread(
        target=lambda: first.append(ro.execute(_run(api, here), plan, resume=jr.load(path))), daemon=True
    )
    thread.start()
    try:
        assert running.wait(30)
        writes = len(api.calls("projects.setCommonInstanceMetadata"))
        with pytest.raises(FleetError) as same_machine:
            ro.execute(_run(api, here, holder="box:99999:1"), plan, resume=jr.load(path))
        assert (
            "already running" in same_machine.value.what and f"pid {os.getpid()}" in same_machine.value.what
        )
        assert same_machine.value.where == str(path)  # the journal refused it: the lock was not even asked
        assert len(api.calls("projects.setCommonInstanceMetadata")) == writes
        with pytest.raises(LockHeld) as other_machine:
            ro.execute(
                _run(api, elsewhere, holder="elsewhere:77:1"), plan, resume=jr.load(elsewhere / path.name)
            )
        text = other_machine.value.render()
        assert "already running" in text and f"pid {os.getpid()} on {socket.gethostname()}" in text
    finally:
        finish.set()
        thread.join(30)
    assert len(calls) == 1 and first and first[0].outcome == "succeeded"
    events = [e["event"] for e in jr.read(path)]
    assert events == ["plan", "end", "resume", "end"]  # the refused resume wrote nothing
    assert jr.load(path).finished


def test_a_lock_that_cannot_be_renewed_pauses_the_rollout_before_it_expires(
    endpoint: tuple[ComputeApi, InMemoryCompute], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, _ = endpoint
    plan = _resumable(tmp_path)
    path = jr.find(tmp_path, plan.rollout_id)
    seen: list[tuple[str | None, datetime]] = []

    def engine_run(self: ro.Engine, **_kw: Any) -> ro.Report:
        api.inject("projects.setCommonInstanceMetadata", status=503, times=1000)  # renewals fail from now on
        deadline = time.monotonic() + 20
        while self.stopping() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # a host step
        seen.append((self.stopping(), datetime.now(UTC)))
        self.problems.append(str(self.stopping()))
        return self._report("paused", 0, time.monotonic(), 0.0)

    monkeypatch.setattr(ro.Engine, "run", engine_run)
    warnings: list[str] = []
    report = ro.execute(_run(api, tmp_path, ttl=3, warn=warnings.append), plan, resume=jr.load(path))
    reason, when = seen[0]
    assert reason is not None and reason.startswith("lock lost") and "renew" in reason
    held = parse_lock(stored(api))
    assert held is not None and when < held.expires  # paused while the lock was still ours
    assert report.outcome == "paused" and report.resume_command
    events = jr.read(path)
    lost = [e for e in events if e["event"] == "lock"]
    assert lost and lost[0]["status"] == "lost" and "renew" in lost[0]["error"]
    assert events[-1]["event"] == "end" and events[-1]["outcome"] == "paused"
    assert any("could not renew" in w for w in warnings)


def test_holding_announces_acquire_and_release_on_the_fleet_events_topic(
    endpoint: tuple[ComputeApi, InMemoryCompute],
) -> None:
    """The lock's life reaches the events topic through the real Pub/Sub client (notify posts it)."""
    from fleet.gcp.events import EventPublisher
    from fleet.rollout.lock import holding
    from functions.fleet_contract import FleetEvent
    from standins.pubsub_api import LocalPubsub

    api, _ = endpoint
    with LocalPubsub() as pubsub:
        topic = "projects/events-project/topics/fleet-events"
        pubsub.create_topic(topic)
        events = EventPublisher("events-project", "fleet-events", "prod", endpoint=pubsub.emulator_host)

        def announce(action: str, result: str, detail: str) -> None:
            events.publish("lock", action, result, rollout_id="ro-1", detail=detail)

        with holding(store(api), "alice@laptop", "rollout 1.1.0", "ro-1", announce=announce):
            assert stored(api) is not None
        seen = [FleetEvent.from_message(m.data, m.attributes) for m in pubsub.messages(topic)]
    assert [(e.kind, e.action, e.result, e.rollout_id) for e in seen] == [
        ("lock", "acquire", "done", "ro-1"),
        ("lock", "release", "done", "ro-1"),
    ]
    assert seen[0].detail == "alice@laptop: rollout 1.1.0" and stored(api) is None
