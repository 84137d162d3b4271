"""The agent's Google API clients against a small local HTTP server: paths, headers, retries with a
bound, token caching, and CRC32C as google-crc32c computes it."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import google_crc32c
import pytest

from fleet.agent import apis
from fleet.agent.http import Http, HttpError, Retry

Handler = Callable[[str, str, dict[str, str], bytes], tuple[int, bytes]]


class Server:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.answer: Handler = lambda m, p, h, b: (404, b"")
        outer = self

        class H(BaseHTTPRequestHandler):
            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.seen.append((self.command, self.path, headers, body))
                status, data = outer.answer(self.command, self.path, headers, body)
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    t = threading.Thread(target=s.httpd.serve_forever, daemon=True)
    t.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def quick(attempts: int = 3, budget: float = 30.0) -> Http:
    return Http(Retry(attempts=attempts, budget=budget, timeout=5, backoff=0.01), sleep=lambda s: None)


def test_metadata_paths_header_token_cache_and_guest_attributes(server: Server) -> None:
    now = [0.0]
    token_calls = []

    def answer(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        assert headers["metadata-flavor"] == "Google"
        if path == "/computeMetadata/v1/instance/service-accounts/default/token":
            token_calls.append(path)
            return 200, json.dumps({"access_token": f"tok{len(token_calls)}", "expires_in": 120}).encode()
        return {
            "/computeMetadata/v1/instance/attributes/fleet-name": (200, b"prod"),
            "/computeMetadata/v1/project/attributes/compose-fleet-lock": (200, b"{}"),
            "/computeMetadata/v1/instance/zone": (200, b"projects/123/zones/europe-west1-b"),
            "/computeMetadata/v1/instance/name": (200, b"prod-1"),
            "/computeMetadata/v1/instance/guest-attributes/fleet/release": (200, b""),
        }.get(path, (404, b"not found"))

    server.answer = answer
    md = apis.Metadata(quick(), environ={"GCE_METADATA_HOST": server.host}, clock=lambda: now[0])
    assert md.attribute("fleet-name") == "prod"
    assert md.attribute("fleet-roles") is None
    assert md.project_attribute("compose-fleet-lock") == "{}"
    assert md.zone() == "europe-west1-b" and md.instance_name() == "prod-1"
    assert md.token() == "tok1" and md.token() == "tok1"
    now[0] = 61.0  # within TOKEN_MARGIN of expiry: fetched anew
    assert md.token() == "tok2" and len(token_calls) == 2
    md.put_guest("release", "abc")
    method, path, _, body = server.seen[-1]
    assert (method, path, body) == (
        "PUT",
        "/computeMetadata/v1/instance/guest-attributes/fleet/release",
        b"abc",
    )


def test_storage_paths_bearer_and_create_precondition(server: Server) -> None:
    def answer(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        assert headers["authorization"] == "Bearer T"
        if path == "/download/storage/v1/b/bkt/o/fleets%2Fprod%2Fdesired.json?alt=media":
            return 200, b'{"format": 1}'
        if path == "/storage/v1/b/bkt/o/fleets%2Fprod%2Fdesired.json":
            return 200, b'{"generation": "7"}'
        if path.startswith("/upload/storage/v1/b/bkt/o?"):
            return (412, b"") if b"again" in body else (200, b"{}")
        return 404, b""

    server.answer = answer
    st = apis.Storage(quick(), lambda: "T", server.url)
    assert st.read("bkt", "fleets/prod/desired.json") == b'{"format": 1}'
    assert st.metadata("bkt", "fleets/prod/desired.json") == {"generation": "7"}
    with pytest.raises(apis.NotFound):
        st.read("bkt", "fleets/prod/nothing")
    st.create("bkt", "fleets/prod/history/1.json", b"{}")
    method, path, headers, _ = server.seen[-1]
    assert method == "POST" and headers["content-type"] == "application/json"
    query = "uploadType=media&name=fleets%2Fprod%2Fhistory%2F1.json&ifGenerationMatch=0"
    assert path == f"/upload/storage/v1/b/bkt/o?{query}"
    with pytest.raises(apis.AlreadyExists):
        st.create("bkt", "fleets/prod/history/1.json", b"again")


def test_retries_on_5xx_and_429_then_a_clear_error(server: Server) -> None:
    calls = []

    def answer(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        calls.append(path)
        if len(calls) == 1:
            return 429, b"slow down"
        return (503, b"unavailable") if len(calls) < 3 else (200, b"ok")

    server.answer = answer
    st = apis.Storage(quick(attempts=3), lambda: "T", server.url)
    assert st.read("bkt", "x") == b"ok" and len(calls) == 3
    server.seen.clear()
    server.answer = lambda m, p, h, b: (503, b"down")
    with pytest.raises(HttpError, match=r"HTTP 503.*gave up after 3 tries") as exc:
        st.read("bkt", "x")
    assert exc.value.status == 503 and len(server.seen) == 3 and "alt=media" not in exc.value.render()


def test_an_unreachable_endpoint_is_retried_within_the_budget() -> None:
    pauses: list[float] = []
    clock = [0.0]

    def sleep(s: float) -> None:
        pauses.append(s)
        clock[0] += s

    http = Http(Retry(attempts=10, budget=5.0, timeout=1, backoff=1.0), sleep=sleep, clock=lambda: clock[0])
    with pytest.raises(HttpError, match="no answer") as exc:
        http.request("GET", "http://127.0.0.1:9/nothing")  # discard port: connection refused
    assert pauses == [1.0, 2.0] and "gave up after 3 tries" in exc.value.what  # 1 + 2 + 4 > 5 s budget


def test_secret_manager_access_checks_the_crc(server: Server) -> None:
    value = "pä$$ 'word'"
    data = value.encode()

    def answer(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        crc = google_crc32c.value(data) + (1 if "versions/9" in path else 0)
        payload = {"data": base64.b64encode(data).decode(), "dataCrc32c": str(crc)}
        return 200, json.dumps({"name": path, "payload": payload}).encode()

    server.answer = answer
    sm = apis.SecretManager(quick(), lambda: "T", server.url)
    assert sm.access("projects/p/secrets/db/versions/4") == value
    assert server.seen[-1][1] == "/v1/projects/p/secrets/db/versions/4:access"
    with pytest.raises(Exception, match="CRC32C"):
        sm.access("projects/p/secrets/db/versions/9")
    server.answer = lambda m, p, h, b: (403, b"denied")
    with pytest.raises(Exception, match="HTTP 403") as exc:
        sm.access("projects/p/secrets/db/versions/4")
    assert "IAM" in (exc.value.hint or "")  # type: ignore[attr-defined]


def test_compute_members_pages_and_labels(server: Server) -> None:
    mig = "projects/p/zones/z-a/instanceGroupManagers/prod"

    def answer(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        if path == f"/compute/v1/{mig}/listManagedInstances" and method == "POST":
            items = [
                {"instance": f"https://x/compute/v1/projects/p/zones/z-a/instances/prod-{i}"} for i in (3, 1)
            ]
            return 200, json.dumps({"managedInstances": items, "nextPageToken": "n2"}).encode()
        if path == f"/compute/v1/{mig}/listManagedInstances?pageToken=n2":
            return 200, json.dumps({"managedInstances": [{"instance": ".../instances/prod-10"}]}).encode()
        if path == "/compute/v1/projects/p/zones/z-a/instances/prod-1":
            return 200, json.dumps({"labels": {"fleet-rollout": "ro-1"}}).encode()
        return 404, b""

    server.answer = answer
    c = apis.Compute(quick(), lambda: "T", server.url + "/compute/v1")
    assert c.members(mig) == ["prod-3", "prod-1", "prod-10"]
    assert c.labels("p", "z-a", "prod-1") == {"fleet-rollout": "ro-1"}


@pytest.mark.parametrize("data", [b"", b"a", b"123456789", bytes(range(256)) * 3])
def test_crc32c_matches_google_crc32c(data: bytes) -> None:
    assert apis.crc32c(data) == google_crc32c.value(data)
