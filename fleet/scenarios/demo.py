"""The demos on the embedded local fleet. `nox -s demo` runs this; everything it does is also a `fab`
task (or `python -m fleet.scenarios.alertpath`) the user can run next. Deploy and rollout are the same
library calls the tasks make (fleet.rollout.deploy.deploy_release, fleet.rollout.service), not subprocesses.

    python -m fleet.scenarios.demo          bring the fleet up, bootstrap, deploy 1.0.0, then roll out 1.1.0
                                  under load and count the failed requests (the main job)
    python -m fleet.scenarios.demo heal     the same, then break an instance and watch it heal (with timings)
    python -m fleet.scenarios.demo scale    the same, then load the fleet: scale out, then in (with timings)

Options of `scale`:
    --signal cpu        (default) CPU busy loops in every member; the monitor's CPU condition (mean
                        utilization of the members labelled fleet-mig=<mig>, from their cgroups) scales
    --signal requests   requests through the LB; the monitor's request-rate condition scales
    --cpu-high F --cpu-low F   the CPU thresholds (fractions of the instances' vCPUs)
    --fleet NAME        rehearse on a local fleet that is already up and deployed (no local.up/deploy)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.paths import PROJECT_ROOT as REPO

if TYPE_CHECKING:
    from fleet.scenarios.alertpath import AlertPath
    from fleet.scenarios.monitor import MonitorSettings

INSTANCES = 4
SCENARIOS = ("heal", "scale")
LOAD_HIGH, LOAD_LOW = 3.0, 1.0  # requests/s per serving instance (scale demo, --signal requests)
LOW_RATE = 2.0
# mean CPU utilization of the members (scale demo, --signal cpu). Low because this machine is small and
# shared: an instance has no CPU limit, so its vCPUs are the host's cores, and one busy loop among many
# busy containers gets only its fair share of them. Idle instances measure ~0.5-5 %.
CPU_HIGH, CPU_LOW = 0.12, 0.05


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


def _with_alert_path(
    load: bool,
    body: Callable[[AlertPath, float], int],
    monitor: MonitorSettings | None = None,
    fleet: str = "local",
) -> int:
    from dataclasses import replace

    from fleet.errors import FleetError
    from fleet.scenarios.alertpath import AlertPath, AlertPathSettings, config_for, print_line
    from fleet.scenarios.monitor import MonitorSettings
    from fleet.scenarios.selfheal import wait_stable

    if monitor is None:
        monitor = MonitorSettings(load_high=LOAD_HIGH, load_low=LOAD_LOW) if load else MonitorSettings()
    settings = replace(AlertPathSettings(), monitor=monitor)
    print(
        "\n== the local alert path: monitor -> Pub/Sub -> functions-framework (autoheal, scale, notify)"
        " -> Compute endpoint; notify -> webhook sink",
        flush=True,
    )
    t0 = time.time()
    try:
        with AlertPath(config_for(fleet), settings=settings) as path:
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


def scale_scenario(path: AlertPath, t0: float, signal: str = "cpu") -> int:
    from fleet.local.instances import LocalFleet
    from fleet.scenarios.alertpath import print_line
    from fleet.scenarios.selfheal import run_scale

    fleet = LocalFleet(path.config)
    size = len(path.compute.managed_instances(path.mig_ref))
    high_rate = LOAD_HIGH * (size + 2)
    low, high = path.scale_bounds
    settings = path.settings.monitor
    if signal == "cpu":
        print(
            f"\n== CPU load: a busy loop in each of the {size} members (scale out above a mean "
            f"utilization of {settings.cpu_high:g} for {settings.cpu_rounds} checks), then none (scale "
            f"in below {settings.cpu_low:g}); {LOW_RATE:g} requests/s through the LB throughout; MIG "
            f"bounds [{low}, {high}]",
            flush=True,
        )
    else:
        print(
            f"\n== load through the LB: {high_rate:g} requests/s (scale out above {LOAD_HIGH:g}/s per "
            f"instance), then {LOW_RATE:g}/s (scale in below {LOAD_LOW:g}/s); MIG bounds [{low}, {high}]",
            flush=True,
        )
    report = run_scale(
        path, fleet, high_rate=high_rate, low_rate=LOW_RATE, signal=signal, emit=print_line(t0)
    )
    _timings(f"scaled out and in ({signal} signal); seconds:", report.timings())
    if signal == "cpu":

        def pct(value: float | None) -> str:
            return "-" if value is None else f"{value:.1%}"

        print(
            f"  mean CPU of the members: idle {pct(report.cpu_idle)}, peak under load "
            f"{pct(report.cpu_peak)}; scale-out incident at {pct(report.cpu_out)}, scale-in at "
            f"{pct(report.cpu_in)}"
        )
    print(
        f"  added {report.added} (release {report.added_release}, /health {report.added_version}); "
        f"removed {report.removed}"
    )
    word = "requests during the CPU load" if signal == "cpu" else "high load"
    print(f"  {word}: {report.high_load.summary() if report.high_load else '-'}")
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


def _scale_options(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fleet.scenarios.demo scale")
    parser.add_argument(
        "--signal", choices=("cpu", "requests"), default="cpu", help="what drives the scaling"
    )
    parser.add_argument("--cpu-high", type=float, default=CPU_HIGH, help="scale out above this mean (0..1)")
    parser.add_argument("--cpu-low", type=float, default=CPU_LOW, help="scale in below this mean (0..1)")
    parser.add_argument("--fleet", default="", help="an existing local fleet (skips local.up and deploy)")
    return parser.parse_args(args)


def main(argv: list[str] | None = None) -> int:
    from fleet.errors import FleetError
    from fleet.scenarios.monitor import MonitorSettings

    args = list(argv or [])
    scenario = args[0] if args else ""
    if scenario and scenario not in SCENARIOS:
        print(f"unknown demo {scenario!r}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    options = _scale_options(args[1:]) if scenario == "scale" else None
    if options is None or not options.fleet:
        code = deploy_steps()
        if code != 0:
            return code
    if scenario == "heal":
        return _with_alert_path(load=False, body=heal_scenario)
    if options is not None:
        try:
            if options.signal == "cpu":
                monitor = MonitorSettings(cpu_high=options.cpu_high, cpu_low=options.cpu_low)
            else:
                monitor = MonitorSettings(load_high=LOAD_HIGH, load_low=LOAD_LOW)
        except FleetError as exc:
            print(exc.render(), file=sys.stderr)
            return 2
        signal = options.signal
        return _with_alert_path(
            load=True,
            body=lambda path, t0: scale_scenario(path, t0, signal),
            monitor=monitor,
            fleet=options.fleet or "local",
        )
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
