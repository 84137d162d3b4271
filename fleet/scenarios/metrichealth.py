"""The local monitor's instance-health signal from the agents' metric instead of probing each VM.

Each VM's agent writes `custom.googleapis.com/fleet/app_health` (fleet/commands/healthmetric.py) to
the Monitoring stand-in through its REST front, as a VM without a public IP writes to Cloud
Monitoring. Every round this reads the fleet's series with the real `MetricServiceClient`
(`ListTimeSeries`, one call) and judges each MIG member the way the agent-metric policy of
`fab monitoring.apply` does:

- the newest point's value below 1 (FAILING) is a failed check, 1 (HEALTHY) a pass; 2 (DRAINED: a
  rollout switching the VM, or its agent booting it) and 3 (NONE: nothing deployed yet) are no data:
  a drain never opens an incident, nor closes one (an incident closes when the VM serves again;
  Monitoring's threshold condition would close it while drained too, see docs/selfheal.md);
- each point counts once, as one check (the agent writes one every few seconds, the monitor looks
  every second): so `fail_after` failing points in a row open the incident, as the policy's duration
  needs the value below 1 over several points, and one bad sample does not;
- no point for `absent_after` seconds from a VM whose series had points is a failed check in every
  round (the policy's absence condition: the VM or its agent died); a VM that never wrote has no
  data, as Monitoring's absence condition needs one point first;
- a member with a MIG action, not RUNNING, or without an instance id has no data (as the monitor's
  probe path).

The real policy keeps "unhealthy" and "stopped reporting" as two conditions; locally both count
towards the same failing/still-failing conditions (the escalation ladder the functions need), and
the incident's summary says which.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fleet.commands import healthmetric
from fleet.errors import FleetError
from fleet.scenarios.monitor import NO_ACTION, MonitoredInstance

DISPLAY = {
    "failing": "instance unhealthy (agent metric)",
    "still-failing": "instance unhealthy (agent metric) still",
}


@dataclass(frozen=True)
class LatestPoint:
    """The newest point of one VM's series: when (epoch seconds) and its value."""

    at: float
    value: int


Reader = Callable[[float], dict[str, LatestPoint]]  # lookback seconds -> instance id -> newest point


def judge(
    member: MonitoredInstance, latest: LatestPoint | None, seen: bool, now: float, absent_after: float
) -> tuple[bool | None, str]:
    """(passed, why) for one member: True pass, False fail, None no data."""
    if member.action != NO_ACTION or member.status != "RUNNING" or not member.instance_id:
        return None, "no data (the MIG acts on it)"
    if latest is None or now - latest.at > absent_after:
        if seen:
            return False, f"stopped reporting (no point for {absent_after:g} s)"
        return None, "no data (never reported)"
    state = healthmetric.STATES.get(latest.value, f"value {latest.value}")
    if latest.value < healthmetric.HEALTHY_AT_LEAST:
        return False, f"agent reports {state}"
    if latest.value != healthmetric.HEALTHY:
        # drained (a rollout, or the agent booting it) or nothing deployed: no verdict either way
        return None, f"no data (agent reports {state})"
    return True, f"agent reports {state}"


class MetricHealth:
    """A health source for fleet.scenarios.monitor.Monitor (`health=`): one ListTimeSeries a round."""

    metric_type = healthmetric.METRIC_TYPE
    display = DISPLAY

    def __init__(
        self, read: Reader, *, absent_after: float = 20.0, clock: Callable[[], float] = time.time
    ) -> None:
        if not 1 <= absent_after <= 86400:
            raise FleetError(f"absent_after {absent_after!r}: 1..86400 s", where="metric health")
        self._read = read
        self.absent_after = absent_after
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: set[str] = set()  # instance ids whose series had a point
        self._judged: dict[str, LatestPoint] = {}  # member -> the last point counted as a check
        self.why: dict[str, str] = {}  # member -> the last judgement in words

    def results(
        self, members: Sequence[MonitoredInstance], servers: Mapping[str, tuple[str, str]]
    ) -> dict[str, bool | None]:
        """Per member name: passed (True), failed (False), no data (None)."""
        now = self._clock()
        points = self._read(self.absent_after * 2)
        out: dict[str, bool | None] = {}
        with self._lock:
            self._seen.update(points)
            for member in members:
                latest = points.get(member.instance_id)
                seen = member.instance_id in self._seen
                verdict, why = judge(member, latest, seen, now, self.absent_after)
                if latest is not None and verdict is not None and now - latest.at <= self.absent_after:
                    if self._judged.get(member.name) == latest:
                        verdict = None  # one point is one check: a round without a new point adds nothing
                    else:
                        self._judged[member.name] = latest
                out[member.name], self.why[member.name] = verdict, why
        return out

    def summary(self, member: str, fails: int) -> str:
        return f"{member}: {self.why.get(member, 'failing')} ({fails} checks in a row)."


def series_reader(client: Any, project: str, fleet: str, clock: Callable[[], float] = time.time) -> Reader:
    """ListTimeSeries of the fleet's health metric (the real MetricServiceClient) -> newest points."""
    from google.cloud import monitoring_v3 as m

    def read(lookback: float) -> dict[str, LatestPoint]:
        end = datetime.fromtimestamp(clock(), UTC)
        request = m.ListTimeSeriesRequest(
            name=f"projects/{project}",
            filter=healthmetric.list_filter(fleet),
            interval=m.TimeInterval(end_time=end, start_time=end - timedelta(seconds=lookback)),
            view=m.ListTimeSeriesRequest.TimeSeriesView.FULL,
        )
        out: dict[str, LatestPoint] = {}
        for ts in client.list_time_series(request=request, timeout=10):
            iid = ts.resource.labels.get("instance_id", "")
            for point in ts.points:  # newest first; keep the newest over every series of the instance
                at = point.interval.end_time.timestamp()
                if iid and (iid not in out or at > out[iid].at):
                    out[iid] = LatestPoint(at, int(point.value.int64_value))
        return out

    return read


def metric_client(endpoint: str) -> Any:
    """MetricServiceClient over an insecure channel to a local stand-in (host:port)."""
    import grpc
    from google.cloud import monitoring_v3 as m
    from google.cloud.monitoring_v3.services.metric_service.transports import MetricServiceGrpcTransport

    return m.MetricServiceClient(
        transport=MetricServiceGrpcTransport(channel=grpc.insecure_channel(endpoint))
    )
