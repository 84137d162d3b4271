"""The LB views: real haproxy (health checks, in-flight requests), a backend service's getHealth through
the real google-cloud-compute client, and the blind wait."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fleet.errors import FleetError
from fleet.gcp.compute import Compute
from fleet.inventory import FleetHost
from fleet.local.config import LocalConfig
from fleet.local.lb import LbServer, LoadBalancer
from fleet.rollout.lbview import (
    BlindView,
    GcpView,
    HaproxyView,
    LBTimeout,
    for_host,
    group_of,
    parse_backend_health,
    parse_haproxy_stat,
)

HEADER = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis"
STAT = (
    HEADER
    + """,status,weight
fleet_http,FRONTEND,,,3,9,4096,100,0,0,0,0,0,,,,,OPEN,
app,a,0,0,2,5,,50,0,0,,0,,0,0,0,0,UP,1
app,b,0,0,0,5,,50,0,0,,0,,0,0,0,0,UP 1/2,1
app,c,0,0,1,5,,50,0,0,,0,,0,0,0,0,DOWN,1
app,d,0,0,0,5,,50,0,0,,0,,0,0,0,0,DOWN 1/2,1
app,e,0,0,0,5,,50,0,0,,0,,0,0,0,0,MAINT,1
app,BACKEND,0,0,3,9,,100,0,0,0,0,,0,0,0,0,UP,4
other,a,0,0,0,5,,50,0,0,,0,,0,0,0,0,DOWN,1
"""
)


def test_parse_haproxy_stat() -> None:
    seen = parse_haproxy_stat(STAT, "app")
    assert sorted(seen) == ["a", "b", "c", "d", "e"]
    assert seen["a"].serving and seen["a"].steady and seen["a"].active == 2
    assert seen["b"].serving and not seen["b"].steady  # failing checks, still gets requests
    assert not seen["c"].serving and seen["c"].active == 1  # out, one request still in flight
    assert not seen["d"].serving and not seen["d"].steady  # recovering, no requests yet
    assert not seen["e"].serving
    with pytest.raises(FleetError, match="show stat"):
        parse_haproxy_stat("garbage", "app")


# --------------------------------------------------------------------------- real haproxy


class Backend:
    """An HTTP server standing in for a host's nginx: /health follows `healthy`, /slow takes a while."""

    def __init__(self) -> None:
        self.healthy = True
        self.slow_done = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path == "/health":
                    code = 200 if outer.healthy else 503
                elif self.path == "/slow":
                    time.sleep(3)
                    code = 200
                else:
                    code = 200
                body = b"ok\n"
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                if self.path == "/slow":
                    outer.slow_done.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def haproxy() -> Iterator[tuple[LoadBalancer, Backend]]:
    # a short root: pytest's tmp_path (deeper still under xdist) can exceed a Unix socket path's limit
    root = Path(tempfile.mkdtemp(prefix="lbv-", dir="/tmp"))
    config = LocalConfig(root=root, name="lbview", lb_port=free_port())
    lb = LoadBalancer(config)
    backend = Backend()
    lb.start()
    try:
        lb.sync([LbServer("web-1", backend.port)])
        yield lb, backend
    finally:
        lb.stop()
        backend.close()
        shutil.rmtree(root, ignore_errors=True)


def test_a_stats_socket_path_too_long_for_unix_is_a_clear_error(tmp_path: Path) -> None:
    config = LocalConfig(root=tmp_path / ("x" * 80), name="lbview")
    with pytest.raises(FleetError, match="over the 97 a Unix socket allows"):
        _ = config.stats_socket


def host(name: str, **data: Any) -> FleetHost:
    return FleetHost(name, "127.0.0.1", 22, "deploy", (), dict(data))


def test_haproxy_out_waits_for_the_request_in_flight_and_in_for_up(
    haproxy: tuple[LoadBalancer, Backend],
) -> None:
    lb, backend = haproxy
    view = HaproxyView(str(lb.socket_path), lb.config.backend, poll=0.05)
    h = host("app-1", lb={"server": "web-1"})
    view.wait_in(h, timeout=20)  # a new member starts DOWN and comes UP after `rise` checks
    result: dict[str, int] = {}

    def slow_request() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", lb.config.lb_port, timeout=10)
        conn.request("GET", "/slow")
        result["status"] = conn.getresponse().status

    client = threading.Thread(target=slow_request)
    client.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        seen = view.look(h)
        if seen is not None and seen.active == 1:
            break
        time.sleep(0.02)
    backend.healthy = False  # drained: /health answers 503
    view.wait_out(h, timeout=20)
    # the LB stopped sending it requests AND the one in flight had finished
    assert backend.slow_done.is_set()
    seen = view.look(h)
    assert seen is not None and not seen.serving and seen.active == 0
    client.join()
    assert result["status"] == 200
    backend.healthy = True
    view.wait_in(h, timeout=20)
    seen = view.look(h)
    assert seen is not None and seen.serving and seen.steady


