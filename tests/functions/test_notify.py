"""notify through functions-framework's test client, posting to the local webhook sink."""

from __future__ import annotations

import json

import pytest

from functions.fleet_contract import FleetEvent
from tests.functions.conftest import ALERTS, EVENTS, PUBSUB_TYPE, encode, incident, source_of

pytestmark = pytest.mark.functions

SECRETS = ("localsecret", "localkey", "localtoken", "T000/B000")


def alert(incident_id: str, state: str) -> bytes:
    return encode(incident(incident_id, state, instance_id="1234567890", labels={"team": "web"}))


def test_incident_goes_to_slack_chat_and_generic(load_function, sink):
    fn = load_function("notify")
    assert fn.post(alert("0.n-open", "open")).status_code == 200
    slack, chat, generic = (sink.messages(f) for f in ("slack", "chat", "generic"))
    assert len(slack) == len(chat) == len(generic) == 1
    assert "[FIRING] instance-unhealthy" in slack[0].body["text"]
    assert "Observed 0.000 (threshold 1)" in slack[0].body["blocks"][0]["text"]["text"]
    assert chat[0].body["thread"] == {"threadKey": "incident-0.n-open"}
    assert chat[0].query["messageReplyOption"] == "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"
    assert generic[0].body["kind"] == "incident" and generic[0].body["data"]["incident_id"] == "0.n-open"
    assert generic[0].headers["idempotency-key"]
    (decision,) = fn.decisions()
    assert decision["event_type"] == PUBSUB_TYPE and decision["event_source"] == source_of(ALERTS)
    assert decision["sent"] == ["slack", "chat", "generic"]


def test_closed_incident_replies_in_the_same_chat_thread(load_function, sink):
    fn = load_function("notify")
    fn.post(alert("0.n-thread", "open"))
    fn.post(alert("0.n-other", "open"))
    fn.post(alert("0.n-thread", "closed"))
    opened, other, closed = sink.messages("chat")
    assert "[RESOLVED]" in closed.body["text"]
    assert closed.thread == opened.thread
    assert other.thread != opened.thread


def test_redelivery_is_deduplicated(load_function, sink):
    fn = load_function("notify")
    data = alert("0.n-dup", "open")
    for _ in range(3):
        assert fn.post(data).status_code == 200
    assert len(sink.messages()) == 3, "one per target"
    assert [d["reason"] for d in fn.decisions()] == ["sent", "duplicate", "duplicate"]


def test_a_cold_instance_relies_on_the_receivers_keys(load_function, sink):
    """Another function instance has no memory of what was sent: Chat's requestId still dedupes."""
    data = alert("0.n-cold", "open")
    load_function("notify").post(data)
    load_function("notify").post(data)
    assert len(sink.messages("chat")) == 1, "Chat returned the message created for that requestId"
    generic = sink.messages("generic")
    assert (
        len(generic) == 2 and generic[0].headers["idempotency-key"] == generic[1].headers["idempotency-key"]
    )


def test_fleet_event_threads_under_its_incident(load_function, sink):
    fn = load_function("notify")
    fn.post(alert("0.n-heal", "open"))
    event = FleetEvent(
        kind="heal",
        action="reset",
        result="started",
        fleet="local",
        project="local-proj",
        zone="us-central1-a",
        mig="dify-mig",
        instance="dify-mig-abcd",
        incident_id="0.n-heal",
        time="2026-11-26T07:00:00Z",
        detail="reset dify-mig-abcd",
    )
    data, attributes = event.to_message()
    assert fn.post(data, topic=EVENTS, attributes=attributes).status_code == 200
    opened, heal = sink.messages("chat")
    assert heal.thread == opened.thread
    assert "[HEAL STARTED] reset dify-mig-abcd" in heal.body["text"]
    generic = sink.messages("generic")[-1].body
    assert generic["kind"] == "fleet-event" and generic["data"]["event_id"] == event.event_id


def test_rollout_event_without_incident(load_function, sink):
    fn = load_function("notify")
    event = FleetEvent(kind="rollout", action="finish", result="done", fleet="local", rollout_id="r-9")
    data, attributes = event.to_message()
    fn.post(data, topic=EVENTS, attributes=attributes)
    (chat,) = sink.messages("chat")
    assert chat.body["thread"] == {"threadKey": "rollout-r-9"}


def test_malformed_fleet_event_is_acknowledged(load_function, sink):
    fn = load_function("notify")
    response = fn.post(b'{"kind": "heal"}', topic=EVENTS, attributes={"fleet-event-schema": "1"})
    assert response.status_code == 200
    assert sink.attempts == 0
    assert fn.decisions()[0]["reason"] == "malformed"


def test_webhook_outage_is_retried_and_urls_never_logged(load_function, sink, capsys):
    fn = load_function("notify")
    sink.fail_next(1, status=503)  # Slack is first
    data = alert("0.n-outage", "open")
    assert fn.post(data).status_code == 500, "a transient webhook failure asks Pub/Sub to redeliver"
    assert [m.flavour for m in sink.messages()] == ["chat", "generic"]
    assert fn.post(data).status_code == 200
    assert [m.flavour for m in sink.messages()] == ["chat", "generic", "slack"], (
        "only the failed target again"
    )
    sink.fail_next(3, status=404)
    assert fn.post(alert("0.n-gone", "open")).status_code == 200, "a 404 will not heal by retrying"
    records = fn.records()
    failed = [r for r in records if r.get("reason") == "delivery-failed"]
    assert failed and "slack webhook: HTTP 503" in failed[0]["failed"]
    text = "\n".join(str(r) for r in records)
    for secret in SECRETS:
        assert secret not in text


