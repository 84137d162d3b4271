"""The local LB's session affinity with a real haproxy (no fleet: four small HTTP servers stand in for
the instances' nginx). CLIENT_IP keeps one client on one instance and spreads many clients; NONE spreads
one client's requests; GENERATED_COOKIE keeps a client that returns the cookie. And what this means
for the load generator: it is one client (127.0.0.1), so under CLIENT_IP all of its requests reach one
instance, which is why the local fleet's default affinity is NONE (docs/local-fleet.md)."""

from __future__ import annotations

import http.client
import http.server
import shutil
import socket
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.local.config import LocalConfig
from fleet.local.lb import AFFINITY_COOKIE, LbServer, LoadBalancer
from fleet.scenarios.loadgen import LoadGen

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy")
SERVERS = 4


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args: object) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def backends() -> Iterator[list[LbServer]]:
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler) for _ in range(SERVERS)]
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield [LbServer(f"lbt-{i + 1}", s.server_address[1]) for i, s in enumerate(servers)]
    for server in servers:
        server.shutdown()
        server.server_close()


def lb_for(tmp_path: Path, affinity: str, backends: list[LbServer]) -> LoadBalancer:
    config = LocalConfig(
        root=tmp_path,
        name="lbt",
        lb_port=free_port(),
        lb={"session_affinity": affinity, "healthy_threshold": 1},
        backend="app",
    )
    lb = LoadBalancer(config)
    lb.sync(backends)
    for member in backends:
        lb.wait_for(member.name, ("UP",), timeout=30)
    return lb


@pytest.fixture
def lb_factory(backends: list[LbServer]) -> Iterator[object]:
    started: list[LoadBalancer] = []
    root = Path(tempfile.mkdtemp(prefix="lbt-", dir="/tmp"))  # haproxy's socket path: <= 97 characters

    def make(affinity: str) -> LoadBalancer:
        lb = lb_for(root / affinity.lower(), affinity, backends)
        started.append(lb)
        return lb

    yield make
    for lb in started:
        lb.stop()
    shutil.rmtree(root, ignore_errors=True)


def get(lb: LoadBalancer, source: str = "127.0.0.1", cookie: str = "") -> tuple[str, str]:
    """One request on a fresh connection from `source`: (the server that answered, Set-Cookie)."""
    conn = http.client.HTTPConnection("127.0.0.1", lb.config.lb_port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", "/", headers={"Cookie": cookie} if cookie else {})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        return resp.getheader("X-Fleet-Server") or "", resp.getheader("Set-Cookie") or ""
    finally:
        conn.close()


def test_client_ip_keeps_a_client_on_one_instance_and_spreads_clients(lb_factory: object) -> None:
    lb = lb_factory("CLIENT_IP")  # type: ignore[operator]
    for source in ("127.0.0.1", "127.0.0.7", "127.0.3.9"):
        assert len({get(lb, source)[0] for _ in range(8)}) == 1, source
    clients = Counter(get(lb, f"127.0.{i}.{i * 7 % 250 + 2}")[0] for i in range(64))
    assert set(clients) == {f"lbt-{i}" for i in range(1, SERVERS + 1)}, clients
    # a member drained out of the backend gives its clients to the others; the rest keep theirs
    before = {f"127.0.{i}.{i * 7 % 250 + 2}": get(lb, f"127.0.{i}.{i * 7 % 250 + 2}")[0] for i in range(64)}
    lb.set_state("lbt-2", "drain")
    after = {source: get(lb, source)[0] for source in before}
    assert "lbt-2" not in after.values()
    assert all(after[s] == server for s, server in before.items() if server != "lbt-2")
    lb.set_state("lbt-2", "ready")
    # the load generator is one client: every one of its requests reaches the same instance
    report = LoadGen(lb.frontend, threads=2, rate=50, max_requests=60).start().wait(timeout=60)
    assert report.failed == 0 and report.requests == 60, report.summary()
    assert len(report.servers) == 1, report.servers


def test_generated_cookie_keeps_a_client_that_returns_it(lb_factory: object) -> None:
    lb = lb_factory("GENERATED_COOKIE")  # type: ignore[operator]
    first, set_cookie = get(lb)
    assert set_cookie.startswith(f"{AFFINITY_COOKIE}=")
    cookie = set_cookie.split(";")[0]
    assert {get(lb, cookie=cookie)[0] for _ in range(8)} == {first}
    assert len({get(lb)[0] for _ in range(8)}) > 1  # without the cookie: round robin


def test_a_changed_backend_service_reloads_haproxy_and_members_keep_their_state(
    lb_factory: object, backends: list[LbServer]
) -> None:
    """What the local fleet does when its backend service changes (fleet/local/fromapi.py): the new
    affinity and checks take effect at once (a reload), every member keeps its state and health (none
    restarts from DOWN), and the settings are kept for every process that drives this LB."""
    from dataclasses import replace

    from fleet.local.lb import BackendConfig

    lb = lb_factory("NONE")  # type: ignore[operator]
    assert len({get(lb)[0] for _ in range(8)}) > 1  # round robin spreads one client
    lb.set_state("lbt-2", "drain")
    old_pid = lb.pid()
    same = lb.settings
    assert not lb.configure(same) and lb.pid() == old_pid  # nothing changed: no reload
    changed = replace(same, session_affinity="CLIENT_IP", check_interval=0.5, draining_timeout=33.0)
    assert lb.configure(changed)
    assert lb.pid() not in (None, old_pid)
    text = lb.cfg_path.read_text()
    assert "balance source" in text and "connection draining 33 s" in text
    states = {name: s.status for name, s in lb.servers().items()}
    assert states == {"lbt-1": "UP", "lbt-2": "DRAIN", "lbt-3": "UP", "lbt-4": "UP"}
    assert len({get(lb)[0] for _ in range(8)}) == 1  # CLIENT_IP now: one client, one instance
    assert LoadBalancer(lb.config).settings == changed  # another process reads the same
    assert BackendConfig.from_settings(lb.config.lb_settings) != changed
