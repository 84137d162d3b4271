"""The local monitor's set-up shared by its tests (test_local_monitor, test_local_cpu,
test_health_metric): one fleet's project, zone and MIG, its policies, HAProxy's `show stat` as data,
the functions' own modules (as their runtime loads them), and a Monitor whose incidents are kept."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fleet.scenarios.monitor import Monitor, MonitoredInstance, MonitorSettings, Policies, local_policies

FUNCTIONS_DIR = Path(__file__).resolve().parents[2] / "functions"
if str(FUNCTIONS_DIR) not in sys.path:
    sys.path.append(str(FUNCTIONS_DIR))

import incidents as fn_incidents  # noqa: E402  (functions/ as the runtime loads it)
import policy as fn_policy  # noqa: E402
import settings as fn_settings  # noqa: E402

__all__ = [
    "MIG",
    "PROJECT",
    "ZONE",
    "MonitorRig",
    "fn_incidents",
    "fn_policy",
    "fn_settings",
    "policies",
    "stat",
]

PROJECT, ZONE, MIG = "local-project", "europe-west1-b", "local-mig"
STAT_HEADER = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,"
    "status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,"
    "type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,"
    "hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,addr"
)


def stat_row(px: str, sv: str, status: str, req_tot: int, scur: int = 0, addr: str = "") -> str:
    cells = dict.fromkeys(STAT_HEADER[2:].split(","), "")
    cells.update(pxname=px, svname=sv, status=status, req_tot=str(req_tot), scur=str(scur), addr=addr)
    return ",".join(cells.values())


def stat(servers: dict[str, tuple[str, str]], total: int) -> str:
    """HAProxy's `show stat` CSV: the frontend, `servers` (name -> (status, address)), the backend."""
    rows = [STAT_HEADER, stat_row("fleet_http", "FRONTEND", "OPEN", total)]
    rows += [stat_row("app", name, status, 0, addr=addr) for name, (status, addr) in servers.items()]
    rows.append(stat_row("app", "BACKEND", "UP", total))
    return "\n".join(rows) + "\n"


def policies(
    members: Sequence[tuple[str, str]] = (("local-1", "111"), ("local-2", "222")),
    scale_min: int = 2,
    scale_max: int = 3,
    **extra: Any,
) -> Policies:
    """The local fleet's policies, as the alert path derives them (`extra`: cpu_high, ...)."""
    return local_policies(
        fleet="local",
        project=PROJECT,
        zone=ZONE,
        mig=MIG,
        alerts_topic=f"projects/{PROJECT}/topics/fleet-alerts",
        events_topic=f"projects/{PROJECT}/topics/fleet-events",
        members=list(members),
        scale_min=scale_min,
        scale_max=scale_max,
        **extra,
    )


class MonitorRig:
    """A Monitor over the MIG given as data: `members` answers its members, `lb_stat` the LB's
    counters; its clock is `now`, which `run` advances; what it publishes is kept in `sent`."""

    def __init__(
        self,
        settings: MonitorSettings,
        *,
        policies: Policies,
        members: Callable[[], list[MonitoredInstance]],
        lb_stat: Callable[[], str],
        now: float = 1_000_000.0,
        **monitor: Any,
    ) -> None:
        self.now = now
        self.sent: list[dict[str, Any]] = []
        self.monitor = Monitor(
            project=PROJECT,
            zone=ZONE,
            mig=MIG,
            backend="app",
            policies=policies,
            settings=settings,
            members=members,
            lb_stat=lb_stat,
            publish=self.publish,
            clock=lambda: self.now,
            **monitor,
        )

    def publish(self, data: bytes) -> str:
        self.sent.append(json.loads(data))
        return str(len(self.sent))

    def run(
        self, n: int, step: float = 1.0, before: Callable[[], None] | None = None
    ) -> list[dict[str, Any]]:
        """n rounds `step` seconds apart (`before` runs ahead of each); the incidents they sent."""
        start = len(self.sent)
        for _ in range(n):
            self.now += step
            if before is not None:
                before()
            self.monitor.round()
        return [d["incident"] for d in self.sent[start:]]
