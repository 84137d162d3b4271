"""The load generator counts every non-2xx and every connection error, and only talks to loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fleet.errors import FleetError
from fleet.scenarios.loadgen import LoadGen, check_url


class App:
    """Answers like the stack behind the LB: versions in a header; /bad is a 502; /close hangs up."""

    def __init__(self) -> None:
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer.requests += 1
                if self.path == "/close":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                code = 502 if self.path == "/bad" else 200
                body = b"{}"
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Standin-Version", "1.1.0")
                self.send_header("X-Fleet-Server", "app-1")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def app() -> Iterator[App]:
    a = App()
    yield a
    a.server.shutdown()
    a.server.server_close()


def test_all_good_answers_counted_by_version_and_server(app: App) -> None:
    report = LoadGen(app.url, threads=2, rate=200, paths=("/a", "/b"), max_requests=40).start().wait()
    assert report.requests == 40 and report.ok == 40 and report.failed == 0
    assert report.versions == {"1.1.0": 40} and report.servers == {"app-1": 40}
    assert report.stopped_by == "count" and app.requests == 40


def test_non_2xx_and_hang_ups_are_failures(app: App) -> None:
    report = LoadGen(app.url, threads=1, rate=200, paths=("/ok", "/bad", "/close"), max_requests=30).start()
    report = report.wait()
    assert report.requests == 30
    assert report.statuses == {"502": 10}
    # a hang-up is retried once on a fresh connection (the idle keep-alive race), then counted
    assert sum(report.errors.values()) == 10 and report.failed == 20
    assert report.first_failures and "502" in " ".join(report.first_failures)


def test_connection_refused_is_a_failure() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    report = LoadGen(f"http://127.0.0.1:{port}", threads=1, rate=100, max_requests=5).start().wait()
    assert report.failed == 5 and report.errors == {"ConnectionRefusedError": 5}


def test_bounded_in_time(app: App) -> None:
    gen = LoadGen(app.url, threads=1, rate=20, max_seconds=0.3).start()
    report = gen.wait()
    assert report.stopped_by == "time" and report.failed == 0 and report.requests >= 1


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1:80", "https://127.0.0.1:8080", "http://example.com", "ftp://127.0.0.1"]
)
def test_only_plain_http_to_loopback(url: str) -> None:
    with pytest.raises(FleetError, match="refusing to send load"):
        check_url(url)


def test_must_be_bounded() -> None:
    with pytest.raises(FleetError, match="bounded"):
        LoadGen("http://127.0.0.1:1", max_seconds=10_000)


def test_stop_ends_every_client(app: App) -> None:
    gen = LoadGen(app.url, threads=4, rate=50).start()
    time.sleep(0.3)
    report = gen.stop()
    assert report.stopped_by == "stop" and report.failed == 0 and report.requests > 0
    assert not any(t.is_alive() for t in gen._workers)
