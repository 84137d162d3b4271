"""The local Cloud Logging (standins/logging_api.py) through the real google-cloud-logging GAPIC client:
writes with request defaults, the filter subset by instance and release, paging and order, the errors
of the real API, and TLS with the local CA plus the metadata server's token as Docker's gcplogs uses it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.api import monitored_resource_pb2
from google.api_core import exceptions
from google.cloud.logging_v2.services.logging_service_v2 import LoggingServiceV2Client
from google.cloud.logging_v2.services.logging_service_v2.transports import LoggingServiceV2GrpcTransport
from google.cloud.logging_v2.types import LogEntry
from google.protobuf import struct_pb2

from standins.logging_api import API_HOST, LocalLogging, log_id, make_tls, parse_filter

PROJECT = "proj-1"
WORKDIR = "/opt/fleet/dify/releases/"


def _client(channel: grpc.Channel) -> LoggingServiceV2Client:
    return LoggingServiceV2Client(transport=LoggingServiceV2GrpcTransport(channel=channel))


@pytest.fixture
def sink() -> Iterator[LocalLogging]:
    with LocalLogging() as server:
        yield server


@pytest.fixture
def client(sink: LocalLogging) -> Iterator[LoggingServiceV2Client]:
    channel = grpc.insecure_channel(sink.endpoint)
    yield _client(channel)
    channel.close()


def _gce(instance_id: str) -> monitored_resource_pb2.MonitoredResource:
    return monitored_resource_pb2.MonitoredResource(
        type="gce_instance", labels={"instance_id": instance_id, "zone": "europe-west1-b"}
    )


def _docker_entry(message: str, service: str, release: str) -> LogEntry:
    """What gcplogs sends: the container's labels under jsonPayload.container.metadata."""
    payload = struct_pb2.Struct()
    payload.update(
        {
            "message": message,
            "container": {
                "name": f"/dify-{service}-1",
                "metadata": {
                    "com.docker.compose.service": service,
                    "com.docker.compose.project.working_dir": WORKDIR + release,
                },
            },
        }
    )
    return LogEntry(json_payload=payload)


def _write(client: LoggingServiceV2Client, instance_id: str, *entries: LogEntry) -> None:
    client.write_log_entries(
        log_name=f"projects/{PROJECT}/logs/gcplogs-docker-driver",
        resource=_gce(instance_id),  # type: ignore[arg-type]
        labels={"origin": "test"},
        entries=list(entries),
    )


def _messages(entries: list[LogEntry]) -> list[str]:
    return [e.json_payload["message"] for e in entries]


def test_a_line_is_found_by_instance_service_and_release(
    sink: LocalLogging, client: LoggingServiceV2Client
) -> None:
    _write(client, "111", _docker_entry("GET /health 200", "nginx", "aaa111"))
    _write(client, "111", _docker_entry("GET /health 200 (old)", "nginx", "bbb222"))
    _write(client, "222", _docker_entry("GET /health 200 (other vm)", "nginx", "aaa111"))
    _write(client, "111", _docker_entry("worker ready", "worker", "aaa111"))
    query = (
        'resource.type="gce_instance" AND resource.labels.instance_id="111" AND '
        'jsonPayload.container.metadata."com.docker.compose.service"="nginx" AND '
        'jsonPayload.container.metadata."com.docker.compose.project.working_dir":"aaa111"'
    )
    found = list(client.list_log_entries(resource_names=[f"projects/{PROJECT}"], filter=query))
    assert _messages(found) == ["GET /health 200"]
    entry = found[0]
    # request defaults land on the entry, as the API merges them
    assert entry.log_name == f"projects/{PROJECT}/logs/gcplogs-docker-driver"
    assert dict(entry.resource.labels) == {"instance_id": "111", "zone": "europe-west1-b"}
    assert dict(entry.labels) == {"origin": "test"}
    assert entry.insert_id and entry.receive_timestamp
    # the in-process view answers the same filter, in the API's JSON form
    [doc] = sink.query(query)
    assert doc["jsonPayload"]["message"] == "GET /health 200" and log_id(doc) == "gcplogs-docker-driver"
    # snake_case paths work as camelCase ones do; another project sees nothing
    assert len(sink.query('json_payload.container.metadata."com.docker.compose.service"="worker"')) == 1
    assert list(client.list_log_entries(resource_names=["projects/other"], filter="")) == []


