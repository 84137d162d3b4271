"""The demos on the embedded local fleet. `nox -s demo` runs this; everything it does is also a `fab`
task (or `python -m fleet.scenarios.alertpath`) the user can run next. Deploy and rollout are the same
library calls the tasks make (fleet.rollout.deploy.deploy_release, fleet.rollout.service), not subprocesses.

    python -m fleet.scenarios.demo          bring the fleet up, bootstrap, deploy 1.0.0, then roll out 1.1.0
                                  under load and count the failed requests (the main job)
    python -m fleet.scenarios.demo heal     the same, then break an instance and watch it heal (with timings)
    python -m fleet.scenarios.demo scale    the same, then load the fleet: scale out, then in (with timings)
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.paths import PROJECT_ROOT as REPO

if TYPE_CHECKING:
    from fleet.scenarios.alertpath import AlertPath

INSTANCES = 4
SCENARIOS = ("heal", "scale")
LOAD_HIGH, LOAD_LOW = 3.0, 1.0  # requests/s per serving instance (scale demo)
LOW_RATE = 2.0


def fab(*args: str) -> int:
    """Run a fab task as the user would, output straight to the terminal."""
    print(f"\n$ fab {' '.join(args)}", flush=True)
    fab_bin = Path(sys.executable).with_name("fab")
    return subprocess.run([str(fab_bin), *args], cwd=REPO, check=False).returncode


def deploy(version: str, inventory_name: str = "local") -> int:
    """What `fab deploy --inventory local --version VERSION` does, as the library call it makes."""
    from fleet.errors import FleetError
    from fleet.rollout import deploy as dp

    print(
        f"\n== deploy {version} (as `fab deploy --inventory {inventory_name} --version {version}`)",
        flush=True,
    )
    try:
        report = dp.deploy_release(inventory_name, version=version)
    except FleetError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    for o in report.outcomes:
        print(f"  {o.host:<12} {o.result:<12} {o.to_version or '?'} ({o.to_release}) {o.error or ''}")
    return 0 if report.ok else 1


def deploy_steps() -> int:
    steps: list[tuple[str, Callable[[], int]]] = [
        (f"fab local.up --instances {INSTANCES}", lambda: fab("local.up", "--instances", str(INSTANCES))),
        ("fab bootstrap --inventory local", lambda: fab("bootstrap", "--inventory", "local")),
        ("deploy 1.0.0", lambda: deploy("1.0.0")),
        ("fab status --inventory local", lambda: fab("status", "--inventory", "local")),
    ]
    for label, step in steps:
        code = step()
        if code != 0:
            print(f"demo stopped: `{label}` exited {code}", file=sys.stderr)
            return code
    return 0


def _timings(title: str, rows: list[tuple[str, float | None]]) -> None:
    print(f"\n{title}")
    for label, seconds in rows:
        print(f"  {label:<48} {'-' if seconds is None else f'{seconds:6.1f} s'}")


def _with_alert_path(load: bool, body: Callable[[AlertPath, float], int]) -> int:
    from dataclasses import replace

    from fleet.errors import FleetError
    from fleet.scenarios.alertpath import AlertPath, AlertPathSettings, print_line
    from fleet.scenarios.monitor import MonitorSettings
    from fleet.scenarios.selfheal import wait_stable

    monitor = MonitorSettings(load_high=LOAD_HIGH, load_low=LOAD_LOW) if load else MonitorSettings()
    settings = replace(AlertPathSettings(), monitor=monitor)
    print(
        "\n== the local alert path: monitor -> Pub/Sub -> functions-framework (autoheal, scale, notify)"
        " -> Compute endpoint; notify -> webhook sink",
        flush=True,
    )
    t0 = time.time()
    try:
        with AlertPath(settings=settings) as path:
            print(
                f"started in {time.time() - t0:.1f} s; uptime checks every {monitor.period:g} s, "
                f"incident after {monitor.fail_after} failures, second incident after "
                f"{monitor.escalate_after}; function logs in {path.workdir}",
                flush=True,
            )
            wait_stable(path, emit=print_line(t0))
            code = body(path, t0)
            sink = path.sink
            if sink is not None:
                counts = {f: len(sink.messages(f)) for f in ("slack", "chat", "generic")}
                print(f"\nwebhook sink received: {counts}")
            return code
    except FleetError as exc:
        print(exc.render(), file=sys.stderr)
        return 1


def heal_scenario(path: AlertPath, t0: float) -> int:
    from fleet.local.instances import LocalFleet
    from fleet.scenarios.alertpath import print_line
    from fleet.scenarios.selfheal import run_heal

    fleet = LocalFleet(path.config)
    victim = path.config.host_name(INSTANCES)
    print(
        f"\n== breaking {victim}: its api stopped and a fault left on its disk (a reboot does not cure it)\n"
        f"   (reset = reboot will not fix it; recreate = new disk + startup script will)",
        flush=True,
    )
    report = run_heal(path, fleet, victim, emit=print_line(t0))
    _timings(f"{victim} healed; seconds from the break:", report.timings())
    print(
        f"  autoheal: {', '.join(f'{d} ({r})' for d, r in report.decisions)}; "
        f"instance id {report.old_id} -> {report.new_id}; /health version {report.version}; "
        f"release {report.release} (was {report.release_before})"
    )
    return 0


def scale_scenario(path: AlertPath, t0: float) -> int:
    from fleet.local.instances import LocalFleet
    from fleet.scenarios.alertpath import print_line
    from fleet.scenarios.selfheal import run_scale

    fleet = LocalFleet(path.config)
    high_rate = LOAD_HIGH * (INSTANCES + 2)
    low, high = path.scale_bounds
    print(
        f"\n== load through the LB: {high_rate:g} requests/s (scale out above {LOAD_HIGH:g}/s per "
        f"instance), then {LOW_RATE:g}/s (scale in below {LOAD_LOW:g}/s); MIG bounds [{low}, {high}]",
        flush=True,
    )
    report = run_scale(path, fleet, high_rate=high_rate, low_rate=LOW_RATE, emit=print_line(t0))
    _timings("scaled out and in; seconds:", report.timings())
    print(
        f"  added {report.added} (release {report.added_release}, /health {report.added_version}); "
        f"removed {report.removed}"
    )
    print(f"  high load: {report.high_load.summary() if report.high_load else '-'}")
    print(f"  light load during the scale-in: {report.low_load.summary() if report.low_load else '-'}")
    failed = (report.high_load.failed if report.high_load else 0) + (
        report.low_load.failed if report.low_load else 0
    )
    return 0 if failed == 0 else 1


def rollout(version: str, inventory_name: str = "local", message: str = "demo") -> int:
    """`fab rollout --yes` as the library call it makes, with the same plan, progress and summary."""
    import threading
    from contextlib import contextmanager

    from fleet.errors import FleetError
    from fleet.rollout import service
    from fleet.view.rollout import RolloutView, print_plan, print_summary

    print(f"\n$ fab rollout --inventory {inventory_name} --version {version} --yes  (as a library call)")

    def warn(text: str) -> None:
        print(f"warning: {text}", file=sys.stderr, flush=True)

    stop = threading.Event()

    @contextmanager
    def watch(plan: Any) -> Iterator[Any]:
        with service.StopOnSignals(stop, warn), RolloutView(plan) as view:
            yield view

    hooks = service.Hooks(warn=warn, planned=lambda plan, resumed: print_plan(plan), watch=watch, stop=stop)
    try:
        outcome = service.rollout(inventory_name, version=version, message=message, hooks=hooks)
    except FleetError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    if outcome.report is None:
        print(f"nothing to do: every host already runs {outcome.plan.label}")
        return 0
    print_summary(outcome.report)
    return outcome.exit_code


def rollout_under_load(version: str = "1.1.0", inventory_name: str = "local") -> int:
    """A rollout exactly as an operator runs it, while a load generator sends requests through the
    LB and counts every non-2xx answer and connection error."""
    from fleet import inventory
    from fleet.scenarios.loadgen import LoadGen

    frontend = str(inventory.load(inventory_name).defaults["data"]["lb"]["frontend"])
    print(
        f"\n== rolling out {version} while 4 clients send ~80 requests/s through the LB ({frontend})",
        flush=True,
    )
    load = LoadGen(frontend, threads=4, rate=20, max_seconds=1500).start()
    try:
        code = rollout(version, inventory_name)
    finally:
        report = load.stop()
    print(f"\nload through the LB during the rollout: {report.summary()}")
    for line in report.first_failures[:10]:
        print(f"  {line}")
    print(f"FAILED REQUESTS: {report.failed}", flush=True)
    if code != 0:
        print(f"demo: the rollout ended with exit code {code}", file=sys.stderr)
    return code or (1 if report.failed else 0)


def main(argv: list[str] | None = None) -> int:
    args = list(argv or [])
    scenario = args[0] if args else ""
    if scenario and scenario not in SCENARIOS:
        print(f"unknown demo {scenario!r}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    code = deploy_steps()
    if code != 0:
        return code
    if scenario == "heal":
        return _with_alert_path(load=False, body=heal_scenario)
    if scenario == "scale":
        return _with_alert_path(load=True, body=scale_scenario)
    code = rollout_under_load()
    print(
        "\nThe local fleet is running (haproxy on http://127.0.0.1:8080). Try next:\n"
        "  fab status --inventory local\n"
        "  fab history --inventory local\n"
        "  fab rollout --inventory local --version 1.2.0-broken --yes   (the canary fails, is rolled back)\n"
        "  fab rollback --inventory local --yes                          (back to 1.0.0, same gates)\n"
        "  fab rollout --inventory local --version 1.1.0 --dry-run       (plan and per-host diff)\n"
        "  fab lock.status --inventory local\n"
        "  python -m fleet.scenarios.demo heal      (break an instance, watch it heal)\n"
        "  fab local.down"
    )
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
