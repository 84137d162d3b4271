"""What each VM's on-VM agent reports about itself, read through the Compute API, without SSH.

The agent (fleet/agent/, docs/agent.md) writes guest attributes under the namespace `fleet`:
release, version, health, action, result, at, error. `fab status` shows them next to (or, with
`--no-ssh`, instead of) what it reads over SSH, so a VM that cannot be reached still says what it
runs; the same facts are there for the functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fleet.errors import FleetError
from fleet.inventory.loader import FleetHost

NAMESPACE = "fleet"
# release/version/health/observed: the agent's heartbeat (what runs now, whoever deployed it);
# action/result/at/error: its last boot or apply
KEYS = ("release", "version", "health", "observed", "action", "result", "at", "error")
WORKERS = 16


def report_of(items: Sequence[tuple[str, str, str]]) -> dict[str, str] | None:
    """{key: value} of the agent's namespace; None when the agent never reported."""
    found = {key: value for ns, key, value in items if ns == NAMESPACE and key in KEYS}
    return found or None


def reports(compute: Any, hosts: Sequence[FleetHost]) -> dict[str, dict[str, Any]]:
    """host -> the agent's report ({} when it has none), or {"unreadable": reason}. Hosts without a
    GCE instance (plain SSH hosts) are left out."""
    targets = [h for h in hosts if h.settings.gce.instance and h.settings.gce.project and h.settings.gce.zone]

    def one(host: FleetHost) -> tuple[str, dict[str, Any]]:
        gce = host.settings.gce
        assert gce.project and gce.zone and gce.instance
        try:
            items = compute.guest_attributes(gce.project, gce.zone, gce.instance, f"{NAMESPACE}/")
        except FleetError as exc:
            return host.name, {"unreadable": exc.what}
        return host.name, report_of(items) or {}

    if not targets:
        return {}
    with ThreadPoolExecutor(min(WORKERS, len(targets))) as pool:
        return dict(pool.map(one, targets))


def summary(report: dict[str, Any] | None) -> str:
    """One cell: `1.1.0 (a1b2c3d4e5f6a7b8) ok at T1; last boot ok at T0`, or why there is none."""
    if report is None:
        return "-"
    if "unreadable" in report:
        return f"unreadable: {report['unreadable']}"
    if not report:
        return "no report"
    text = f"{report.get('version') or '-'} ({report.get('release') or '-'}) {report.get('health') or '?'}"
    if report.get("observed"):
        text += f" at {report['observed']}"
    text += f"; last {report.get('action') or '?'} {report.get('result') or '?'} at {report.get('at') or '?'}"
    if report.get("error"):
        text += f": {report['error']}"
    return text
