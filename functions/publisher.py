"""Publish fleet events (heal/scale results) to the events topic with google-cloud-pubsub.

The client honours PUBSUB_EMULATOR_HOST, which is how tests point it at the local Publisher endpoint.
"""

from __future__ import annotations

from typing import Any

from fleet_contract import FleetEvent


def preload() -> None:
    """Do the import at cold start rather than during the first event."""
    from google.cloud.pubsub_v1 import PublisherClient  # noqa: F401


class Publisher:
    """One PublisherClient per function instance, created on first use."""

    def __init__(self, topic: str | None, timeout: float) -> None:
        self.topic = topic
        self.timeout = timeout
        self._client: Any = None

    def publish(self, event: FleetEvent) -> str | None:
        """Publish and wait for the message id (the instance may be throttled once we return)."""
        if not self.topic:
            return None
        if self._client is None:
            from google.cloud.pubsub_v1 import PublisherClient

            self._client = PublisherClient()
        data, attributes = event.to_message()
        future = self._client.publish(self.topic, data, **attributes)
        return str(future.result(timeout=self.timeout))
