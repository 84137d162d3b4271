"""A local gRPC Cloud Monitoring endpoint: alert policies, notification channels and uptime checks.

google-cloud-monitoring has gRPC transports only, so this is a gRPC server speaking the real v3
services (`google.monitoring.v3.AlertPolicyService`, `NotificationChannelService`,
`UptimeCheckService`) with the library's own proto-plus types on the wire. Point the real clients
at it with an insecure channel:

    channel = grpc.insecure_channel(api.endpoint)
    monitoring_v3.AlertPolicyServiceClient(transport=AlertPolicyServiceGrpcTransport(channel=channel))

Implemented: List (with paging), Get, Create, Update (update_mask, or full replace) and Delete of
each, with the checks and status codes of the real API that the project relies on: required
fields, condition shapes, server-assigned names and condition names, creation/mutation records,
channel references that must exist, `force` for deleting a channel still in use, the uptime
check fields that are immutable after creation. Every call is recorded (`calls()`); faults can be
injected per method (`inject`). The state can live in a JSON file so the endpoint survives a
restart and other processes (the local alert path) can read what `fab monitoring.apply` created.

CLI:  python -m standins.monitoring_api [--port N] [--state FILE]     (binds 127.0.0.1 only)
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.cloud import monitoring_v3 as m
from google.protobuf import empty_pb2, json_format

from standins import monitoring_filter
from standins.serving import GrpcStandin, serve_until_signal

# kind -> (collection in resource names, proto-plus type)
KINDS: dict[str, tuple[str, Any]] = {
    "alert_policy": ("alertPolicies", m.AlertPolicy),
    "channel": ("notificationChannels", m.NotificationChannel),
    "uptime_check": ("uptimeCheckConfigs", m.UptimeCheckConfig),
}
# the only fields UpdateUptimeCheckConfig may change (the API reference says so)
UPTIME_MUTABLE = frozenset(
    {"display_name", "http_check", "tcp_check", "timeout", "content_matchers", "selected_regions"}
)
# uptime-check resource types and the labels each needs
UPTIME_RESOURCES = {
    "uptime_url": {"host", "project_id"},
    "gce_instance": {"instance_id", "zone", "project_id"},
    "gae_app": {"module_id", "version_id", "project_id"},
    "k8s_service": {"project_id", "location", "cluster_name", "namespace_name", "service_name"},
    "servicedirectory_service": {"project_id", "location", "namespace_name", "service_name"},
}
UPTIME_PERIODS = {60, 300, 600, 900}
# channel types and the labels each accepts (first set: required)
CHANNEL_TYPES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "pubsub": (frozenset({"topic"}), frozenset({"topic"})),
    "email": (frozenset({"email_address"}), frozenset({"email_address"})),
    "webhook_tokenauth": (frozenset({"url"}), frozenset({"url"})),
    "slack": (frozenset({"channel_name"}), frozenset({"channel_name", "team", "auth_token"})),
}
_PROJECT = re.compile(r"projects/(?P<project>[a-z][a-z0-9-]{4,28}[a-z0-9])")
_TOPIC = re.compile(r"projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/topics/[A-Za-z][\w.~+%-]{2,254}")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")


class ApiError(Exception):
    """Aborts the current call with a gRPC status (what the real API answers)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass
class Call:
    """One RPC as the endpoint saw it: method name, request (as a dict) and the status answered."""

    method: str
    request: dict[str, Any]
    code: str
    at: float = field(default_factory=time.time)

    @property
    def mutating(self) -> bool:
        return self.method.startswith(("Create", "Update", "Delete")) and self.code == "OK"


@dataclass
class _Fault:
    method: str
    code: grpc.StatusCode
    times: int
    message: str


