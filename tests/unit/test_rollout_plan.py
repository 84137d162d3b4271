"""Rollout planning and decisions, pure: which hosts, which batches, what a failure leads to."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fleet.commands import release as rc
from fleet.errors import FleetError
from fleet.inventory import FleetHost, Inventory
from fleet.rollout import (
    EXIT_CODES,
    HostOutcome,
    Plan,
    Release,
    beat_running,
    beat_start,
    beat_stop,
    check_beat_singleton,
    compose_idle,
    decide,
    final_outcome,
    make_plan,
    new_rollout_id,
    pick_release,
    release_record,
    resolve_options,
    resume_command,
    set_previous,
    switch_when_idle,
    undrain_then_probe,
)
from fleet.rollout.pacing import Timings
from functions.fleet_contract import validate_label_value

OLD = Release("a" * 16, "1.0.0", ("worker_beat",))
NEW = Release("b" * 16, "1.1.0", ("worker_beat",))
T = Timings(drain_wait=3, min_ready=1, health_timeout=30)


def plan_for(
    sources: dict[str, Release | None], drained: dict[str, bool] | None = None, **kw: object
) -> Plan:
    hosts = list(sources)
    args: dict[str, object] = {
        "rollout_id": "ro-20261126-000000-abcd",
        "action": "rollout",
        "inventory": "inv",
        "label": "1.1.0",
        "order": hosts,
        "sources": sources,
        "targets": dict.fromkeys(hosts, NEW),
        "drained": drained or {},
        "canary": 1,
        "batch": "50%",
        "max_failures": "0",
        "on_failure": "rollback",
        "timings": T,
        "operator": "op@box",
    }
    args.update(kw)
    return make_plan(**args)  # type: ignore[arg-type]


def test_hosts_on_target_are_left_out_and_the_rest_batched_canary_first() -> None:
    plan = plan_for({"h1": OLD, "h2": NEW, "h3": OLD, "h4": OLD, "h5": None})
    assert plan.batches == [["h1"], ["h3", "h4"], ["h5"]]  # 50% of the 4 hosts to change
    assert set(plan.unchanged) == {"h2"}
    assert plan.jobs["h5"].source is None and plan.jobs["h3"].batch == 1


def test_a_batch_never_takes_the_whole_fleet_out() -> None:
    plan = plan_for({f"h{i}": OLD for i in range(4)}, canary=0, batch="100%")
    assert plan.batches == [["h0", "h1", "h2"], ["h3"]]
    plan = plan_for({"h0": OLD, "h1": NEW}, canary=5, batch="1")  # h1 serves while h0 changes
    assert plan.batches == [["h0"]]
    assert plan_for({"h0": OLD}, canary=0, batch="1").batches == [["h0"]]  # one host: no way around it


def test_a_drained_host_on_target_is_still_worked_on() -> None:
    plan = plan_for({"h1": NEW, "h2": NEW}, drained={"h2": True})
    assert plan.batches == [["h2"]] and list(plan.unchanged) == ["h1"]


def test_budget_counts_the_hosts_to_change() -> None:
    plan = plan_for({f"h{i}": OLD for i in range(10)}, max_failures="20%")
    assert plan.budget == 2


def test_plan_survives_the_journal_round_trip() -> None:
    plan = plan_for({"h1": OLD, "h2": None, "h3": NEW}, message="fix", beat_host="h1")
    again = Plan.from_dict(plan.as_dict())
    assert again == plan


def test_the_strategy_survives_the_journal_and_old_journals_mean_ssh() -> None:
    """A resumed rollout goes on the way it started (fleet/rollout/service.py refuses another)."""
    plan = plan_for({"h1": OLD, "h2": OLD})
    assert plan.strategy == "ssh"
    plan.strategy = "replace"
    assert Plan.from_dict(plan.as_dict()).strategy == "replace"
    old = plan.as_dict()
    del old["strategy"]  # a journal written before strategies existed
    assert Plan.from_dict(old).strategy == "ssh"


def test_rollout_strategy_in_the_inventory_is_checked() -> None:
    from pydantic import ValidationError

    from fleet.inventory.schema import RolloutSettings

    assert RolloutSettings().strategy == "ssh"
    assert RolloutSettings(strategy="replace").strategy == "replace"
    with pytest.raises(ValidationError, match="strategy"):
        RolloutSettings(strategy="blue-green")


def test_garbled_journal_plan_is_a_clear_error() -> None:
    raw = plan_for({"h1": OLD}).as_dict()
    del raw["jobs"][0]["target"]
    with pytest.raises(FleetError, match="cannot be resumed"):
        Plan.from_dict(raw)


@pytest.mark.parametrize(
    ("failures", "budget", "on_failure", "expected"),
    [
        (0, 0, "rollback", None),
        (1, 1, "rollback", None),
        (1, 0, "rollback", "rollback"),
        (2, 1, "pause", "pause"),
        (5, 0, "continue", None),
    ],
)
def test_decide(failures: int, budget: int, on_failure: str, expected: str | None) -> None:
    assert decide(failures, budget, on_failure) == expected


def test_final_outcome_and_exit_codes() -> None:
    ok = [HostOutcome("a", 0, "updated"), HostOutcome("b", 0, "unchanged")]
    assert final_outcome(ok) == "succeeded"
    assert final_outcome([*ok, HostOutcome("c", 1, "rolled-back")]) == "failed"
    assert EXIT_CODES == {"succeeded": 0, "failed": 1, "rolled-back": 3, "paused": 4, "interrupted": 4}


def test_rollout_ids_are_label_values_and_sort_by_time() -> None:
    a = new_rollout_id("rollout", datetime(2026, 11, 26, 7, 0, 1, tzinfo=UTC), "00ff")
    b = new_rollout_id("rollback", datetime(2026, 11, 26, 7, 0, 2, tzinfo=UTC))
    assert a == "ro-20261126-070001-00ff" and validate_label_value(a) == a
    assert re.fullmatch(r"rb-20261126-070002-[0-9a-f]{4}", b) and validate_label_value(b) == b


def host(name: str, **data: object) -> FleetHost:
    return FleetHost(name, "127.0.0.1", 22, "deploy", (), dict(data))


def test_options_cli_over_inventory_over_defaults() -> None:
    h = host(
        "h",
        lb={"check_interval": 2, "unhealthy_threshold": 3, "healthy_threshold": 2, "draining_timeout": 4},
        rollout={"batch": "2", "min_ready": 7},
    )
    opts = resolve_options(h, canary=None, batch=None, max_failures="1", on_failure=None, drain_wait=None)
    assert opts["canary"] == 1 and opts["batch"] == "2" and opts["max_failures"] == "1"
    assert opts["on_failure"] == "rollback"
    # drain wait derived from the LB health check: interval x unhealthy + draining
    assert opts["timings"] == Timings(drain_wait=10.0, min_ready=7.0, health_timeout=60.0)
    opts = resolve_options(h, drain_wait=1.5, min_ready=0.0, health_timeout=9.0)
    assert opts["timings"] == Timings(1.5, 0.0, 9.0)


@pytest.mark.parametrize("bad", [{"on_failure": "retry"}, {"health_timeout": 0.0}, {"drain_wait": -1.0}])
def test_bad_options_refused(bad: dict[str, object]) -> None:
    with pytest.raises(FleetError):
        resolve_options(host("h"), **bad)


def test_beat_singleton_is_checked_over_the_whole_inventory() -> None:
    def inv(*roles: list[str]) -> Inventory:
        hosts = {f"h{i}": host(f"h{i}", roles=r) for i, r in enumerate(roles)}
        return Inventory("inv", Path("/nonexistent"), hosts, {}, {})

    assert check_beat_singleton(inv(["app"], ["app", "beat"])) == "h1"
    assert check_beat_singleton(inv(["app"])) is None
    with pytest.raises(FleetError, match="singleton"):
        check_beat_singleton(inv(["beat"], ["app", "beat"]))


def test_beat_commands_are_quoted_and_scoped_to_the_project() -> None:
    layout = rc.Layout("/opt/fleet/dify", "dify")
    assert beat_running(layout).script == (
        "docker ps -q --filter label=com.docker.compose.project=dify "
        "--filter label=com.docker.compose.service=worker_beat --filter status=running"
    )
    stop = beat_stop(layout).script
    assert "docker stop $ids" in stop and "label=com.docker.compose.service=worker_beat" in stop
    start = beat_start(layout, "c" * 16).script
    assert start.endswith("up -d --no-deps worker_beat")
    assert "/opt/fleet/dify/releases/cccccccccccccccc/docker-compose.yaml" in start
    with pytest.raises(FleetError):
        beat_start(layout, "../etc")
    with pytest.raises(FleetError):
        release_record(layout, "nothex; rm -rf /")


def test_previous_link_and_compose_wait_commands() -> None:
    layout = rc.Layout("/opt/fleet/dify", "dify")
    script = set_previous(layout, "e" * 16).script
    assert (
        "ln -sfn releases/eeeeeeeeeeeeeeee .previous.new" in script
        and "mv -T .previous.new previous" in script
    )
    assert set_previous(layout, None).script == "rm -f /opt/fleet/dify/previous"
    wait = compose_idle(layout, 5).script
    # the bracket keeps grep from matching the shell that runs this very script
    assert "grep -qsaE -- '[c]ompose.-p.dify.' /proc/[0-9]*/cmdline" in wait and "-gt 10" in wait
    assert "pgrep -f -- '[c]ompose -p dify '" in wait  # where grep's . does not match NUL
    with pytest.raises(FleetError):
        set_previous(layout, "../../etc")
    with pytest.raises(FleetError):
        compose_idle(layout, 0)
    probe = undrain_then_probe(layout, 80).script
    assert (
        probe.startswith("rm -f /opt/fleet/dify/state/drain || exit 97\n") and "127.0.0.1:80/health" in probe
    )
    both = switch_when_idle(layout, "f" * 16).script
    assert both.index("/proc/[0-9]*/cmdline") < both.index("mv -T .current.new current")


def test_pick_release_by_id_prefix_or_version() -> None:
    rels = [
        rc.ReleaseDir("bbbb000000000000", 30, "1.1.0"),
        rc.ReleaseDir("aaaa000000000000", 20, "1.0.0"),
        rc.ReleaseDir("abcd000000000000", 10, "1.0.0"),
    ]
    assert pick_release(rels, "bbbb", "h") == "bbbb000000000000"
    assert pick_release(rels, "1.0.0", "h") == "aaaa000000000000"  # the newest of that version
    with pytest.raises(FleetError, match="ambiguous"):
        pick_release([*rels, rc.ReleaseDir("aaaa011111111111", 5, "x")], "aaaa0", "h")
    with pytest.raises(FleetError, match="staged releases here"):
        pick_release(rels, "9.9.9", "h")


def test_resume_command_quotes_the_inventory() -> None:
    assert (
        resume_command("my inv", "ro-1", "rollout")
        == "fab rollout --inventory 'my inv' --resume --rollout-id ro-1"
    )
    assert resume_command("local", "rb-1", "rollback").startswith("fab rollback --inventory local --resume")


def test_release_from_state() -> None:
    state = rc.HostState(
        True, "d" * 16, None, False, {"version": "1.0.0", "disabled_services": ["worker_beat"]}, None
    )
    rel = Release.from_state(state)
    assert rel == Release("d" * 16, "1.0.0", ("worker_beat",)) and not rel.runs_beat
    assert Release.from_state(rc.HostState(True, None, None, False, None, None)) is None


def test_an_unknown_strategy_is_refused_before_anything_is_read() -> None:
    from fleet.rollout import service

    with pytest.raises(FleetError, match="invalid --strategy 'blue'"):
        service.perform(service.Request("rollout", "no-such-inventory", strategy="blue"))


def test_compose_idle_waits_for_a_compose_of_the_project_and_only_of_it(tmp_path: Path) -> None:
    """For real: a process whose arguments read `... compose -p PROJECT ...` (as `docker compose -p
    PROJECT up` does) keeps the wait going; one of another project, or the waiting script, does not.
    Also with a grep whose `.` does not match NUL: the script falls back to pgrep."""
    layout = rc.Layout(str(tmp_path / "app"), "proj-a")
    other = rc.Layout(str(tmp_path / "app"), "proj-b")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "grep").write_text("#!/bin/sh\nexit 1\n")  # matches nothing, so never NUL either
    (bin_dir / "grep").chmod(0o755)
    plain = dict(os.environ)
    no_nul = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def wait(lay: rc.Layout, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", "-c", compose_idle(lay, 1).script], capture_output=True, text=True, env=env, timeout=30
        )

    fake = [sys.executable, "-c", "import time; time.sleep(30)", "compose", "-p", "proj-a", "up", "-d"]
    with subprocess.Popen(fake) as compose:
        try:
            time.sleep(0.2)
            for env in (plain, no_nul):
                started = time.monotonic()
                waited = wait(layout, env)
                assert waited.returncode == 1 and "still runs" in waited.stderr
                assert time.monotonic() - started >= 1.0
                # another project's compose does not hold this one up
                assert wait(other, env).returncode == 0
        finally:
            compose.kill()
    # it ended: the wait passes at once
    assert wait(layout, plain).returncode == 0 and wait(layout, no_nul).returncode == 0