def test_haproxy_timeout_names_the_state(haproxy: tuple[LoadBalancer, Backend]) -> None:
    lb, _backend = haproxy
    view = HaproxyView(str(lb.socket_path), lb.config.backend, poll=0.05)
    view.wait_in(host("web-1"), timeout=20)
    with pytest.raises(LBTimeout, match="still reports UP"):
        view.wait_out(host("web-1"), timeout=0.3)  # healthy: it never leaves


def test_unreachable_socket_is_a_clear_error(tmp_path: Path) -> None:
    view = HaproxyView(str(tmp_path / "nope.sock"), "app")
    with pytest.raises(FleetError, match="cannot read haproxy"):
        view.look(host("a"))


# --------------------------------------------------------------------------- GCP backend service


class GetHealth:
    """The REST wire format of backendServices.getHealth (what the real client sends and parses)."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                outer.bodies.append({"path": self.path, **body})
                if not self.path.startswith("/compute/v1/projects/p/global/backendServices/bs/getHealth"):
                    self._send(404, {"error": {"code": 404, "message": "not found", "errors": []}})
                    return
                statuses = [
                    {
                        "instance": f"https://www.googleapis.com/compute/v1/projects/p/zones/europe-west1-b/instances/{n}",
                        "healthState": s,
                        "ipAddress": "10.0.0.2",
                        "port": 80,
                    }
                    for n, s in outer.states.items()
                ]
                self._send(200, {"kind": "compute#backendServiceGroupHealth", "healthStatus": statuses})

            def _send(self, code: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def gethealth() -> Iterator[GetHealth]:
    g = GetHealth()
    yield g
    g.server.shutdown()
    g.server.server_close()


GCP_HOST = dict(
    gce={
        "project": "p",
        "zone": "europe-west1-b",
        "instance": "vm-1",
        "migs": [{"zone": "europe-west1-b", "name": "mig"}],
    },
    lb={"kind": "gcp", "backend": "bs", "check_interval": 1, "draining_timeout": 0},
)


def test_gcp_view_through_the_real_client(gethealth: GetHealth) -> None:
    h = host("vm-1", **GCP_HOST)
    sleeps: list[float] = []
    view = GcpView(Compute(gethealth.url), "p", "bs", draining=4.0, poll=0.01, sleep=sleeps.append)
    gethealth.states = {"vm-0": "HEALTHY", "vm-1": "UNHEALTHY"}
    seen = view.look(h)
    assert seen is not None and not seen.serving and seen.raw == "UNHEALTHY"
    body = gethealth.bodies[-1]
    assert (
        body["group"]
        == "https://www.googleapis.com/compute/v1/projects/p/zones/europe-west1-b/instanceGroups/mig"
    )
    assert view.wait_out(h, timeout=5) == pytest.approx(4.0, abs=1)
    assert sleeps[-1] == 4.0  # the draining time for requests still in flight
    gethealth.states["vm-1"] = "HEALTHY"
    view.wait_in(h, timeout=5)
    gethealth.states = {}
    assert view.look(h) is None


def test_gcp_view_errors(gethealth: GetHealth) -> None:
    view = GcpView(Compute(gethealth.url), "p", "missing", draining=0)
    with pytest.raises(FleetError, match="getHealth failed: 404"):
        view.look(host("vm-1", **GCP_HOST))
    with pytest.raises(FleetError, match="instance group"):
        group_of(host("vm-1", gce={"project": "p"}))


def test_parse_backend_health_matches_the_instance_name() -> None:
    from google.cloud import compute_v1

    resp = compute_v1.BackendServiceGroupHealth(
        health_status=[
            compute_v1.HealthStatus(instance=".../instances/vm-10", health_state="HEALTHY"),
            compute_v1.HealthStatus(instance=".../instances/vm-1", health_state="UNHEALTHY"),
        ]
    )
    seen = parse_backend_health(resp, "vm-1")
    assert seen is not None and not seen.serving
    assert parse_backend_health(resp, "vm-2") is None


# --------------------------------------------------------------------------- blind, and the factory


def test_blind_view_waits_the_derived_time() -> None:
    sleeps: list[float] = []
    view = BlindView(12.0, 4.0, sleep=sleeps.append)
    assert view.wait_out(host("a"), 99) == 12.0 and view.wait_in(host("a"), 99) == 4.0
    assert sleeps == [12.0, 4.0] and view.look(host("a")) is None


def test_for_host_picks_the_kind() -> None:
    def no_compute() -> Compute:
        raise AssertionError("not needed")

    assert isinstance(
        for_host(host("a", lb={"kind": "haproxy", "stats_socket": "/x"}), no_compute, 3), HaproxyView
    )
    blind = for_host(
        host("a", lb={"kind": "none", "check_interval": 2, "healthy_threshold": 3}), no_compute, 7
    )
    assert isinstance(blind, BlindView) and (blind.out_seconds, blind.in_seconds) == (7, 6.0)
    assert isinstance(for_host(host("a", **GCP_HOST), lambda: Compute("http://127.0.0.1:1"), 3), GcpView)
    with pytest.raises(FleetError, match="stats_socket"):
        for_host(host("a", lb={"kind": "haproxy"}), no_compute, 3)
    with pytest.raises(FleetError, match=r"lb\.backend"):
        for_host(host("a", lb={"kind": "gcp"}), no_compute, 3)
