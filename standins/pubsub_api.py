"""A local gRPC Pub/Sub Publisher endpoint, plus push delivery as binary-mode CloudEvents.

The real google-cloud-pubsub PublisherClient talks to it through PUBSUB_EMULATOR_HOST (the
`emulator_host` property gives the value). Implemented: CreateTopic, GetTopic, UpdateTopic (labels),
ListTopics, DeleteTopic and Publish, with Pub/Sub's status codes. Published messages are recorded; with push
targets registered for a topic, each message is POSTed to them as a
`google.cloud.pubsub.topic.v1.messagePublished` CloudEvent in binary mode (ce-* headers), the way
Eventarc delivers to a gen2 function, and retried with backoff on non-2xx (bounded).

CLI:  python -m standins.pubsub_api [--port N] [--topic projects/P/topics/T] [--push TOPIC=URL ...]
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import queue
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

import grpc
from google.protobuf import empty_pb2
from google.pubsub_v1.types import pubsub as types

from standins.serving import GrpcStandin, serve_until_signal

PUBSUB_EVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
_TOPIC = re.compile(
    r"projects/(?P<project>[a-z][a-z0-9-]{4,28}[a-z0-9])/topics/(?P<topic>[A-Za-z][\w.~+%-]{2,254})"
)


@dataclass(frozen=True)
class PublishedMessage:
    topic: str
    message_id: str
    data: bytes
    attributes: dict[str, str]
    publish_time: str
    ordering_key: str = ""


@dataclass
class Delivery:
    """One message pushed to one target, with the HTTP status of every attempt (0 = no answer)."""

    topic: str
    message_id: str
    url: str
    statuses: list[int] = field(default_factory=list)
    delivered: bool = False
    finished: bool = False


def source_of(topic: str) -> str:
    """The CloudEvent source of a topic, as Eventarc sets it."""
    return f"//pubsub.googleapis.com/{topic}"


def binary_cloudevent(
    topic: str,
    message_id: str,
    data: bytes,
    attributes: Mapping[str, str] | None = None,
    publish_time: str | None = None,
    subscription: str = "",
) -> tuple[dict[str, str], bytes]:
    """Headers and body of a binary-mode messagePublished CloudEvent carrying one message."""
    when = publish_time or datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    message: dict[str, Any] = {
        "data": base64.b64encode(data).decode(),
        "messageId": message_id,
        "message_id": message_id,
        "publishTime": when,
        "publish_time": when,
    }
    if attributes:
        message["attributes"] = dict(attributes)
    body = {
        "message": message,
        "subscription": subscription or topic.replace("/topics/", "/subscriptions/") + "-push",
    }
    headers = {
        "ce-specversion": "1.0",
        "ce-id": message_id,
        "ce-source": source_of(topic),
        "ce-type": PUBSUB_EVENT_TYPE,
        "ce-time": when,
        "Content-Type": "application/json",
    }
    return headers, json.dumps(body).encode()


class LocalPubsub(GrpcStandin):
    """The Publisher service on 127.0.0.1 (gRPC, insecure) with push delivery to HTTP targets."""

    name = "pubsub-api"

    def __init__(
        self,
        port: int = 0,
        max_attempts: int = 5,
        retry_delay: float = 0.1,
        max_retry_delay: float = 2.0,
        push_timeout: float = 30.0,
    ) -> None:
        super().__init__("127.0.0.1", port)
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.push_timeout = push_timeout
        self._lock = threading.Condition()
        self._topics: dict[str, dict[str, str]] = {}  # name -> labels
        self._messages: list[PublishedMessage] = []
        self._push: dict[str, list[tuple[str, str]]] = {}  # topic -> [(url, subscription)]
        self._deliveries: list[Delivery] = []
        self._ids = itertools.count(int(time.time()) * 1000)
        self._queue: queue.Queue[tuple[PublishedMessage, Delivery, str] | None] = queue.Queue()
        self._worker: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    def _services(self) -> dict[str, dict[str, grpc.RpcMethodHandler]]:
        def unary(fn: Any, request: Any, response: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=request.deserialize, response_serializer=response
            )

        handlers = {
            "CreateTopic": unary(self._create_topic, types.Topic, types.Topic.serialize),
            "GetTopic": unary(self._get_topic, types.GetTopicRequest, types.Topic.serialize),
            "UpdateTopic": unary(self._update_topic, types.UpdateTopicRequest, types.Topic.serialize),
            "ListTopics": unary(
                self._list_topics, types.ListTopicsRequest, types.ListTopicsResponse.serialize
            ),
            "DeleteTopic": unary(
                self._delete_topic, types.DeleteTopicRequest, empty_pb2.Empty.SerializeToString
            ),
            "Publish": unary(self._publish, types.PublishRequest, types.PublishResponse.serialize),
        }
        return {"google.pubsub.v1.Publisher": handlers}

    def start(self) -> Self:
        super().start()
        self._worker = threading.Thread(target=self._deliver_loop, name="pubsub-push", daemon=True)
        self._worker.start()
        return self

    def stop(self) -> None:
        super().stop()
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=5)
            self._worker = None

    @property
    def emulator_host(self) -> str:
        """The value for PUBSUB_EMULATOR_HOST."""
        return self.endpoint

    # --- configuration and inspection --------------------------------------------------------------

    def create_topic(self, topic: str) -> None:
        """Create a topic without a client (setup for tests and the demo)."""
        if not _TOPIC.fullmatch(topic):
            raise ValueError(f"bad topic name {topic!r}")
        with self._lock:
            self._topics.setdefault(topic, {})

    def add_push(self, topic: str, url: str, subscription: str = "") -> None:
        """Deliver every later message of `topic` to `url` as a CloudEvent (like a push subscription)."""
        sub = (
            subscription
            or topic.replace("/topics/", "/subscriptions/") + f"-push-{len(self._push.get(topic, []))}"
        )
        with self._lock:
            self._push.setdefault(topic, []).append((url, sub))

    def messages(self, topic: str | None = None) -> list[PublishedMessage]:
        with self._lock:
            return [m for m in self._messages if topic is None or m.topic == topic]

    def deliveries(self, topic: str | None = None) -> list[Delivery]:
        with self._lock:
            return [d for d in self._deliveries if topic is None or d.topic == topic]

    def wait_messages(
        self, count: int, topic: str | None = None, timeout: float = 10.0
    ) -> list[PublishedMessage]:
        with self._lock:
            self._lock.wait_for(
                lambda: len([m for m in self._messages if topic is None or m.topic == topic]) >= count,
                timeout,
            )
        return self.messages(topic)

    def wait_deliveries(
        self,
        count: int,
        topic: str | None = None,
        timeout: float = 30.0,
        message_ids: Collection[str] | None = None,
    ) -> list[Delivery]:
        """Block until `count` deliveries (of `message_ids`, if given) have finished, or the timeout."""

        def matching() -> list[Delivery]:
            return [
                d
                for d in self._deliveries
                if (topic is None or d.topic == topic)
                and (message_ids is None or d.message_id in message_ids)
            ]

        with self._lock:
            self._lock.wait_for(lambda: len([d for d in matching() if d.finished]) >= count, timeout)
            return matching()

    def inject(self, topic: str, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        """Publish without a client (what Monitoring's notification channel does); returns the id."""
        with self._lock:
            if topic not in self._topics:
                raise KeyError(f"no topic {topic}")
            return self._accept(topic, [(data, dict(attributes or {}), "")])[0]

    # --- gRPC methods ------------------------------------------------------------------------------

    def _create_topic(self, request: types.Topic, context: grpc.ServicerContext) -> types.Topic:
        if not _TOPIC.fullmatch(request.name):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid [topics] name: ({request.name})")
        with self._lock:
            if request.name in self._topics:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "Topic already exists")
            self._topics[request.name] = dict(request.labels)
        return types.Topic(name=request.name, labels=dict(request.labels))

    def _get_topic(self, request: types.GetTopicRequest, context: grpc.ServicerContext) -> types.Topic:
        with self._lock:
            if request.topic not in self._topics:
                context.abort(grpc.StatusCode.NOT_FOUND, "Topic not found")
            return types.Topic(name=request.topic, labels=self._topics[request.topic])

    def _update_topic(self, request: types.UpdateTopicRequest, context: grpc.ServicerContext) -> types.Topic:
        paths = list(request.update_mask.paths)
        if not paths:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "The update_mask in the UpdateTopicRequest must be set"
            )
        unsupported = [p for p in paths if p != "labels"]
        if unsupported:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Unsupported update_mask path(s): {unsupported}")
        with self._lock:
            if request.topic.name not in self._topics:
                context.abort(grpc.StatusCode.NOT_FOUND, "Topic not found")
            self._topics[request.topic.name] = dict(request.topic.labels)
            return types.Topic(name=request.topic.name, labels=self._topics[request.topic.name])

    def _list_topics(
        self, request: types.ListTopicsRequest, context: grpc.ServicerContext
    ) -> types.ListTopicsResponse:
        prefix = request.project.rstrip("/") + "/topics/"
        with self._lock:
            names = sorted(t for t in self._topics if t.startswith(prefix))
        return types.ListTopicsResponse(topics=[types.Topic(name=n) for n in names])

    def _delete_topic(
        self, request: types.DeleteTopicRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        with self._lock:
            if self._topics.pop(request.topic, None) is None:
                context.abort(grpc.StatusCode.NOT_FOUND, "Topic not found")
            self._push.pop(request.topic, None)
        return empty_pb2.Empty()

    def _publish(self, request: types.PublishRequest, context: grpc.ServicerContext) -> types.PublishResponse:
        if not request.messages:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "At least one message must be provided")
        batch = []
        for message in request.messages:
            if not message.data and not message.attributes:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "Some messages contain no data and no attributes"
                )
            batch.append((bytes(message.data), dict(message.attributes), message.ordering_key))
        with self._lock:
            if request.topic not in self._topics:
                context.abort(grpc.StatusCode.NOT_FOUND, "Topic not found")
            ids = self._accept(request.topic, batch)
        return types.PublishResponse(message_ids=ids)

    def _accept(self, topic: str, batch: list[tuple[bytes, dict[str, str], str]]) -> list[str]:
        """Record messages and queue their pushes; called with the lock held."""
        ids = []
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        for data, attributes, ordering_key in batch:
            message = PublishedMessage(topic, str(next(self._ids)), data, attributes, now, ordering_key)
            self._messages.append(message)
            ids.append(message.message_id)
            for url, subscription in self._push.get(topic, []):
                delivery = Delivery(topic, message.message_id, url)
                self._deliveries.append(delivery)
                self._queue.put((message, delivery, subscription))
        self._lock.notify_all()
        return ids

    # --- push delivery -----------------------------------------------------------------------------

    def _deliver_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            message, delivery, subscription = item
            headers, body = binary_cloudevent(
                message.topic,
                message.message_id,
                message.data,
                message.attributes,
                message.publish_time,
                subscription,
            )
            delay = self.retry_delay
            for attempt in range(self.max_attempts):
                status = self._post(delivery.url, headers, body)
                with self._lock:
                    delivery.statuses.append(status)
                    if 200 <= status < 300:
                        delivery.delivered = True
                if delivery.delivered or attempt == self.max_attempts - 1:
                    break
                time.sleep(delay)
                delay = min(delay * 2, self.max_retry_delay)
            with self._lock:
                delivery.finished = True
                self._lock.notify_all()

    def _post(self, url: str, headers: dict[str, str], body: bytes) -> int:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 - local targets
        try:
            with urllib.request.urlopen(request, timeout=self.push_timeout) as response:  # noqa: S310
                response.read()
                return int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m standins.pubsub_api", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument(
        "--topic", action="append", default=[], help="create this topic (projects/P/topics/T)"
    )
    parser.add_argument(
        "--push", action="append", default=[], help="TOPIC=URL: push the topic's messages to URL"
    )
    args = parser.parse_args(argv)
    api = LocalPubsub(port=args.port)
    try:
        for topic in args.topic:
            api.create_topic(topic)
        for spec in args.push:
            topic, sep, url = spec.partition("=")
            if not sep or not url.startswith(("http://127.0.0.1", "http://localhost")):
                parser.error(f"--push {spec!r}: expected TOPIC=http://127.0.0.1:PORT/...")
            api.create_topic(topic)
            api.add_push(topic, url)
    except ValueError as exc:
        parser.error(str(exc))
    return serve_until_signal(
        parser,
        api.start,
        lambda api: f"pubsub-api listening; export PUBSUB_EMULATOR_HOST={api.emulator_host}",
    )


if __name__ == "__main__":
    raise SystemExit(main())
