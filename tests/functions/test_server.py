"""Real `functions-framework` server processes fed by the local Pub/Sub's push, end to end.

Monitoring-shaped alert -> (real PublisherClient) -> local Pub/Sub -> binary-mode CloudEvent push ->
autoheal server -> local Compute (real compute client) -> fleet event (real PublisherClient inside
the function) -> push -> notify server -> webhook sink.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.cloud import pubsub_v1

from standins.compute_api import ComputeApi
from standins.compute_state import InMemoryCompute
from standins.pubsub_api import LocalPubsub, source_of
from standins.webhook_sink import WebhookSink
from tests.functions.conftest import (
    ALERTS,
    EVENTS,
    FUNCTIONS_DIR,
    MIG,
    PROJECT,
    PUBSUB_TYPE,
    ZONE,
    encode,
    incident,
)

pytestmark = pytest.mark.functions

FF = Path(sys.executable).with_name("functions-framework")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    target: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out


def start_server(target: str, env: dict[str, str], logdir: Path) -> Server:
    port = free_port()
    log = logdir / f"{target}.out"
    proc = subprocess.Popen(
        [
            str(FF),
            "--target",
            target,
            "--source",
            str(FUNCTIONS_DIR / "main.py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env={**os.environ, **env, "FUNCTION_TARGET": target, "THREADS": "2", "PYTHONUNBUFFERED": "1"},
        stdout=log.open("wb"),
        stderr=(logdir / f"{target}.err").open("wb"),
    )
    return Server(target, port, proc, log)


def wait_listening(server: Server, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(
                f"{server.target} exited: {(server.log.parent / (server.target + '.err')).read_text()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{server.target} did not listen within {timeout}s")


@dataclass
class Stack:
    backend: InMemoryCompute
    api: ComputeApi
    pubsub: LocalPubsub
    sink: WebhookSink
    autoheal: Server
    notify: Server
    publisher: pubsub_v1.PublisherClient

    def publish(self, data: bytes) -> str:
        return str(self.publisher.publish(ALERTS, data).result(timeout=10))

    def member_id(self, index: int) -> str:
        name = self.backend.member_names(PROJECT, ZONE, MIG)[index]
        return str(self.backend.instance(PROJECT, ZONE, name)["id"])

    def resets_of(self, index: int) -> int:
        name = self.backend.member_names(PROJECT, ZONE, MIG)[index]
        return len(
            [
                op
                for op in self.backend.ops.all()
                if op.operation_type == "reset" and op.target_link.endswith(name)
            ]
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logdir = tmp_path_factory.mktemp("ff")
    backend = InMemoryCompute(action_seconds=0.2, op_seconds=0.05)
    backend.add_mig(PROJECT, ZONE, MIG, size=5, age=3600)
    api = ComputeApi(backend).start()
    pubsub = LocalPubsub(max_attempts=4, retry_delay=0.2, max_retry_delay=1.0).start()
    pubsub.create_topic(ALERTS)
    pubsub.create_topic(EVENTS)
    sink = WebhookSink().start()
    common = {
        "FLEET_NAME": "local",
        "FLEET_MIGS": f"{PROJECT}/{ZONE}/{MIG}",
        "FLEET_HEAL_MAX_CONCURRENT": "5",
        "FLEET_HEAL_INITIAL_DELAY": "60",
        "FLEET_EVENTS_TOPIC": EVENTS,
        "COMPUTE_API_ENDPOINT": api.url,
        "PUBSUB_EMULATOR_HOST": pubsub.emulator_host,
    }
    autoheal = start_server("autoheal", common, logdir)
    notify = start_server(
        "notify",
        {**common, "FLEET_SLACK_WEBHOOK_URL": sink.slack_url(), "FLEET_CHAT_WEBHOOK_URL": sink.chat_url()},
        logdir,
    )
    old = os.environ.get("PUBSUB_EMULATOR_HOST")
    os.environ["PUBSUB_EMULATOR_HOST"] = pubsub.emulator_host
    publisher = pubsub_v1.PublisherClient()
    try:
        wait_listening(autoheal)
        wait_listening(notify)
        pubsub.add_push(ALERTS, autoheal.url, subscription=f"projects/{PROJECT}/subscriptions/autoheal")
        pubsub.add_push(EVENTS, notify.url, subscription=f"projects/{PROJECT}/subscriptions/notify")
        yield Stack(backend, api, pubsub, sink, autoheal, notify, publisher)
    finally:
        publisher.stop()
        if old is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = old
        for server in (autoheal, notify):
            # gunicorn's quick shutdown (SIGTERM is its graceful one, which waited out 10 s under load
            # and failed the teardown); killed if even that does not end it
            server.proc.send_signal(signal.SIGINT)
            try:
                server.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait(timeout=10)
        pubsub.stop()
        sink.stop()
        api.stop()
        backend.close()


def test_alert_heals_and_the_team_is_told_in_the_incident_thread(stack):
    message_id = stack.publish(encode(incident("0.srv-1", instance_id=stack.member_id(0))))
    alerts = stack.pubsub.wait_deliveries(1, ALERTS, message_ids={message_id})
    assert [d.statuses for d in alerts] == [[200]]
    assert stack.resets_of(0) == 1

    (decision,) = [
        r for r in stack.autoheal.records() if r.get("message_id") == message_id and "decision" in r
    ]
    assert decision["event_type"] == PUBSUB_TYPE
    assert decision["event_source"] == source_of(ALERTS), "a binary-mode CloudEvent from the alerts topic"
    assert decision["event_id"] == message_id
    assert (decision["decision"], decision["reason"]) == ("reset", "first-step")

    (event_message,) = stack.pubsub.wait_messages(1, EVENTS)
    assert event_message.attributes["kind"] == "heal"
    stack.pubsub.wait_deliveries(1, EVENTS, message_ids={event_message.message_id})
    chat = stack.sink.wait_for(1, flavour="chat")
    assert "[HEAL STARTED] reset" in chat[0].body["text"]
    assert chat[0].body["thread"] == {"threadKey": "incident-0.srv-1"}
    (notified,) = [r for r in stack.notify.records() if r.get("message_id") == event_message.message_id]
    assert notified["event_source"] == source_of(EVENTS) and notified["sent"] == ["slack", "chat"]


def test_the_same_alert_published_three_times_resets_once(stack):
    data = encode(incident("0.srv-dup", instance_id=stack.member_id(1)))
    ids = [stack.publish(data) for _ in range(3)]
    done = stack.pubsub.wait_deliveries(3, ALERTS, message_ids=set(ids))
    assert len(done) == 3 and all(d.delivered for d in done)
    assert stack.resets_of(1) == 1
    reasons = [
        r["reason"] for r in stack.autoheal.records() if r.get("message_id") in ids and "decision" in r
    ]
    assert sorted(reasons) == ["first-step", "replay", "replay"]


def test_api_error_is_redelivered_by_pubsub_and_acts_once(stack):
    stack.api.inject("instances.reset", status=503, times=1)
    message_id = stack.publish(encode(incident("0.srv-503", instance_id=stack.member_id(2))))
    (delivery,) = stack.pubsub.wait_deliveries(1, ALERTS, message_ids={message_id})
    assert delivery.statuses == [500, 200]
    assert stack.resets_of(2) == 1


def test_malformed_alert_is_acknowledged_once(stack):
    message_id = stack.publish(b"\x00 definitely not a notification")
    (delivery,) = stack.pubsub.wait_deliveries(1, ALERTS, message_ids={message_id})
    assert delivery.statuses == [200]
    (record,) = [r for r in stack.autoheal.records() if r.get("message_id") == message_id]
    assert record["reason"] == "malformed" and record["severity"] == "WARNING"
