"""The metadata server stand-in, read by the real google-auth and by plain HTTP as an on-VM agent would:
it must answer what GCE answers (and refuse what GCE refuses), or the agent is tested against a fiction."""

from __future__ import annotations

import datetime
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import google.auth.compute_engine
import pytest
from google.auth.compute_engine import _metadata
from google.auth.transport.requests import Request

from standins.errors import StandinError
from standins.metadata_server import MAX_VALUE, GuestAttributes, Identity, MetadataServer

APP1 = Identity(
    project_id="demo-project",
    numeric_project_id="123456789012",
    zone="europe-west1-b",
    name="app-1",
    id="4000000000000000001",
    attributes={"fleet-name": "local", "fleet-roles": "app,beat", "enable-guest-attributes": "TRUE"},
    project_attributes={"fleet-store": "gs://bucket/fleets/local"},
    service_account_email="fleet-vm@demo-project.iam.gserviceaccount.com",
)


@pytest.fixture
def store() -> GuestAttributes:
    return GuestAttributes()


@pytest.fixture
def server(store: GuestAttributes) -> Iterator[MetadataServer]:
    known = {"127.0.0.1": APP1}
    with MetadataServer(known.get, store, "127.0.0.1", 0) as srv:
        yield srv


def call(
    srv: MetadataServer,
    path: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], str]:
    """One request without following redirects: (status, headers lower-cased, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        conn.request(method, path, body=body, headers={"Metadata-Flavor": "Google", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode()
    finally:
        conn.close()


def test_real_google_auth_reads_identity_metadata_and_a_token(
    server: MetadataServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = f"127.0.0.1:{server.port}"
    monkeypatch.setenv("GCE_METADATA_HOST", host)
    monkeypatch.setenv("GCE_METADATA_IP", host)
    monkeypatch.setattr(_metadata, "_GCE_METADATA_HOST", host)  # google-auth reads it once, on import
    request = Request()

    assert _metadata.ping(request, timeout=2, retry_count=1)
    assert _metadata.get(request, "instance/name") == "app-1"
    assert _metadata.get(request, "instance/zone") == "projects/123456789012/zones/europe-west1-b"
    assert _metadata.get(request, "instance/id") == "4000000000000000001"
    assert _metadata.get(request, "instance/attributes/fleet-roles") == "app,beat"
    assert _metadata.get(request, "instance/attributes/", recursive=True)["fleet-name"] == "local"
    assert _metadata.get(request, "project/attributes/fleet-store") == "gs://bucket/fleets/local"
    assert _metadata.get_project_id(request) == "demo-project"
    assert _metadata.get(request, "instance/attributes/absent", return_none_for_not_found_error=True) is None

    creds = google.auth.compute_engine.Credentials()
    creds.refresh(request)
    assert creds.service_account_email == "fleet-vm@demo-project.iam.gserviceaccount.com"
    assert creds.token and creds.token.startswith("ya29.")
    assert server.token_owner(creds.token) == creds.service_account_email
    left = creds.expiry - datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    assert datetime.timedelta(minutes=55) < left <= datetime.timedelta(hours=1)


def test_token_json_is_what_agents_parse(server: MetadataServer) -> None:
    status, headers, body = call(server, "/computeMetadata/v1/instance/service-accounts/default/token")
    assert status == 200 and headers["content-type"] == "application/json"
    token = json.loads(body)
    assert token["token_type"] == "Bearer" and 3500 < token["expires_in"] <= 3599
    # The same account by email gets the same (cached) token; a stranger's token is nobody's.
    email = "fleet-vm@demo-project.iam.gserviceaccount.com"
    again = json.loads(call(server, f"/computeMetadata/v1/instance/service-accounts/{email}/token")[2])
    assert again["access_token"] == token["access_token"]
    assert server.token_owner("ya29.made-up") is None


def test_guest_attribute_put_then_get_round_trip(server: MetadataServer, store: GuestAttributes) -> None:
    url = f"{server.url}/computeMetadata/v1/instance/guest-attributes/fleet/release"
    put = urllib.request.Request(url, data=b"r-0123abcd", method="PUT", headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(put, timeout=5) as resp:
        assert resp.status == 200
    get = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(get, timeout=5) as resp:
        assert resp.read() == b"r-0123abcd"
    call(server, "/computeMetadata/v1/instance/guest-attributes/fleet/health", method="PUT", body=b"ok")
    # The store the Compute stand-in shares sees them, keyed as getGuestAttributes reports them.
    assert store.list("app-1", "fleet") == {"fleet/health": "ok", "fleet/release": "r-0123abcd"}

    base = "/computeMetadata/v1/instance/guest-attributes/"
    assert call(server, base)[2] == "fleet/\n"
    assert call(server, base + "fleet/")[2] == "health\nrelease\n"
    assert json.loads(call(server, base + "fleet/?recursive=true")[2]) == {
        "health": "ok",
        "release": "r-0123abcd",
    }
    assert call(server, base + "other/")[0] == 404
    assert call(server, base + "fleet/health", method="DELETE")[0] == 200
    assert call(server, base + "fleet/health")[0] == 404


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("fleet/bad.key", b"x"),
        ("fl%20eet/key", b"x"),
        ("fleet/key/extra", b"x"),
        ("fleet/key", b"x" * (MAX_VALUE + 1)),
    ],
)
def test_guest_attributes_refuse_bad_names_and_oversized_values(
    server: MetadataServer, store: GuestAttributes, path: str, body: bytes
) -> None:
    status, _, text = call(
        server, f"/computeMetadata/v1/instance/guest-attributes/{path}", method="PUT", body=body
    )
    assert status == 400, text
    assert store.list("app-1") == {}


def test_guest_attributes_need_enable_guest_attributes(store: GuestAttributes) -> None:
    off = Identity(**{**APP1.__dict__, "attributes": {"fleet-name": "local"}})
    with MetadataServer(lambda ip: off, store) as srv:
        status, _, text = call(
            srv, "/computeMetadata/v1/instance/guest-attributes/fleet/x", method="PUT", body=b"1"
        )
    assert status == 403 and "enable-guest-attributes" in text
    assert store.list("app-1") == {}


def test_missing_flavor_header_or_a_proxy_is_forbidden(server: MetadataServer) -> None:
    url = f"{server.url}/computeMetadata/v1/instance/name"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(url, timeout=5)
    assert missing.value.code == 403
    assert call(server, "/computeMetadata/v1/instance/name", headers={"Metadata-Flavor": "google"})[0] == 403
    status, _, _ = call(server, "/computeMetadata/v1/instance/name", headers={"X-Forwarded-For": "10.0.0.9"})
    assert status == 403
    assert call(server, "/computeMetadata/v1/instance/name")[0] == 200


def test_unknown_caller_is_no_vm(store: GuestAttributes) -> None:
    with MetadataServer(lambda ip: None, store) as srv:
        assert call(srv, "/computeMetadata/v1/instance/name")[0] == 404
        assert call(srv, "/")[0] == 404
        status, _, _ = call(
            srv, "/computeMetadata/v1/instance/guest-attributes/fleet/x", method="PUT", body=b"1"
        )
    assert status == 404
    assert store.list("app-1") == {}


def test_recursive_json_has_the_real_shape(server: MetadataServer) -> None:
    status, headers, body = call(server, "/computeMetadata/v1/?recursive=true")
    assert status == 200 and headers["content-type"] == "application/json"
    assert headers["metadata-flavor"] == "Google"
    doc = json.loads(body)
    email = "fleet-vm@demo-project.iam.gserviceaccount.com"
    account = {
        "aliases": ["default"],
        "email": email,
        "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
    }
    assert doc["instance"] == {
        "attributes": APP1.attributes,  # user keys are not camelCased
        "hostname": "app-1.europe-west1-b.c.demo-project.internal",
        "id": 4000000000000000001,
        "name": "app-1",
        "serviceAccounts": {"default": account, email: account},  # no token in a recursive answer
        "zone": "projects/123456789012/zones/europe-west1-b",
    }
    assert doc["project"] == {
        "attributes": {"fleet-store": "gs://bucket/fleets/local"},
        "numericProjectId": 123456789012,
        "projectId": "demo-project",
    }


def test_listings_alt_forms_and_redirects(server: MetadataServer) -> None:
    v1 = "/computeMetadata/v1/"
    status, headers, body = call(server, "/")
    assert (status, headers["metadata-flavor"], body) == (200, "Google", "computeMetadata/\n")
    assert call(server, v1)[2] == "instance/\nproject/\nuniverse/\n"
    assert call(server, v1 + "instance/")[2] == "attributes/\nhostname\nid\nname\nservice-accounts/\nzone\n"
    assert call(server, v1 + "instance/service-accounts/default/")[2] == "aliases\nemail\nscopes\ntoken\n"
    assert (
        call(server, v1 + "instance/attributes/")[2] == "enable-guest-attributes\nfleet-name\nfleet-roles\n"
    )
    status, headers, _ = call(server, v1 + "instance/attributes")
    assert (status, headers["location"]) == (301, v1 + "instance/attributes/")
    assert call(server, v1 + "instance/name/")[0] == 404
    assert call(server, v1 + "instance/name?alt=json")[2] == '"app-1"'
    assert call(server, v1 + "instance/id?alt=json")[2] == "4000000000000000001"
    assert call(server, v1 + "project/attributes/?recursive=true&alt=text")[2] == (
        "fleet-store gs://bucket/fleets/local\n"
    )
    assert call(server, v1 + "instance/name?alt=xml")[0] == 400
    assert call(server, v1 + "instance/name", method="PUT", body=b"x")[0] == 405


def test_guest_attribute_store_persists_and_refuses_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "guest.json"
    first = GuestAttributes(path)
    first.put("app-1", "fleet", "version", "1.1.0")
    first.put("app-2", "hostkeys", "ssh-ed25519", "AAAA")
    again = GuestAttributes(path)
    assert again.get("app-1", "fleet", "version") == "1.1.0"
    assert again.list("app-2") == {"hostkeys/ssh-ed25519": "AAAA"}
    again.forget("app-2")
    assert GuestAttributes(path).list("app-2") == {}
    with pytest.raises(StandinError, match="invalid guest attribute key"):
        again.put("app-1", "fleet", "a/b", "x")

    path.write_text('{"app-1": ["not", "a", "map"]}')
    with pytest.raises(StandinError, match="guest attributes file"):
        GuestAttributes(path)


def test_wait_for_change_returns_on_a_change_or_at_the_timeout(
    server: MetadataServer, store: GuestAttributes
) -> None:
    path = "/computeMetadata/v1/instance/guest-attributes/fleet/health"
    store.put("app-1", "fleet", "health", "starting")
    _, headers, _ = call(server, path)
    started = time.monotonic()
    timer = threading.Timer(0.3, store.put, ("app-1", "fleet", "health", "ok"))
    timer.start()
    status, _, body = call(server, f"{path}?wait_for_change=true&last_etag={headers['etag']}&timeout_sec=5")
    assert (status, body) == (200, "ok")
    assert 0.25 < time.monotonic() - started < 4
    started = time.monotonic()
    status, _, body = call(server, f"{path}?wait_for_change=true&timeout_sec=0.3")
    assert (status, body) == (200, "ok") and time.monotonic() - started >= 0.3
    # A stale last_etag answers at once.
    started = time.monotonic()
    assert call(server, f"{path}?wait_for_change=true&last_etag=0000&timeout_sec=5")[2] == "ok"
    assert time.monotonic() - started < 1


def test_a_failing_identify_is_a_500_not_a_dropped_connection(store: GuestAttributes) -> None:
    def broken(ip: str) -> Identity | None:
        raise RuntimeError("container table unreadable")

    with MetadataServer(broken, store) as srv:
        status, _, body = call(srv, "/computeMetadata/v1/instance/name")
    assert status == 500 and "container table unreadable" in body


def test_tokens_kept_in_a_file_outlive_a_restart(tmp_path: Path) -> None:
    """A VM's dockerd holds its token for an hour: a restarted local endpoint must still know it."""
    path = tmp_path / "tokens.json"
    first = MetadataServer(lambda ip: None, GuestAttributes(), token_file=path)
    token, seconds = first.token("vm@p.iam.gserviceaccount.com")
    assert seconds > 3000 and oct(path.stat().st_mode & 0o777) == "0o600"
    again = MetadataServer(lambda ip: None, GuestAttributes(), token_file=path)
    assert again.token_owner(token) == "vm@p.iam.gserviceaccount.com"
    assert again.token("vm@p.iam.gserviceaccount.com")[0] == token  # the same token, not a second one
    assert MetadataServer(lambda ip: None, GuestAttributes()).token_owner(token) is None  # no file: forgotten
