"""The fleet lock in Compute project metadata, through the real google-cloud-compute client against
the local Compute REST endpoint (fingerprint compare-and-swap as Compute does it)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from fleet.gce import Compute
from fleet.local.compute_api import ComputeApi
from fleet.local.compute_state import InMemoryCompute
from fleet.lock import FleetLock, Heartbeat, LockHeld, LockLost
from functions.fleet_contract import LOCK_METADATA_KEY, is_held, lock_to_json, parse_lock

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
