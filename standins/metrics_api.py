"""A local Cloud Monitoring metric endpoint: custom time series written and read back.

Two fronts on one store, as the real API has:

- gRPC `google.monitoring.v3.MetricService` (`CreateTimeSeries`, `ListTimeSeries`), with the
  library's own proto-plus types on the wire: the real `MetricServiceClient` reads the series;
- REST `POST /v3/projects/{project}/timeSeries` (`projects.timeSeries.create`, camelCase JSON, an
  empty object answered): what a VM without client libraries writes with urllib and its token.

The checks are the real API's that a writer can trip over: `custom.googleapis.com/` or
`workload.googleapis.com/` metric types only; at most 200 series per request, each with exactly one
point that has an `endTime` (a GAUGE's `startTime`, when given, equals it); one value type per
metric (the first write creates the descriptor: GAUGE, the value's type); the monitored resource's
required labels (`gce_instance`: project_id, instance_id, zone); a series once per request; points
in order; at most one point per series every `min_interval` seconds (5, as documented); end times
not more than 25 hours in the past or 5 minutes in the future. REST requests need
`Authorization: Bearer` (401 otherwise); every call is recorded (`calls()`).

`ListTimeSeries` takes a filter of `AND`-joined equalities: `metric.type = "..."` (required),
`resource.type`, `resource.label(s).K`, `metric.label(s).K`; other filters are refused with
INVALID_ARGUMENT (the real language is larger). Points come newest first, those with an end time in
(interval.start_time, interval.end_time].

CLI:  python -m standins.metrics_api [--grpc-port N] [--rest-host H --rest-port N]
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any, Self

import grpc
from google.api import metric_pb2
from google.cloud import monitoring_v3 as m
from google.protobuf import empty_pb2

from standins.serving import GrpcStandin, HttpFront, method_handler, serve_until_signal

MAX_SERIES = 200
MIN_INTERVAL = 5.0  # seconds between two points of one series (Monitoring's limit)
MAX_POINTS = 1000  # kept per series
WRITABLE_PREFIXES = ("custom.googleapis.com/", "workload.googleapis.com/")
RESOURCE_LABELS = {
    "gce_instance": frozenset({"project_id", "instance_id", "zone"}),
    "global": frozenset({"project_id"}),
    "generic_node": frozenset({"project_id", "location", "namespace", "node_id"}),
}
_MAX_BODY = 1 << 20
_PROJECT = re.compile(r"projects/([a-z][a-z0-9-]{4,28}[a-z0-9]|[0-9]{1,20})")
_REST_PATH = re.compile(r"/v3/projects/(?P<project>[^/]+)/timeSeries")
_TERM = re.compile(
    r"\s*(?P<field>metric\.type|resource\.type|(?:resource|metric)\.labels?\.[A-Za-z_][A-Za-z0-9_]*)"
    r'\s*=\s*"(?P<value>[^"\\]*)"\s*'
)


class ApiError(Exception):
    """Ends the call with a gRPC status (and its HTTP twin on the REST front)."""

    HTTP = {
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.UNAUTHENTICATED: 401,
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.NOT_FOUND: 404,
    }

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.HTTP.get(self.code, 500),
                "message": self.message,
                "status": self.code.name,
            }
        }


def _invalid(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass
class Call:
    """One request as the endpoint saw it."""

    method: str  # CreateTimeSeries | ListTimeSeries
    front: str  # grpc | rest
    code: str
    series: int = 0
    bearer: bool = False
    at: float = field(default_factory=time.time)


@dataclass
class _Series:
    metric_type: str
    metric_labels: dict[str, str]
    resource_type: str
    resource_labels: dict[str, str]
    value_type: str
    points: list[tuple[datetime, Any]] = field(default_factory=list)  # oldest first

    def message(self, start: datetime | None, end: datetime) -> m.TimeSeries:
        chosen = [(t, v) for t, v in reversed(self.points) if t <= end and (start is None or t > start)]
        return m.TimeSeries(
            metric={"type": self.metric_type, "labels": self.metric_labels},
            resource={"type": self.resource_type, "labels": self.resource_labels},
            metric_kind=metric_pb2.MetricDescriptor.MetricKind.GAUGE,
            value_type=getattr(metric_pb2.MetricDescriptor.ValueType, self.value_type),
            points=[m.Point(interval={"end_time": t, "start_time": t}, value=v) for t, v in chosen],
        )


def _key(ts: m.TimeSeries) -> tuple[Any, ...]:
    return (
        ts.metric.type,
        tuple(sorted(ts.metric.labels.items())),
        ts.resource.type,
        tuple(sorted(ts.resource.labels.items())),
    )


def _value_type(value: m.TypedValue) -> str:
    kind = m.TypedValue.pb(value).WhichOneof("value")
    return {
        "int64_value": "INT64",
        "double_value": "DOUBLE",
        "bool_value": "BOOL",
        "string_value": "STRING",
        "distribution_value": "DISTRIBUTION",
    }.get(kind or "", "")


def parse_filter(text: str) -> list[tuple[str, str]]:
    """`a = "x" AND b = "y"` -> [(a, x), (b, y)]; `metric.type` required (as the real API)."""
    terms = []
    for part in re.split(r"\s+AND\s+", text.strip()) if text.strip() else []:
        match = _TERM.fullmatch(part)
        if match is None:
            raise _invalid(
                f"Unsupported filter term {part.strip()!r}: the local endpoint takes "
                "AND-joined equalities of metric.type, resource.type, resource.label.K, metric.label.K"
            )
        name = re.sub(r"\.labels\.", ".label.", match["field"])
        terms.append((name, match["value"]))
    if not any(name == "metric.type" for name, _ in terms):
        raise _invalid('The filter must name a metric type: metric.type = "..."')
    return terms


class LocalMetrics(GrpcStandin):
    """The metric store with its gRPC front (127.0.0.1 or `grpc_host`) and an optional REST front."""

    name = "metrics-api"

    def __init__(
        self,
        grpc_port: int = 0,
        *,
        grpc_host: str = "127.0.0.1",
        rest_host: str | None = None,
        rest_port: int = 0,
        min_interval: float = MIN_INTERVAL,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(grpc_host, grpc_port)
        self.rest_host = rest_host
        self._rest_front = HttpFront("metrics-rest", rest_host or "127.0.0.1", rest_port)
        self.min_interval = min_interval
        self._clock = clock
        self._lock = threading.RLock()
        self._series: dict[tuple[Any, ...], _Series] = {}
        self._value_types: dict[str, str] = {}  # metric type -> value type (the auto-created descriptor)
        self._calls: list[Call] = []

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> Self:
        super().start()
        if self.rest_host is not None:
            try:
                handler = method_handler(lambda request, _: self._rest(request), ("GET", "POST"))
                self._rest_front.start(handler, hint="pick another --rest-port, or stop what listens there")
            except BaseException:
                self.stop()
                raise
        return self

    def _services(self) -> dict[str, dict[str, grpc.RpcMethodHandler]]:
        methods: dict[str, tuple[Callable[[Any], Any], Any]] = {
            "CreateTimeSeries": (self._grpc_create, m.CreateTimeSeriesRequest),
            "ListTimeSeries": (self._list, m.ListTimeSeriesRequest),
        }
        table = {
            name: grpc.unary_unary_rpc_method_handler(
                self._wrap(name, fn), request_deserializer=cls.deserialize, response_serializer=_serialize
            )
            for name, (fn, cls) in methods.items()
        }
        return {"google.monitoring.v3.MetricService": table}

    def stop(self) -> None:
        super().stop()
        self._rest_front.stop()

    @property
    def grpc_host(self) -> str:
        return self.host

    @property
    def rest_url(self) -> str:
        """http://host:port, the REST front's root (a writer posts to /v3/projects/P/timeSeries)."""
        return f"http://{self.rest_host}:{self._rest_front.port}"

    # --- inspection --------------------------------------------------------------------------------

    def calls(self, method: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if method is None or c.method == method]

    def series(self, metric_type: str | None = None) -> list[m.TimeSeries]:
        """Every stored series with all its points (newest first)."""
        with self._lock:
            return [
                s.message(None, datetime.max.replace(tzinfo=UTC))
                for s in self._series.values()
                if metric_type is None or s.metric_type == metric_type
            ]

    # --- the calls ---------------------------------------------------------------------------------

    def _wrap(self, method: str, fn: Callable[[Any], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            code = grpc.StatusCode.OK
            try:
                return fn(request)
            except ApiError as exc:
                code = exc.code
                context.abort(exc.code, exc.message)
            finally:
                count = len(request.time_series) if method == "CreateTimeSeries" else 0
                with self._lock:
                    self._calls.append(Call(method, "grpc", code.name, count))

        return handler

    def _grpc_create(self, request: m.CreateTimeSeriesRequest) -> empty_pb2.Empty:
        self.create(request)
        return empty_pb2.Empty()

    def create(self, request: m.CreateTimeSeriesRequest) -> None:
        """Validate every series first, then store all of them (a bad request stores nothing)."""
        match = _PROJECT.fullmatch(request.name)
        if match is None:
            raise _invalid(
                f"Invalid resource name: {request.name!r}; expected projects/[PROJECT_ID_OR_NUMBER]"
            )
        if not 1 <= len(request.time_series) <= MAX_SERIES:
            raise _invalid(f"Field timeSeries: between 1 and {MAX_SERIES} time series per request")
        now = self._clock()
        seen: set[tuple[Any, ...]] = set()
        accepted: list[tuple[tuple[Any, ...], m.TimeSeries, datetime, str]] = []
        with self._lock:
            for i, ts in enumerate(request.time_series):
                where = f"timeSeries[{i}]"
                if not ts.metric.type.startswith(WRITABLE_PREFIXES):
                    raise ApiError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"Field {where}.metric.type had an invalid value of {ts.metric.type!r}: "
                        "only custom.googleapis.com/ and workload.googleapis.com/ metrics can be written",
                    )
                need = RESOURCE_LABELS.get(ts.resource.type)
                if need is None:
                    raise _invalid(
                        f"Field {where}.resource.type: unsupported resource type {ts.resource.type!r}"
                    )
                missing = sorted(need - set(ts.resource.labels))
                if missing:
                    raise _invalid(
                        f"Field {where}.resource: the {ts.resource.type} resource needs "
                        f"label(s) {', '.join(missing)}"
                    )
                if len(ts.points) != 1:
                    raise _invalid(
                        f"Field {where}.points had an invalid value: exactly one point per time series"
                    )
                point = ts.points[0]
                if "end_time" not in point.interval:
                    raise _invalid(f"Field {where}.points[0].interval.end_time is required")
                end = point.interval.end_time
                if "start_time" in point.interval and point.interval.start_time != end:
                    raise _invalid(
                        f"Field {where}.points[0].interval.start_time: a GAUGE point's start time "
                        "must equal its end time"
                    )
                if end > now + timedelta(minutes=5) or end < now - timedelta(hours=25):
                    raise _invalid(
                        f"Field {where}.points[0].interval.end_time had an invalid value: points must be "
                        "written within 25 hours in the past and 5 minutes in the future"
                    )
                vtype = _value_type(point.value)
                if not vtype:
                    raise _invalid(f"Field {where}.points[0].value: no value")
                known = self._value_types.get(ts.metric.type)
                if known is not None and known != vtype:
                    raise _invalid(
                        f"Field {where}.points[0].value had an invalid value: the metric {ts.metric.type} "
                        f"has value type {known}, this point is {vtype}"
                    )
                key = _key(ts)
                if key in seen:
                    raise _invalid(f"Field {where} had an invalid value: Duplicate TimeSeries encountered.")
                seen.add(key)
                stored = self._series.get(key)
                if stored is not None and stored.points:
                    last = stored.points[-1][0]
                    if end <= last:
                        raise _invalid(
                            f"Field {where}: Points must be written in order. One or more of the points "
                            "specified had an older start time than the most recent point."
                        )
                    if (end - last).total_seconds() < self.min_interval:
                        raise _invalid(
                            f"Field {where}: One or more points were written more frequently than the "
                            f"maximum sampling period configured for the metric ({self.min_interval:g} s)."
                        )
                accepted.append((key, ts, end, vtype))
            for key, ts, end, vtype in accepted:
                self._value_types.setdefault(ts.metric.type, vtype)
                stored = self._series.setdefault(
                    key,
                    _Series(
                        ts.metric.type,
                        dict(ts.metric.labels),
                        ts.resource.type,
                        dict(ts.resource.labels),
                        vtype,
                    ),
                )
                stored.points = [*stored.points, (end, ts.points[0].value)][-MAX_POINTS:]

    def _list(self, request: m.ListTimeSeriesRequest) -> m.ListTimeSeriesResponse:
        if _PROJECT.fullmatch(request.name) is None:
            raise _invalid(f"Invalid resource name: {request.name!r}")
        if "aggregation" in request and request.aggregation.per_series_aligner:
            raise _invalid("aggregation is not supported by the local endpoint; read raw points")
        terms = parse_filter(request.filter)
        if "end_time" not in request.interval:
            raise _invalid("Field interval.end_time is required")
        start = request.interval.start_time if "start_time" in request.interval else None
        end = request.interval.end_time
        out = []
        with self._lock:
            for s in self._series.values():
                if all(self._matches(s, name, value) for name, value in terms):
                    ts = s.message(start, end)
                    if ts.points:
                        if request.view == m.ListTimeSeriesRequest.TimeSeriesView.HEADERS:
                            ts.points = []
                        out.append(ts)
        return m.ListTimeSeriesResponse(time_series=out)

    @staticmethod
    def _matches(s: _Series, name: str, value: str) -> bool:
        if name == "metric.type":
            return s.metric_type == value
        if name == "resource.type":
            return s.resource_type == value
        scope, _, key = name.split(".", 2)
        labels = s.resource_labels if scope == "resource" else s.metric_labels
        return labels.get(key) == value

    # --- REST --------------------------------------------------------------------------------------

    def _rest(self, req: BaseHTTPRequestHandler) -> None:
        bearer = req.headers.get("Authorization", "").startswith("Bearer ")
        count = 0
        try:
            match = _REST_PATH.fullmatch(req.path.split("?", 1)[0])
            if match is None or req.command != "POST":
                raise ApiError(grpc.StatusCode.NOT_FOUND, f"no such method: {req.command} {req.path}")
            length = int(req.headers.get("Content-Length") or 0)
            if length > _MAX_BODY:
                raise _invalid("request body too large")
            raw = req.rfile.read(length) if length else b""
            if not bearer:
                raise ApiError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "Request is missing required authentication credential. Expected OAuth 2 access token.",
                )
            try:
                body = json.loads(raw or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("not an object")
                request = m.CreateTimeSeriesRequest.from_json(
                    json.dumps({**body, "name": f"projects/{match['project']}"})
                )
            except ValueError as exc:
                raise _invalid(f"Invalid JSON payload received. {exc}") from None
            count = len(request.time_series)
            self.create(request)
            status, answer, code = 200, {}, "OK"
        except ApiError as exc:
            status, answer, code = ApiError.HTTP.get(exc.code, 500), exc.body(), exc.code.name
        with self._lock:
            self._calls.append(Call("CreateTimeSeries", "rest", code, count, bearer))
        data = json.dumps(answer).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json; charset=UTF-8")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)


def _serialize(message: Any) -> bytes:
    if isinstance(message, empty_pb2.Empty):
        return message.SerializeToString()
    return bytes(type(message).serialize(message))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m standins.metrics_api", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--grpc-port", type=int, default=0)
    parser.add_argument("--rest-host", default="127.0.0.1")
    parser.add_argument("--rest-port", type=int, default=0)
    args = parser.parse_args(argv)
    return serve_until_signal(
        parser,
        lambda: LocalMetrics(args.grpc_port, rest_host=args.rest_host, rest_port=args.rest_port).start(),
        lambda api: f"metrics-api listening: gRPC {api.endpoint}, REST {api.rest_url}",
    )


if __name__ == "__main__":
    raise SystemExit(main())