def test_paging_and_order(client: LoggingServiceV2Client) -> None:
    for i in range(5):
        _write(client, "111", _docker_entry(f"line {i}", "api", "aaa111"))
    pager = client.list_log_entries(
        request={"resource_names": [f"projects/{PROJECT}"], "page_size": 2, "order_by": "timestamp desc"}
    )
    pages = list(pager.pages)
    assert [len(p.entries) for p in pages] == [2, 2, 1]
    assert [m for p in pages for m in _messages(list(p.entries))] == [f"line {i}" for i in (4, 3, 2, 1, 0)]


def test_the_real_apis_errors(client: LoggingServiceV2Client, sink: LocalLogging) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="monitored resource"):
        client.write_log_entries(
            log_name=f"projects/{PROJECT}/logs/x", entries=[LogEntry(text_payload="no resource")]
        )
    with pytest.raises(exceptions.InvalidArgument, match="log_name"):
        client.write_log_entries(
            resource=_gce("1"),  # type: ignore[arg-type]
            entries=[LogEntry(text_payload="no log name")],
        )
    with pytest.raises(exceptions.InvalidArgument, match="at least one entry"):
        client.write_log_entries(log_name=f"projects/{PROJECT}/logs/x", resource=_gce("1"), entries=[])  # type: ignore[arg-type]
    # a filter the sink cannot evaluate is refused, never half-applied
    with pytest.raises(exceptions.InvalidArgument, match="unsupported filter clause"):
        list(client.list_log_entries(resource_names=[f"projects/{PROJECT}"], filter="severity>=ERROR"))
    with pytest.raises(exceptions.InvalidArgument, match="resource_names"):
        list(client.list_log_entries(resource_names=["projects/a", "projects/b"]))
    # dry_run checks and stores nothing
    client.write_log_entries(
        request={
            "log_name": f"projects/{PROJECT}/logs/x",
            "resource": _gce("1"),
            "entries": [LogEntry(text_payload="dry")],
            "dry_run": True,
        }
    )
    assert sink.entries() == []


def test_parse_filter_subset() -> None:
    [c1, c2] = parse_filter('resource.labels.instance_id="12" AND jsonPayload.a."b.c":"x\\"y"')
    assert c1.path == ("resource", "labels", "instance_id") and c1.op == "=" and c1.value == "12"
    assert c2.path == ("jsonPayload", "a", "b.c") and c2.op == ":" and c2.value == 'x"y'
    assert parse_filter("  ") == []
    for bad in ("a=b", 'a="b" OR c="d"', 'NOT a="b"', 'a>="1"'):
        with pytest.raises(ValueError):
            parse_filter(bad)


def test_tls_with_the_local_ca_and_the_vms_token(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    assert make_tls(tmp_path / "tls") == tls and tls.key.stat().st_mode & 0o777 == 0o600  # reused
    ca_before = tls.ca_cert.read_bytes()
    assert make_tls(tmp_path / "tls").ca_cert.read_bytes() == ca_before
    issued = {"ya29.local-good": "123-compute@developer.gserviceaccount.com"}
    with LocalLogging(tls=tls.server_pair(), token_owner=issued.get) as sink:
        creds = grpc.ssl_channel_credentials(root_certificates=tls.ca_cert.read_bytes())
        options = [("grpc.ssl_target_name_override", API_HOST)]

        def client(token: str | None) -> tuple[grpc.Channel, LoggingServiceV2Client]:
            channel_creds = (
                grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
                if token
                else creds
            )
            channel = grpc.secure_channel(sink.endpoint, channel_creds, options=options)
            return channel, _client(channel)

        for token in (None, "ya29.local-forged"):
            channel, anon = client(token)
            with pytest.raises(exceptions.Unauthenticated):
                _write(anon, "1", _docker_entry("refused", "api", "aaa111"))
            # reading is open to this machine
            assert list(anon.list_log_entries(resource_names=[f"projects/{PROJECT}"])) == []
            channel.close()
        channel, good = client("ya29.local-good")
        _write(good, "1", _docker_entry("accepted", "api", "aaa111"))
        channel.close()
        assert [e["jsonPayload"]["message"] for e in sink.entries()] == ["accepted"]
        # a client that does not trust the local CA cannot talk to it
        untrusted = grpc.secure_channel(sink.endpoint, grpc.ssl_channel_credentials(), options=options)
        with pytest.raises(exceptions.ServiceUnavailable):
            list(
                _client(untrusted).list_log_entries(
                    resource_names=[f"projects/{PROJECT}"], retry=None, timeout=5
                )
            )
        untrusted.close()