def _plain(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(type(message).pb(message), preserving_proto_field_name=True)


def _now() -> datetime:
    return datetime.now(UTC)


class LocalMonitoring(GrpcStandin):
    """The three Monitoring services on 127.0.0.1 (gRPC, insecure), state in memory (and a file)."""

    name = "monitoring-api"

    def __init__(self, port: int = 0, state_file: Path | None = None, default_page_size: int = 100) -> None:
        super().__init__("127.0.0.1", port)
        self.default_page_size = default_page_size
        self.state_file = state_file
        self._lock = threading.RLock()
        self._objects: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}  # kind -> name -> msg
        self._calls: list[Call] = []
        self._faults: list[_Fault] = []
        self._rand = random.Random()
        self._seq = itertools.count(1)
        if state_file is not None and state_file.exists():
            self._load(state_file)

    # --- lifecycle ---------------------------------------------------------------------------------

    def _services(self) -> dict[str, dict[str, grpc.RpcMethodHandler]]:
        services: dict[str, dict[str, tuple[Callable[[Any], Any], Any]]] = {
            "google.monitoring.v3.AlertPolicyService": {
                "ListAlertPolicies": (self._list_policies, m.ListAlertPoliciesRequest),
                "GetAlertPolicy": (self._get_policy, m.GetAlertPolicyRequest),
                "CreateAlertPolicy": (self._create_policy, m.CreateAlertPolicyRequest),
                "UpdateAlertPolicy": (self._update_policy, m.UpdateAlertPolicyRequest),
                "DeleteAlertPolicy": (self._delete_policy, m.DeleteAlertPolicyRequest),
            },
            "google.monitoring.v3.NotificationChannelService": {
                "ListNotificationChannels": (self._list_channels, m.ListNotificationChannelsRequest),
                "GetNotificationChannel": (self._get_channel, m.GetNotificationChannelRequest),
                "CreateNotificationChannel": (self._create_channel, m.CreateNotificationChannelRequest),
                "UpdateNotificationChannel": (self._update_channel, m.UpdateNotificationChannelRequest),
                "DeleteNotificationChannel": (self._delete_channel, m.DeleteNotificationChannelRequest),
            },
            "google.monitoring.v3.UptimeCheckService": {
                "ListUptimeCheckConfigs": (self._list_checks, m.ListUptimeCheckConfigsRequest),
                "GetUptimeCheckConfig": (self._get_check, m.GetUptimeCheckConfigRequest),
                "CreateUptimeCheckConfig": (self._create_check, m.CreateUptimeCheckConfigRequest),
                "UpdateUptimeCheckConfig": (self._update_check, m.UpdateUptimeCheckConfigRequest),
                "DeleteUptimeCheckConfig": (self._delete_check, m.DeleteUptimeCheckConfigRequest),
            },
        }
        return {
            service: {
                name: grpc.unary_unary_rpc_method_handler(
                    self._wrap(name, fn),
                    request_deserializer=request_type.deserialize,
                    response_serializer=_serialize,
                )
                for name, (fn, request_type) in methods.items()
            }
            for service, methods in services.items()
        }

    # --- inspection and test hooks -----------------------------------------------------------------

    def alert_policies(self, project: str | None = None) -> list[m.AlertPolicy]:
        return self._snapshot("alert_policy", project)

    def notification_channels(self, project: str | None = None) -> list[m.NotificationChannel]:
        return self._snapshot("channel", project)

    def uptime_checks(self, project: str | None = None) -> list[m.UptimeCheckConfig]:
        return self._snapshot("uptime_check", project)

    def calls(self, method: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if method is None or c.method == method]

    def mutations(self) -> list[Call]:
        """Calls that changed the state (successful Create/Update/Delete)."""
        return [c for c in self.calls() if c.mutating]

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def inject(
        self,
        method: str,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        times: int = 1,
        message: str = "injected fault",
    ) -> None:
        """Answer the next `times` calls of `method` (e.g. "CreateAlertPolicy") with `code`."""
        with self._lock:
            self._faults.append(_Fault(method, code, times, message))

    def _snapshot(self, kind: str, project: str | None) -> list[Any]:
        prefix = f"projects/{project}/" if project else ""
        with self._lock:
            return [_copy(o) for n, o in self._objects[kind].items() if n.startswith(prefix)]

    # --- dispatch ----------------------------------------------------------------------------------

    def _wrap(self, method: str, fn: Callable[[Any], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            code = grpc.StatusCode.OK
            try:
                fault = self._take_fault(method)
                if fault is not None:
                    raise ApiError(fault.code, fault.message)
                with self._lock:
                    result = fn(request)
                    if method.startswith(("Create", "Update", "Delete")):
                        self._save()
                return result
            except ApiError as exc:
                code = exc.code
                context.abort(exc.code, exc.message)
            except Exception:
                code = grpc.StatusCode.UNKNOWN  # a bug here: gRPC answers UNKNOWN, the record says so
                raise
            finally:
                with self._lock:
                    self._calls.append(Call(method, _plain(request), code.name))

        return handler

    def _take_fault(self, method: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method == method and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    # --- shared helpers ----------------------------------------------------------------------------

    @staticmethod
    def _project(parent: str) -> str:
        match = _PROJECT.fullmatch(parent)
        if match is None:
            raise _invalid(f"Invalid resource name: {parent!r}; expected projects/[PROJECT_ID_OR_NUMBER]")
        return match["project"]

    def _find(self, kind: str, name: str) -> Any:
        obj = self._objects[kind].get(name)
        if obj is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND, f"Requested entity was not found: {name}")
        return obj

    def _list(
        self, kind: str, parent: str, filter_: str, page_size: int, page_token: str
    ) -> tuple[list[Any], str]:
        project = self._project(parent)
        if filter_:
            raise _invalid(
                "filter is not supported by the local Monitoring endpoint; list and filter locally"
            )
        names = sorted(n for n in self._objects[kind] if n.startswith(f"projects/{project}/"))
        try:
            start = int(page_token or "0")
        except ValueError:
            raise _invalid(f"Invalid page token: {page_token!r}") from None
        size = page_size if page_size > 0 else self.default_page_size
        chunk = names[start : start + size]
        next_token = str(start + size) if start + size < len(names) else ""
        return [_copy(self._objects[kind][n]) for n in chunk], next_token

    def _new_id(self, kind: str, display_name: str) -> str:
        if kind == "uptime_check":
            slug = re.sub(r"[^a-z0-9]+", "-", display_name.lower()).strip("-")[:40] or "uptime-check"
            return f"{slug}-{self._rand.getrandbits(32):08x}"
        return str(10**18 + self._rand.getrandbits(56) * 1000 + next(self._seq) % 1000)

    @staticmethod
    def _check_labels(labels: Iterable[tuple[str, str]], where: str) -> None:
        items = list(labels)
        if len(items) > 64:
            raise _invalid(f"{where}: at most 64 labels")
        for key, value in items:
            if not _LABEL_KEY.fullmatch(key):
                raise _invalid(f"{where}: invalid label key {key!r}")
            if not _LABEL_VALUE.fullmatch(value):
                raise _invalid(f"{where}: invalid label value {value!r} for key {key!r}")

    @staticmethod
    def _apply_mask(stored: Any, given: Any, paths: list[str], cls: Any) -> Any:
        """Copy the masked top-level fields from `given` onto a copy of `stored`."""
        known = set(cls.meta.fields)
        result = _copy(stored)
        for path in paths:
            top = path.split(".", 1)[0]
            attr = top if top in known else f"{top}_"
            if attr not in known:
                raise _invalid(f"update_mask: unknown field {path!r}")
            if attr in given:
                setattr(result, attr, getattr(given, attr))
            else:
                delattr(result, attr)
        return result

    def _stamp(self, obj: Any, created: bool) -> None:
        record = m.MutationRecord(mutate_time=_now(), mutated_by="local-monitoring")
        if isinstance(obj, m.AlertPolicy):
            if created:
                obj.creation_record = record
            obj.mutation_record = record
        elif isinstance(obj, m.NotificationChannel):
            if created:
                obj.creation_record = record
            obj.mutation_records.append(record)

    # --- alert policies ----------------------------------------------------------------------------

    def _validate_policy(self, project: str, policy: m.AlertPolicy) -> None:
        if not policy.display_name:
            raise _invalid("Field alert_policy.display_name is required")
        if not 1 <= len(policy.conditions) <= 6:
            raise _invalid("Field alert_policy.conditions must have between 1 and 6 elements")
        if (
            len(policy.conditions) > 1
            and policy.combiner == m.AlertPolicy.ConditionCombinerType.COMBINE_UNSPECIFIED
        ):
            raise _invalid("Field alert_policy.combiner is required when there is more than one condition")
        for i, cond in enumerate(policy.conditions):
            where = f"alert_policy.conditions[{i}]"
            if not cond.display_name:
                raise _invalid(f"Field {where}.display_name is required")
            kinds = [k for k in ("condition_threshold", "condition_absent") if k in cond]
            others = [
                k
                for k in (
                    "condition_matched_log",
                    "condition_monitoring_query_language",
                    "condition_prometheus_query_language",
                    "condition_sql",
                )
                if k in cond
            ]
            if others:
                raise _invalid(f"{where}: {others[0]} is not supported by the local Monitoring endpoint")
            if len(kinds) != 1:
                raise _invalid(f"Field {where} must set exactly one condition type")
            body = getattr(cond, kinds[0])
            try:
                comparisons = monitoring_filter.parse(body.filter)
            except monitoring_filter.FilterError as exc:
                raise _invalid(f"Field {where}.{kinds[0]}.filter is invalid: {exc}") from None
            if not any(c.selector == "metric.type" and c.op == "=" for c in comparisons):
                raise _invalid(f"Field {where}.{kinds[0]}.filter must specify metric.type")
            if (
                kinds[0] == "condition_threshold"
                and body.comparison == m.ComparisonType.COMPARISON_UNSPECIFIED
            ):
                raise _invalid(f"Field {where}.condition_threshold.comparison is required")
            if "duration" not in body:
                raise _invalid(f"Field {where}.{kinds[0]}.duration is required")
            for j, agg in enumerate(body.aggregations):
                at = f"{where}.{kinds[0]}.aggregations[{j}]"
                reducer = agg.cross_series_reducer != m.Aggregation.Reducer.REDUCE_NONE
                aligner = agg.per_series_aligner != m.Aggregation.Aligner.ALIGN_NONE
                if reducer and not aligner:
                    raise _invalid(f"{at}: cross_series_reducer requires a per_series_aligner")
                if aligner and "alignment_period" not in agg:
                    raise _invalid(f"{at}: per_series_aligner requires an alignment_period")
                if agg.group_by_fields and not reducer:
                    raise _invalid(f"{at}: group_by_fields requires a cross_series_reducer")
        for i, channel in enumerate(policy.notification_channels):
            if not channel.startswith(f"projects/{project}/notificationChannels/"):
                raise _invalid(
                    f"Field alert_policy.notification_channels[{i}] had an invalid value: {channel!r}"
                )
            if channel not in self._objects["channel"]:
                raise _invalid(f"Could not find notification channel {channel}")
        self._check_labels(policy.user_labels.items(), "alert_policy.user_labels")

    def _name_conditions(self, policy: m.AlertPolicy, previous: m.AlertPolicy | None) -> None:
        kept = {c.name for c in previous.conditions} if previous is not None else set()
        for cond in policy.conditions:
            if cond.name not in kept:
                cond.name = f"{policy.name}/conditions/{self._new_id('condition', '')}"

    def _list_policies(self, request: m.ListAlertPoliciesRequest) -> m.ListAlertPoliciesResponse:
        if request.order_by:
            raise _invalid("order_by is not supported by the local Monitoring endpoint")
        items, token = self._list(
            "alert_policy", request.name, request.filter, request.page_size, request.page_token
        )
        return m.ListAlertPoliciesResponse(alert_policies=items, next_page_token=token, total_size=len(items))

    def _get_policy(self, request: m.GetAlertPolicyRequest) -> m.AlertPolicy:
        return _copy(self._find("alert_policy", request.name))

    def _create_policy(self, request: m.CreateAlertPolicyRequest) -> m.AlertPolicy:
        project = self._project(request.name)
        policy = _copy(request.alert_policy)
        if policy.name:
            raise _invalid("Field alert_policy.name must be empty on create (the server assigns it)")
        self._validate_policy(project, policy)
        policy.name = f"projects/{project}/alertPolicies/{self._new_id('alert_policy', '')}"
        if "enabled" not in policy:
            policy.enabled = True
        self._name_conditions(policy, None)
        self._stamp(policy, created=True)
        self._objects["alert_policy"][policy.name] = policy
        return _copy(policy)

    def _update_policy(self, request: m.UpdateAlertPolicyRequest) -> m.AlertPolicy:
        given = request.alert_policy
        stored = self._find("alert_policy", given.name)
        paths = list(request.update_mask.paths) if "update_mask" in request else []
        for read_only in ("creation_record", "mutation_record", "name"):
            if read_only in paths:
                raise _invalid(f"update_mask: field {read_only} is output only")
        if paths:
            policy = self._apply_mask(stored, given, paths, m.AlertPolicy)
        else:
            policy = _copy(given)
            policy.creation_record = stored.creation_record
        self._validate_policy(self._project("/".join(given.name.split("/")[:2])), policy)
        if "enabled" not in policy:
            policy.enabled = True
        self._name_conditions(policy, stored)
        self._stamp(policy, created=False)
        self._objects["alert_policy"][policy.name] = policy
        return _copy(policy)

    def _delete_policy(self, request: m.DeleteAlertPolicyRequest) -> empty_pb2.Empty:
        self._find("alert_policy", request.name)
        del self._objects["alert_policy"][request.name]
        return empty_pb2.Empty()

    # --- notification channels ---------------------------------------------------------------------

    def _validate_channel(self, channel: m.NotificationChannel) -> None:
        spec = CHANNEL_TYPES.get(channel.type_)
        if spec is None:
            raise _invalid(f"Unknown notification channel type {channel.type_!r}")
        required, allowed = spec
        labels = dict(channel.labels)
        missing = sorted(required - set(labels))
        if missing:
            raise _invalid(
                f"Notification channel of type {channel.type_} requires label(s) {', '.join(missing)}"
            )
        unknown = sorted(set(labels) - allowed)
        if unknown:
            raise _invalid(f"Unknown label(s) {', '.join(unknown)} for channel type {channel.type_}")
        if channel.type_ == "pubsub" and not _TOPIC.fullmatch(labels["topic"]):
            raise _invalid(
                f"Invalid Pub/Sub topic {labels['topic']!r}: expected projects/PROJECT/topics/TOPIC"
            )
        self._check_labels(channel.user_labels.items(), "notification_channel.user_labels")

    def _list_channels(
        self, request: m.ListNotificationChannelsRequest
    ) -> m.ListNotificationChannelsResponse:
        if request.order_by:
            raise _invalid("order_by is not supported by the local Monitoring endpoint")
        items, token = self._list(
            "channel", request.name, request.filter, request.page_size, request.page_token
        )
        return m.ListNotificationChannelsResponse(
            notification_channels=items, next_page_token=token, total_size=len(items)
        )

    def _get_channel(self, request: m.GetNotificationChannelRequest) -> m.NotificationChannel:
        return _copy(self._find("channel", request.name))

    def _create_channel(self, request: m.CreateNotificationChannelRequest) -> m.NotificationChannel:
        project = self._project(request.name)
        channel = _copy(request.notification_channel)
        if channel.name:
            raise _invalid("Field notification_channel.name must be empty on create (the server assigns it)")
        self._validate_channel(channel)
        channel.name = f"projects/{project}/notificationChannels/{self._new_id('channel', '')}"
        if "enabled" not in channel:
            channel.enabled = True
        channel.verification_status = m.NotificationChannel.VerificationStatus.VERIFICATION_STATUS_UNSPECIFIED
        self._stamp(channel, created=True)
        self._objects["channel"][channel.name] = channel
        return _copy(channel)

    def _update_channel(self, request: m.UpdateNotificationChannelRequest) -> m.NotificationChannel:
        given = request.notification_channel
        stored = self._find("channel", given.name)
        paths = list(request.update_mask.paths) if "update_mask" in request else []
        if paths:
            channel = self._apply_mask(stored, given, paths, m.NotificationChannel)
        else:
            channel = _copy(given)
            channel.creation_record = stored.creation_record
            channel.mutation_records = list(stored.mutation_records)
        if channel.type_ != stored.type_:
            raise _invalid("Field notification_channel.type cannot be changed")
        self._validate_channel(channel)
        if "enabled" not in channel:
            channel.enabled = True
        self._stamp(channel, created=False)
        self._objects["channel"][channel.name] = channel
        return _copy(channel)

    def _delete_channel(self, request: m.DeleteNotificationChannelRequest) -> empty_pb2.Empty:
        self._find("channel", request.name)
        users = [p for p in self._objects["alert_policy"].values() if request.name in p.notification_channels]
        if users and not request.force:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Notification channel {request.name} is referenced by {len(users)} alerting policies; "
                "set force to delete it anyway",
            )
        for policy in users:
            policy.notification_channels = [c for c in policy.notification_channels if c != request.name]
        del self._objects["channel"][request.name]
        return empty_pb2.Empty()

    # --- uptime checks -----------------------------------------------------------------------------

    def _validate_check(self, check: m.UptimeCheckConfig) -> None:
        if not check.display_name:
            raise _invalid("Field uptime_check_config.display_name is required")
        targets = [k for k in ("monitored_resource", "resource_group", "synthetic_monitor") if k in check]
        if len(targets) != 1:
            raise _invalid("Exactly one of monitored_resource, resource_group, synthetic_monitor must be set")
        if targets[0] == "monitored_resource":
            resource = check.monitored_resource
            need = UPTIME_RESOURCES.get(resource.type)
            if need is None:
                raise _invalid(f"Unsupported monitored resource type for uptime checks: {resource.type!r}")
            missing = sorted(need - set(resource.labels))
            if missing:
                raise _invalid(f"Monitored resource {resource.type} requires label(s) {', '.join(missing)}")
        protocols = [k for k in ("http_check", "tcp_check") if k in check]
        if len(protocols) != 1:
            raise _invalid("Exactly one of http_check, tcp_check must be set")
        if "http_check" in check:
            http = check.http_check
            if http.path and not http.path.startswith("/"):
                raise _invalid(f"http_check.path must start with '/': {http.path!r}")
            if not 0 <= http.port <= 65535:
                raise _invalid(f"http_check.port out of range: {http.port}")
        period = int(check.period.total_seconds()) if "period" in check else 60
        if period not in UPTIME_PERIODS:
            raise _invalid(f"period must be one of 60s, 300s, 600s, 900s, got {period}s")
        if "timeout" not in check:
            raise _invalid("Field uptime_check_config.timeout is required")
        if not 1 <= check.timeout.total_seconds() <= 60:
            raise _invalid("timeout must be between 1s and 60s")
        self._check_labels(check.user_labels.items(), "uptime_check_config.user_labels")

    def _list_checks(self, request: m.ListUptimeCheckConfigsRequest) -> m.ListUptimeCheckConfigsResponse:
        items, token = self._list(
            "uptime_check", request.parent, request.filter, request.page_size, request.page_token
        )
        return m.ListUptimeCheckConfigsResponse(
            uptime_check_configs=items, next_page_token=token, total_size=len(items)
        )

    def _get_check(self, request: m.GetUptimeCheckConfigRequest) -> m.UptimeCheckConfig:
        return _copy(self._find("uptime_check", request.name))

    def _create_check(self, request: m.CreateUptimeCheckConfigRequest) -> m.UptimeCheckConfig:
        project = self._project(request.parent)
        check = _copy(request.uptime_check_config)
        if check.name:
            raise _invalid("Field uptime_check_config.name must be empty on create (the server assigns it)")
        self._validate_check(check)
        if "period" not in check:
            check.period = {"seconds": 60}
        check.name = (
            f"projects/{project}/uptimeCheckConfigs/{self._new_id('uptime_check', check.display_name)}"
        )
        self._objects["uptime_check"][check.name] = check
        return _copy(check)

    def _update_check(self, request: m.UpdateUptimeCheckConfigRequest) -> m.UptimeCheckConfig:
        given = request.uptime_check_config
        stored = self._find("uptime_check", given.name)
        paths = list(request.update_mask.paths) if "update_mask" in request else []
        if paths:
            immutable = sorted({p.split(".", 1)[0] for p in paths} - UPTIME_MUTABLE)
            if immutable:
                raise _invalid(f"update_mask: field(s) {', '.join(immutable)} cannot be updated")
            check = self._apply_mask(stored, given, paths, m.UptimeCheckConfig)
        else:
            check = _copy(given)
            if "period" not in check:
                check.period = stored.period
            before, after = _plain(stored), _plain(check)
            changed = sorted(
                k
                for k in set(before) | set(after)
                if k not in UPTIME_MUTABLE and before.get(k) != after.get(k)
            )
            if changed:
                raise _invalid(f"field(s) {', '.join(changed)} cannot be updated")
        self._validate_check(check)
        self._objects["uptime_check"][check.name] = check
        return _copy(check)

    def _delete_check(self, request: m.DeleteUptimeCheckConfigRequest) -> empty_pb2.Empty:
        self._find("uptime_check", request.name)
        check_id = request.name.rsplit("/", 1)[-1]
        for policy in self._objects["alert_policy"].values():
            for cond in policy.conditions:
                body = cond.condition_threshold if "condition_threshold" in cond else cond.condition_absent
                if f'"{check_id}"' in body.filter:
                    raise ApiError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"Uptime check {request.name} is used by alerting policy {policy.name}",
                    )
        del self._objects["uptime_check"][request.name]
        return empty_pb2.Empty()

    # --- persistence -------------------------------------------------------------------------------

    def _save(self) -> None:
        if self.state_file is None:
            return
        doc = {
            kind: [json.loads(KINDS[kind][1].to_json(o)) for o in objects.values()]
            for kind, objects in self._objects.items()
        }
        tmp = self.state_file.with_suffix(self.state_file.suffix + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        tmp.replace(self.state_file)

    def _load(self, path: Path) -> None:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a monitoring state file ({exc})") from exc
        for kind, (_, cls) in KINDS.items():
            for raw in doc.get(kind, []):
                obj = cls.from_json(json.dumps(raw))
                self._objects[kind][obj.name] = obj


def _copy(message: Any) -> Any:
    cls = type(message)
    return cls.deserialize(cls.serialize(message))


def _serialize(message: Any) -> bytes:
    if isinstance(message, empty_pb2.Empty):
        return message.SerializeToString()
    return bytes(type(message).serialize(message))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m standins.monitoring_api", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--state", type=Path, default=None, help="JSON file the state is kept in")
    args = parser.parse_args(argv)
    try:
        api = LocalMonitoring(port=args.port, state_file=args.state)
    except ValueError as exc:
        parser.error(str(exc))
    return serve_until_signal(
        parser, api.start, lambda api: f"monitoring-api listening; set monitoring.endpoint: {api.endpoint}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
