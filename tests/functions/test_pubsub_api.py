"""The local Pub/Sub Publisher endpoint, exercised with the real google-cloud-pubsub client."""

from __future__ import annotations

import base64

import pytest
from google.api_core import exceptions
from google.cloud import pubsub_v1

from standins.pubsub_api import LocalPubsub
from tests.functions.conftest import PROJECT, PUBSUB_TYPE

pytestmark = pytest.mark.functions
TOPIC = f"projects/{PROJECT}/topics/t-events"


@pytest.fixture
def publisher(monkeypatch):
    api = LocalPubsub(max_attempts=3, retry_delay=0.02, max_retry_delay=0.05).start()
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", api.emulator_host)
    client = pubsub_v1.PublisherClient()
    yield api, client
    client.stop()
    api.stop()


def test_topic_lifecycle(publisher):
    _, client = publisher
    client.create_topic(name=TOPIC)
    with pytest.raises(exceptions.AlreadyExists):
        client.create_topic(name=TOPIC)
    assert client.get_topic(topic=TOPIC).name == TOPIC
    assert [t.name for t in client.list_topics(project=f"projects/{PROJECT}")] == [TOPIC]
    client.delete_topic(topic=TOPIC)
    with pytest.raises(exceptions.NotFound):
        client.get_topic(topic=TOPIC)
    with pytest.raises(exceptions.InvalidArgument):
        client.create_topic(name="topics/bad")


def test_publish_records_messages_with_attributes(publisher):
    api, client = publisher
    client.create_topic(name=TOPIC)
    ids = [client.publish(TOPIC, f"m{i}".encode(), kind="heal").result(timeout=10) for i in range(3)]
    messages = api.messages(TOPIC)
    assert [m.message_id for m in messages] == ids
    assert [(m.data, m.attributes) for m in messages] == [
        (f"m{i}".encode(), {"kind": "heal"}) for i in range(3)
    ]
    with pytest.raises(exceptions.NotFound):
        client.publish(f"projects/{PROJECT}/topics/missing", b"x").result(timeout=10)


def test_push_is_a_binary_cloudevent_retried_on_errors(publisher, sink):
    api, client = publisher
    client.create_topic(name=TOPIC)
    api.add_push(TOPIC, sink.generic_url())
    sink.fail_next(2, status=503)
    message_id = client.publish(TOPIC, b'{"hello": 1}', kind="heal").result(timeout=10)
    (delivery,) = api.wait_deliveries(1, TOPIC)
    assert (delivery.statuses, delivery.delivered) == ([503, 503, 200], True)
    (received,) = sink.messages()
    assert received.headers["ce-type"] == PUBSUB_TYPE
    assert received.headers["ce-source"] == f"//pubsub.googleapis.com/{TOPIC}"
    assert received.headers["ce-id"] == message_id and received.headers["ce-specversion"] == "1.0"
    assert base64.b64decode(received.body["message"]["data"]) == b'{"hello": 1}'
    assert received.body["message"]["attributes"] == {"kind": "heal"}


def test_push_gives_up_after_the_bounded_attempts(publisher, sink):
    api, client = publisher
    client.create_topic(name=TOPIC)
    api.add_push(TOPIC, sink.generic_url())
    sink.fail_next(10, status=500)
    client.publish(TOPIC, b"x").result(timeout=10)
    (delivery,) = api.wait_deliveries(1, TOPIC)
    assert (delivery.statuses, delivery.delivered) == ([500, 500, 500], False)
    assert sink.attempts == 3
