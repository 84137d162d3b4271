"""The Secret Manager stand-in, checked with the real client library (REST transport) and with plain
urllib as the on-VM agent reads it."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import google_crc32c
import pytest
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import secretmanager_v1

from standins.secretmanager_api import LocalSecretManager

P = "projects/sm-test"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[LocalSecretManager]:
    with LocalSecretManager(state=tmp_path / "sm.json") as api:
        yield api


@pytest.fixture
def client(api: LocalSecretManager) -> Any:
    return secretmanager_v1.SecretManagerServiceClient(
        transport="rest", credentials=AnonymousCredentials(), client_options={"api_endpoint": api.url}
    )


def crc(data: bytes) -> int:
    return int(google_crc32c.value(data))


def add(client: Any, secret: str, data: bytes) -> Any:
    return client.add_secret_version(parent=secret, payload={"data": data, "data_crc32c": crc(data)})


def status_of(exc: gexc.GoogleAPICallError) -> str:
    assert exc.response is not None
    return str(exc.response.json()["error"]["status"])


def test_create_add_access_latest_and_numbered(client: Any) -> None:
    s = client.create_secret(parent=P, secret_id="db-password", secret={"replication": {"automatic": {}}})
    assert s.name == f"{P}/secrets/db-password"
    v1 = add(client, s.name, b"first")
    v2 = add(client, s.name, b"second")
    assert (v1.name, v2.name) == (f"{s.name}/versions/1", f"{s.name}/versions/2")
    assert v2.state == secretmanager_v1.SecretVersion.State.ENABLED
    latest = client.access_secret_version(name=f"{s.name}/versions/latest")
    assert latest.name == f"{s.name}/versions/2"  # the concrete version, not the alias
    assert latest.payload.data == b"second" and latest.payload.data_crc32c == crc(b"second")
    assert client.access_secret_version(name=f"{s.name}/versions/1").payload.data == b"first"
    assert [x.name for x in client.list_secrets(parent=P)] == [s.name]
    assert [x.name for x in client.list_secret_versions(parent=s.name)] == [v2.name, v1.name]
    assert client.get_secret_version(name=f"{s.name}/versions/latest").name == v2.name


def test_errors_have_googles_status(client: Any) -> None:
    s = client.create_secret(parent=P, secret_id="k", secret={"replication": {"automatic": {}}})
    with pytest.raises(gexc.Conflict) as exists:
        client.create_secret(parent=P, secret_id="k", secret={"replication": {"automatic": {}}})
    assert status_of(exists.value) == "ALREADY_EXISTS"
    with pytest.raises(gexc.NotFound):
        client.access_secret_version(name=f"{s.name}/versions/latest")  # no versions yet
    with pytest.raises(gexc.NotFound):
        client.access_secret_version(name=f"{P}/secrets/nope/versions/1")
    with pytest.raises(gexc.BadRequest) as bad_id:
        client.create_secret(parent=P, secret_id="bad.name", secret={"replication": {"automatic": {}}})
    assert status_of(bad_id.value) == "INVALID_ARGUMENT"


def test_disabled_and_destroyed_versions_cannot_be_read(client: Any) -> None:
    s = client.create_secret(parent=P, secret_id="k", secret={"replication": {"automatic": {}}})
    v = add(client, s.name, b"value")
    client.disable_secret_version(name=v.name)
    with pytest.raises(gexc.BadRequest) as disabled:
        client.access_secret_version(name=v.name)
    assert status_of(disabled.value) == "FAILED_PRECONDITION"
    assert "DISABLED" in disabled.value.message
    client.enable_secret_version(name=v.name)
    assert client.access_secret_version(name=v.name).payload.data == b"value"
    gone = client.destroy_secret_version(name=v.name)
    assert gone.state == secretmanager_v1.SecretVersion.State.DESTROYED
    with pytest.raises(gexc.BadRequest) as destroyed:
        client.access_secret_version(name=f"{s.name}/versions/latest")
    assert status_of(destroyed.value) == "FAILED_PRECONDITION"


def test_checksum_mismatch_is_refused(client: Any, api: LocalSecretManager) -> None:
    s = client.create_secret(parent=P, secret_id="k", secret={"replication": {"automatic": {}}})
    with pytest.raises(gexc.BadRequest) as err:
        client.add_secret_version(parent=s.name, payload={"data": b"value", "data_crc32c": crc(b"other")})
    assert "Checksum mismatch" in err.value.message
    assert list(client.list_secret_versions(parent=s.name)) == []


def test_a_restart_keeps_the_secrets(tmp_path: Path) -> None:
    state = tmp_path / "sm.json"
    with LocalSecretManager(state=state) as first:
        first.put("sm-test", "kept", "v1")
    assert state.stat().st_mode & 0o777 == 0o600
    with LocalSecretManager(state=state) as second:
        assert second.put("sm-test", "kept", "v2") == f"{P}/secrets/kept/versions/2"


def test_the_agent_reads_with_urllib_and_a_bearer_token(api: LocalSecretManager) -> None:
    name = api.put("sm-test", "agent-read", "s3cret")
    req = urllib.request.Request(f"{api.url}/v1/{name}:access", headers={"Authorization": "Bearer tok"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        body = json.load(resp)
    assert body["name"] == name
    data = base64.b64decode(body["payload"]["data"])
    assert data == b"s3cret" and int(body["payload"]["dataCrc32c"]) == crc(data)
    assert api.calls("versions.access")[-1].bearer
    missing = urllib.request.Request(f"{api.url}/v1/{P}/secrets/none/versions/latest:access")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(missing, timeout=5)
    assert err.value.code == 404
    assert json.load(err.value)["error"]["status"] == "NOT_FOUND"
