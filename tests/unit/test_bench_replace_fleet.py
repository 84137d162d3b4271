"""The checks the replace proof (bench/replace_fleet.py) runs on a rollout's journal."""

from __future__ import annotations

from typing import Any

import pytest

from bench.replace_fleet import (
    batch_times,
    expected_templates,
    fleet_template,
    forward_mig_calls,
    host_results,
    journal_problems,
    killed_problems,
    step_seconds,
)

HOSTS = ["p-1", "p-2", "p-3", "p-4"]


def ev(event: str, second: float = 0.0, **fields: Any) -> dict[str, Any]:
    whole, frac = divmod(second, 1)
    return {"t": f"2026-11-30T10:00:{int(whole):02d}.{int(frac * 1e6):06d}Z", "event": event, **fields}


def succeeded() -> list[dict[str, Any]]:
    """A replace rollout of 4 hosts in batches [1, 2, 1] that succeeded."""

    def job(host: str, beat: bool) -> dict[str, Any]:
        suffix = "" if beat else "-nobeat"
        return {
            "host": host,
            "source": {"id": f"a{suffix}", "version": "1.0.0"},
            "target": {"id": f"b{suffix}", "version": "1.1.0"},
        }

    jobs = [job(h, h == "p-1") for h in HOSTS]
    events = [
        ev("plan", 0, strategy="replace", rollout_id="r1", jobs=jobs, beat_host="p-1"),
        ev("template", 0.5, release="b", version="1.1.0", template="base-1b-beat", created=True),
        ev("template", 0.5, release="b-nobeat", version="1.1.0", template="base-1b", created=True),
        ev("template", 0.6, release="a", version="1.0.0", template="base-1a-beat", created=False),
        ev("template", 0.6, release="a-nobeat", version="1.0.0", template="base-1a", created=False),
    ]
    t = 1.0
    for index, hosts in enumerate([HOSTS[:1], HOSTS[1:3], HOSTS[3:]]):
        events.append(ev("batch", t, index=index, hosts=hosts, status="start"))
        events.append(ev("mig", t + 0.1, step="forward", template="base-1b", hosts=hosts))
        for h in hosts:
            events.append(ev("step", t + 10, host=h, step="replace", status="done", seconds=9.5))
            events.append(ev("step", t + 12, host=h, step="soak", status="done", seconds=0.25))
            events.append(ev("host", t + 12.5, host=h, result="updated"))
        events.append(ev("batch", t + 12.75, index=index, hosts=hosts, status="done", failures=0))
        t += 13
    events.append(ev("end", t, outcome="succeeded", failures=0, problems=[]))
    return events


def test_a_good_journal_has_no_problem() -> None:
    events = succeeded()
    assert (
        journal_problems(
            events, outcome="succeeded", results=dict.fromkeys(HOSTS, "updated"), forward_batches=3
        )
        == []
    )


def test_each_condition_is_named_when_it_fails() -> None:
    events = succeeded()
    events[0]["strategy"] = "ssh"
    events[-1]["outcome"] = "failed"
    events.insert(5, ev("resume", 2))
    problems = journal_problems(
        events,
        outcome="succeeded",
        results={**dict.fromkeys(HOSTS, "updated"), "p-2": "rolled-back"},
        forward_batches=1,
    )
    assert problems == [
        "the plan's strategy is 'ssh', not replace",
        "the journal's outcome is 'failed', not 'succeeded'",
        "the journal shows 1 resume(s), not 0",
        "p-2: the journal's result is 'updated', not 'rolled-back'",
        "3 forward batch(es) started, not 1",
    ]


def test_a_journal_without_plan_or_end() -> None:
    assert journal_problems([], outcome="succeeded") == ["the journal is empty"]
    events = succeeded()[1:-1]
    assert journal_problems(events, outcome="succeeded") == [
        "the journal starts with 'template', not the plan",
        "the journal ends with 'batch', not `end`",
    ]


def test_hosts_never_journaled_count_as_not_started() -> None:
    events = succeeded()[:12]  # the canary batch only
    assert host_results(events) == {"p-1": "updated"}
    want = {"p-1": "updated", "p-2": "not-started", "p-3": "not-started", "p-4": "not-started"}
    assert [p for p in journal_problems(events, outcome="rolled-back", results=want) if "p-" in p] == []
    assert journal_problems(events, outcome="x", results={"p-2": "updated"})[-1] == (
        "p-2: the journal's result is 'none', not 'updated'"
    )


def test_batch_times_and_steps() -> None:
    events = succeeded()
    rows = batch_times(events)
    assert [(label, len(hosts)) for label, hosts, _ in rows] == [
        ("forward 0", 1),
        ("forward 1", 2),
        ("forward 2", 1),
    ]
    assert [s for _, _, s in rows] == [pytest.approx(12.75)] * 3
    steps = step_seconds(events)
    assert steps["replace"] == [9.5] * 4 and steps["soak"] == [0.25] * 4
    events.append(ev("step", 50, host="p-1", step="bounce", status="failed", seconds=120.5, error="x"))
    events.append(ev("step", 50, host="p-1", step="bounce", status="start"))
    assert step_seconds(events)["bounce"] == [120.5]


def test_each_host_has_its_releases_template_and_the_mig_the_fleets() -> None:
    events = succeeded()
    assert expected_templates(events, "target") == {
        "p-1": "base-1b-beat",
        "p-2": "base-1b",
        "p-3": "base-1b",
        "p-4": "base-1b",
    }
    assert expected_templates(events, "source")["p-1"] == "base-1a-beat"
    # the MIG's own template: the release of the hosts without the beat, even were they fewer
    assert fleet_template(events, "target") == "base-1b" and fleet_template(events, "source") == "base-1a"
    events[0]["beat_host"] = "p-2"
    assert fleet_template(events, "target") == "base-1b"  # p-1, p-3, p-4: two of three
    events[0]["jobs"] = events[0]["jobs"][:2]
    assert fleet_template(events, "target") == "base-1b-beat"  # only p-1 besides the beat host
    events[0]["jobs"][0]["target"]["id"] = "unknown"
    assert expected_templates(events, "target")["p-1"] == "(no template for unknown)"
    assert fleet_template(events[1:], "target") is None and expected_templates([], "target") == {}


def test_a_killed_run() -> None:
    events = succeeded()
    killed = events[
        : events.index(next(e for e in events if e["event"] == "mig" and "p-2" in e["hosts"])) + 1
    ]
    assert forward_mig_calls(killed) == 2
    assert killed_problems(killed) == []
    assert batch_times(killed)[-1][2] is None  # the batch it died in
    assert killed_problems(events) == ["the killed run's journal has an `end`: it was not killed mid-rollout"]
    assert killed_problems(killed[:5]) == ["the killed run had not finished the canary batch"]
    assert killed_problems(killed[1:]) == ["the killed run's journal has no plan"]
    # resumed: the batch started again and finished, then the end
    resumed = [*killed, ev("resume", 30), *events[len(killed) :]]
    assert [s for _, _, s in batch_times(resumed)][:2] == [pytest.approx(12.75)] * 2  # not started again
    resumed.insert(len(killed) + 1, ev("batch", 31, index=1, hosts=HOSTS[1:3], status="start"))
    assert [s is None for _, _, s in batch_times(resumed)] == [False, True, False, False]
    assert journal_problems(resumed, outcome="succeeded", resumed=1, forward_batches=3) == []
