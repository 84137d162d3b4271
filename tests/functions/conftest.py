"""Fixtures for the Cloud Functions tests: the local Google API stand-ins and the functions themselves.

functions/ is put on sys.path the way the Cloud Functions runtime does it (its modules import each
other as top-level modules), and each app is built with functions-framework's own create_app, which
executes main.py afresh, i.e. a cold start that reads the environment set just before.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import functions_framework
import pytest

from standins.compute_api import ComputeApi
from standins.compute_state import InMemoryCompute
from standins.pubsub_api import LocalPubsub, binary_cloudevent, source_of
from standins.webhook_sink import WebhookSink

FUNCTIONS_DIR = Path(__file__).resolve().parents[2] / "functions"
if str(FUNCTIONS_DIR) not in sys.path:
    sys.path.append(str(FUNCTIONS_DIR))

PROJECT = "local-proj"
ZONE = "us-central1-a"
MIG = "dify-mig"
ALERTS = f"projects/{PROJECT}/topics/fleet-alerts"
EVENTS = f"projects/{PROJECT}/topics/fleet-events"
PUBSUB_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"


def incident(
    incident_id: str,
    state: str = "open",
    *,
    instance_id: str = "",
    instance_name: str = "",
    zone: str = ZONE,
    labels: dict[str, str] | None = None,
    resource_type: str = "gce_instance",
    resource_labels: dict[str, str] | None = None,
    policy: str = "instance-unhealthy",
) -> dict[str, Any]:
    """A Monitoring notification (schema 1.2) as Monitoring publishes it to Pub/Sub."""
    res = {"project_id": PROJECT, "zone": zone}
    if instance_id:
        res["instance_id"] = instance_id
    res.update(resource_labels or {})
    doc: dict[str, Any] = {
        "version": "1.2",
        "incident": {
            "incident_id": incident_id,
            "scoping_project_id": PROJECT,
            "scoping_project_number": 123456789,
            "url": f"https://console.cloud.google.com/monitoring/alerting/incidents/{incident_id}?project={PROJECT}",
            "started_at": 1764140000,
            "ended_at": 1764140600 if state == "closed" else None,
            "state": state,
            "resource_id": instance_id,
            "resource_name": f"{PROJECT} {instance_name or instance_id}",
            "resource": {"type": resource_type, "labels": res},
            "metric": {
                "type": "compute.googleapis.com/instance/uptime_check",
                "displayName": "Uptime check",
                "labels": {"instance_name": instance_name} if instance_name else {},
            },
            "metadata": {"system_labels": {}, "user_labels": {}},
            "policy_name": policy,
            "policy_user_labels": labels if labels is not None else {"fleet-action": "autoheal"},
            "condition": {
                "name": f"projects/{PROJECT}/alertPolicies/1/conditions/2",
                "displayName": "health failing",
            },
            "condition_name": "health failing",
            "threshold_value": "1",
            "observed_value": "0.000",
            "summary": f"Health check failing on {instance_name or instance_id}.",
        },
    }
    return doc


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


@dataclass
class Compute:
    backend: InMemoryCompute
    api: ComputeApi

    def ops(self, operation_type: str) -> list[Any]:
        return [op for op in self.backend.ops.all() if op.operation_type == operation_type]

    def member(self, index: int, mig: str = MIG) -> dict[str, Any]:
        name = self.backend.member_names(PROJECT, ZONE, mig)[index]
        return self.backend.instance(PROJECT, ZONE, name)

    def mutations(self) -> list[Any]:
        return [
            c
            for c in self.api.calls()
            if c.http_method != "GET" and not c.method.endswith("listManagedInstances")
        ]


@pytest.fixture
def compute() -> Iterator[Compute]:
    """A local Compute endpoint with one 4-instance MIG (1 h old) and a second, unmanaged MIG."""
    backend = InMemoryCompute(action_seconds=0.2, op_seconds=0.05)
    backend.add_mig(PROJECT, ZONE, MIG, size=4, age=3600)
    backend.add_mig(PROJECT, ZONE, "other-mig", size=2, age=3600)
    api = ComputeApi(backend).start()
    yield Compute(backend, api)
    api.stop()
    backend.close()


@pytest.fixture
def pubsub() -> Iterator[LocalPubsub]:
    api = LocalPubsub(retry_delay=0.05, max_retry_delay=0.2).start()
    api.create_topic(ALERTS)
    api.create_topic(EVENTS)
    yield api
    api.stop()


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    with WebhookSink() as s:
        yield s


@pytest.fixture
def fn_env(compute: Compute, pubsub: LocalPubsub, sink: WebhookSink) -> dict[str, str]:
    """Environment of the functions: fast cooldowns, local endpoints, all three webhooks."""
    return {
        "FLEET_NAME": "local",
        "FLEET_MIGS": f"{PROJECT}/{ZONE}/{MIG}",
        "FLEET_HEAL_MAX_CONCURRENT": "1",
        "FLEET_HEAL_INITIAL_DELAY": "60",
        "FLEET_HEAL_SETTLE": "120",
        "FLEET_HEAL_WINDOW": "1800",
        "FLEET_SCALE_STEP": "1",
        "FLEET_SCALE_MIN": "1",
        "FLEET_SCALE_MAX": "6",
        "FLEET_SCALE_COOLDOWN": "60",
        "FLEET_SCALE_IN_STABILIZATION": "600",
        "FLEET_EVENTS_TOPIC": EVENTS,
        "FLEET_SLACK_WEBHOOK_URL": sink.slack_url(),
        "FLEET_CHAT_WEBHOOK_URL": sink.chat_url(),
        "FLEET_GENERIC_WEBHOOK_URL": sink.generic_url(),
        "COMPUTE_API_ENDPOINT": compute.api.url,
        "PUBSUB_EMULATOR_HOST": pubsub.emulator_host,
        "FLEET_API_TIMEOUT": "10",
        "FLEET_WEBHOOK_TIMEOUT": "5",
    }


class FunctionClient:
    """functions-framework's Flask test client for one entry point, plus its log records."""

    def __init__(self, client: Any, capsys: pytest.CaptureFixture[str]) -> None:
        self.client = client
        self.capsys = capsys
        self._records: list[dict[str, Any]] = []
        self._ids = 0

    def post(
        self, data: bytes, topic: str = ALERTS, attributes: dict[str, str] | None = None, message_id: str = ""
    ) -> Any:
        """Deliver one Pub/Sub message as a binary-mode CloudEvent, like Eventarc."""
        self._ids += 1
        headers, body = binary_cloudevent(topic, message_id or f"m{self._ids}", data, attributes)
        return self.client.post("/", headers=headers, data=body)

    def post_raw(self, headers: dict[str, str], body: bytes) -> Any:
        return self.client.post("/", headers=headers, data=body)

    def records(self) -> list[dict[str, Any]]:
        """Every structured log line written so far (stdout must be nothing but JSON lines)."""
        out = self.capsys.readouterr().out
        for line in out.splitlines():
            if line.strip():
                self._records.append(json.loads(line))
        return list(self._records)

    def new_records(self) -> list[dict[str, Any]]:
        """Records written since the last call of records() or new_records()."""
        seen = len(self._records)
        return self.records()[seen:]

    def decisions(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if "decision" in r]


@pytest.fixture
def load_function(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fn_env: dict[str, str]
) -> Callable[..., FunctionClient]:
    """Cold-start one entry point with fn_env (plus overrides; None removes a variable)."""

    def load(target: str, **overrides: str | None) -> FunctionClient:
        env = {**fn_env, **overrides}
        for key, value in env.items():
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)
        monkeypatch.setenv("FUNCTION_TARGET", target)
        app = functions_framework.create_app(target=target, source=str(FUNCTIONS_DIR / "main.py"))
        return FunctionClient(app.test_client(), capsys)

    return load


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


__all__ = ["ALERTS", "EVENTS", "MIG", "PROJECT", "PUBSUB_TYPE", "ZONE", "encode", "incident", "source_of"]