def test_no_targets_configured(load_function, sink):
    fn = load_function(
        "notify", FLEET_SLACK_WEBHOOK_URL=None, FLEET_CHAT_WEBHOOK_URL=None, FLEET_GENERIC_WEBHOOK_URL=None
    )
    assert fn.post(alert("0.n-none", "open")).status_code == 200
    assert fn.decisions()[0]["reason"] == "no-targets"


def test_plain_http_webhook_outside_loopback_is_refused(load_function, capsys):
    fn = load_function("notify", FLEET_SLACK_WEBHOOK_URL="http://hooks.example.com/services/T/B/supersecret")
    fn.post(alert("0.n-http", "open"))
    records = fn.records()
    assert records[0]["severity"] == "CRITICAL" and records[0]["variable"] == "FLEET_SLACK_WEBHOOK_URL"
    assert "supersecret" not in "\n".join(str(r) for r in records)


# --- issue 12: input edges ---------------------------------------------------------------------------


class ClosingWebhook:
    """A webhook that answers `status`, or (status None) reads the headers and closes the connection."""

    def __init__(self, status: int | None) -> None:
        import socket
        import threading

        self.status = status
        self.accepted = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.recv(4096)
                if self.status is not None:
                    conn.sendall(f"HTTP/1.1 {self.status} Too Large\r\nContent-Length: 0\r\n\r\n".encode())

    def close(self) -> None:
        self.server.close()


@pytest.mark.parametrize("status", [None, 413])
def test_a_webhook_that_refuses_a_big_message_is_a_permanent_failure(load_function, status):
    """A 1 MB summary to a webhook that closes the connection (or says 413): acked, logged, no retry."""
    hook = ClosingWebhook(status)
    try:
        fn = load_function(
            "notify",
            FLEET_SLACK_WEBHOOK_URL=None,
            FLEET_CHAT_WEBHOOK_URL=None,
            FLEET_GENERIC_WEBHOOK_URL=hook.url,
        )
        doc = incident("0.n-big", instance_id="1234567890", labels={"team": "web"})
        doc["incident"]["summary"] = "x" * 1_000_000
        response = fn.post(encode(doc))
    finally:
        hook.close()
    assert hook.accepted == 1
    assert response.status_code == 200, "a permanent failure is acknowledged, not redelivered until expiry"
    records = fn.records()
    (decision,) = [r for r in records if "decision" in r]
    assert (decision["severity"], decision["reason"]) == ("ERROR", "delivery-failed")
    assert "stack_trace" not in decision
    assert all(len(json.dumps(r)) < 20_000 for r in records), "log lines are bounded too"


def test_every_posted_field_is_bounded(load_function, sink):
    fn = load_function("notify")
    doc = incident("0.n-bounded", instance_id="1234567890", labels={"team": "web"})
    raw = doc["incident"]
    raw["summary"] = "s" * 1_000_000
    raw["policy_name"] = "p" * 100_000
    raw["condition_name"] = "c" * 100_000
    raw["observed_value"] = "9" * 100_000
    raw["url"] = "https://console.cloud.google.com/" + "u" * 100_000
    raw["resource"]["labels"].update({f"k{i}": "v" * 1000 for i in range(500)})
    assert fn.post(encode(doc)).status_code == 200
    messages = sink.messages()
    assert sorted(m.flavour for m in messages) == ["chat", "generic", "slack"]
    for message in messages:
        assert len(json.dumps(message.body)) < 16_000, message.flavour
    generic = sink.messages("generic")[0].body
    assert generic["data"]["summary"].startswith("sss") and generic["data"]["summary"].endswith("…")


def test_markup_from_incident_fields_is_escaped(load_function, sink):
    fn = load_function("notify")
    doc = incident("0.n-markup", instance_id="1234567890", labels={"team": "web"})
    raw = doc["incident"]
    raw["policy_name"] = "<!channel> <users/all> wake up"
    raw["summary"] = "see <https://evil.example|the console> & <@U123>"
    raw["url"] = "https://console.cloud.google.com/x|<!here>"
    assert fn.post(encode(doc)).status_code == 200
    for flavour in ("slack", "chat"):
        body = json.dumps(sink.messages(flavour)[0].body)
        for markup in ("<!channel>", "<users/all>", "<https://evil.example|", "<@U123>", "<!here>", "|<"):
            assert markup not in body, (flavour, markup)
    slack = sink.messages("slack")[0].body
    assert "&lt;!channel&gt;" in slack["text"]
    assert (
        "<https://console.cloud.google.com/x%7C%3C%21here%3E|Open in Cloud Console>"
        in (slack["blocks"][0]["text"]["text"])
    )


@pytest.mark.parametrize("value", ["²", "١٢"])
def test_a_unicode_digit_epoch_is_malformed_and_acknowledged(load_function, sink, value):
    fn = load_function("notify")
    doc = incident("0.n-digit", instance_id="1234567890", labels={"team": "web"})
    doc["incident"]["started_at"] = value
    assert fn.post(encode(doc)).status_code == 200
    (decision,) = fn.decisions()
    assert (decision["reason"], decision["severity"]) == ("malformed", "WARNING")
    assert sink.attempts == 0
