"""Fleet events from the operator's side: deploy, rollout, rollback and lock results on the events topic.

The functions publish heal/scale results there and `notify` posts every event; the same contract
(functions/fleet_contract.FleetEvent) carries what `fab` does, so a rollout is announced where an
autoheal is. Publishing is best effort: a topic that cannot be reached is a warning, never a failed
rollout (the journal and the history stay the record).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from functions import fleet_contract as contract

TIMEOUT = 10.0


@dataclass
class EventPublisher:
    """One fleet's events topic. `endpoint` = a local Pub/Sub stand-in (host:port), else the real API."""

    project: str
    topic: str  # short name or projects/P/topics/T
    fleet: str
    zone: str = ""
    mig: str = ""
    endpoint: str | None = None
    warn: Callable[[str], None] = lambda _text: None
    _client: Any = field(default=None, repr=False)
    published: list[str] = field(default_factory=list)  # message ids, for the caller's report
    unreachable: bool = False  # after one failure the run's other events are skipped (one wait, one warning)

    @property
    def topic_path(self) -> str:
        return (
            self.topic
            if self.topic.startswith("projects/")
            else f"projects/{self.project}/topics/{self.topic}"
        )

    def _publisher(self) -> Any:
        if self._client is None:
            from google.cloud.pubsub_v1 import PublisherClient

            endpoint = self.endpoint  # unset: the client itself honours PUBSUB_EMULATOR_HOST
            if endpoint:
                import grpc
                from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

                channel = grpc.insecure_channel(endpoint.removeprefix("http://"))
                self._client = PublisherClient(transport=PublisherGrpcTransport(channel=channel))
            else:
                self._client = PublisherClient()
        return self._client

    def event(self, kind: str, action: str, result: str, **facts: str) -> contract.FleetEvent:
        return contract.FleetEvent(
            kind=kind,
            action=action,
            result=result,
            fleet=self.fleet,
            project=self.project,
            zone=self.zone,
            mig=self.mig,
            time=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **facts,
        )

    def publish(self, kind: str, action: str, result: str, **facts: str) -> str | None:
        """Publish one event; returns its message id, or None (warned) when the topic is unreachable."""
        event = self.event(kind, action, result, **{k: v[:1000] for k, v in facts.items()})
        if self.unreachable:
            return None
        data, attributes = event.to_message()
        try:
            message_id = str(self._publisher().publish(self.topic_path, data, **attributes).result(TIMEOUT))
        except Exception as exc:  # any client/transport failure: the operation itself goes on
            self.unreachable = True
            self.warn(
                f"fleet event {kind}/{action}/{result} not published to {self.topic_path} "
                f"(later events of this run are skipped): {exc}"[:400]
            )
            return None
        self.published.append(message_id)
        return message_id
