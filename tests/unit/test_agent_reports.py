"""What `fab status` makes of the agents' guest attributes (fleet/inventory/reports.py)."""

from __future__ import annotations

from fleet.inventory import reports


def test_the_agents_namespace_only_and_none_when_it_never_reported() -> None:
    items = [("hostkeys", "ssh-ed25519", "AAAA"), ("fleet", "release", "a" * 16), ("fleet", "bogus", "x")]
    assert reports.report_of(items) == {"release": "a" * 16}
    assert reports.report_of([("hostkeys", "ssh-ed25519", "AAAA")]) is None


def test_one_cell_says_what_runs_and_the_last_action() -> None:
    report = {
        "release": "a" * 16,
        "version": "1.1.0",
        "health": "ok",
        "observed": "T1",
        "action": "boot",
        "result": "failed",
        "at": "T0",
        "error": "secret DB_PASSWORD: not found",
    }
    assert reports.summary(report) == (
        f"1.1.0 ({'a' * 16}) ok at T1; last boot failed at T0: secret DB_PASSWORD: not found"
    )
    assert reports.summary({}) == "no report" and reports.summary(None) == "-"
    assert reports.summary({"unreadable": "403"}) == "unreadable: 403"
